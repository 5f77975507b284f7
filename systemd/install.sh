#!/bin/sh
# Install fanoutd as a systemd service, in a virtualenv of its own; the
# system Python is used only to create that virtualenv, nothing is installed
# into it.  `make install-service` runs this; see docs/operations.md, "Running as
# a systemd service".
#
#   systemd/install.sh [--wheels DIR] [--curve] [--root DIR]
#   systemd/install.sh --uninstall [--root DIR]
#   systemd/install.sh --print-unit
#
# Install:
#   1. apt-get installs what a stock Debian lacks, and only if it is missing:
#      python3-venv, plus gcc and python3-dev when building from the
#      repository (a wheel needs no compiler).  FANOUTD_NO_APT=1 skips this.
#   2. a virtualenv at $PREFIX (default /opt/fanoutd; reused if present), and
#      fanoutd in it: built from this repository (`pip install REPO`, which
#      fetches the dependencies and the build tools from the package index),
#      or with --wheels DIR offline from a directory of wheels
#      (`pip install --no-index --find-links DIR fanoutd`: DIR must hold
#      fanoutd's wheel and its dependencies', see docs/operations.md).
#   3. /etc/systemd/system/fanoutd.service: systemd/fanoutd.service with
#      ExecStart pointing at $PREFIX/bin/fanoutd, nothing else changed.
#   4. /etc/fanoutd/fanoutd.toml from systemd/fanoutd.toml, only if there is
#      none: an operator's configuration is never overwritten.
#   5. with --curve, the drop-in /etc/systemd/system/fanoutd.service.d/curve.conf
#      (LoadCredential= of /etc/fanoutd/server.key_secret), if there is none.
#   6. `systemctl daemon-reload` when systemd is running; then it says what next.
# Uninstall: stops and disables the service (when systemd runs), removes the
# virtualenv, the unit and the curve.conf drop-in; /etc/fanoutd (config,
# keys) is kept.
#
# --print-unit prints the unit of step 3 for $PREFIX and does nothing else:
# the Debian package (debian/rules) builds its unit with it, so both ways of
# installing run the same unit, from the one source systemd/fanoutd.service.
#
# Environment: PREFIX (virtualenv, absolute path), PYTHON (the interpreter
# that creates it, default python3), FANOUTD_NO_APT=1 (never run apt-get),
# DESTDIR (same as --root).  --root DIR installs below DIR instead of / (for
# staging and tests): no apt-get, no systemctl, and the unit still names
# $PREFIX, where the files are meant to end up.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
PREFIX=${PREFIX:-/opt/fanoutd}
PYTHON=${PYTHON:-python3}
ROOT=${DESTDIR:-}
WHEELS=""
CURVE=0
ACTION=install
UNIT_NAME=fanoutd.service

say() { echo "install-service: $*"; }
die() { echo "install-service: error: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -eu$/p' "$0" | sed -e '/^set -eu$/d' -e 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case $1 in
        --wheels) [ $# -ge 2 ] || die "--wheels needs a directory"; WHEELS=$2; shift 2 ;;
        --wheels=*) WHEELS=${1#*=}; shift ;;
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#*=}; shift ;;
        --curve) CURVE=1; shift ;;
        --uninstall) ACTION=uninstall; shift ;;
        --print-unit) ACTION=print-unit; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

# PREFIX goes into the unit and through sed: an absolute path of plain characters.
case $PREFIX in
    /*) ;;
    *) die "PREFIX must be an absolute path, not '$PREFIX'" ;;
esac
case $PREFIX in
    *[!A-Za-z0-9._/-]*) die "PREFIX may hold only letters, digits and . _ - / (got '$PREFIX')" ;;
esac
PREFIX=${PREFIX%/}
[ -n "$PREFIX" ] || die "PREFIX cannot be /"
ROOT=${ROOT%/}
if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
    [ "$ROOT" != / ] || ROOT=""
fi
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ] && [ "$ACTION" != print-unit ]; then
    die "run as root (it writes $PREFIX, /etc/systemd/system and /etc/fanoutd), or stage with --root DIR"
fi

VENV=$ROOT$PREFIX
UNIT_DIR=$ROOT/etc/systemd/system
UNIT=$UNIT_DIR/$UNIT_NAME
DROPIN_DIR=$UNIT_DIR/$UNIT_NAME.d
DROPIN=$DROPIN_DIR/curve.conf
CONF_DIR=$ROOT/etc/fanoutd
CONF=$CONF_DIR/fanoutd.toml

# systemctl only for the running system, never for a staging root.
systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

is_venv() { [ -f "$1/pyvenv.cfg" ] && [ -x "$1/bin/python" ]; }

apt_install() {
    if [ "${FANOUTD_NO_APT:-0}" = 1 ] || [ -n "$ROOT" ]; then
        return 0
    fi
    if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
        say "not a Debian-like system (no dpkg/apt-get): install python3-venv, gcc and the Python headers yourself"
        return 0
    fi
    wanted="python3-venv"
    [ -n "$WHEELS" ] || wanted="$wanted gcc python3-dev"
    missing=""
    for p in $wanted; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    [ -n "$missing" ] || return 0
    say "installing the system packages fanoutd needs:$missing"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
}

install_venv() {
    if [ -e "$VENV" ] && ! is_venv "$VENV"; then
        die "$VENV exists and is not a virtualenv: not touching it (set PREFIX to another directory)"
    fi
    if is_venv "$VENV"; then
        say "reusing the virtualenv $VENV"
    else
        command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON on PATH (apt-get install python3, or set PYTHON)"
        "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
            || die "$PYTHON cannot create virtualenvs: apt-get install python3-venv (or drop FANOUTD_NO_APT=1)"
        say "creating the virtualenv $VENV with $("$PYTHON" -c 'import sys; print(sys.executable)')"
        mkdir -p "$(dirname "$VENV")"
        "$PYTHON" -m venv "$VENV"
    fi
    if [ -n "$WHEELS" ]; then
        [ -d "$WHEELS" ] || die "--wheels $WHEELS: not a directory"
        say "installing fanoutd offline from the wheels in $WHEELS"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-index \
            --find-links "$WHEELS" --upgrade fanoutd
    else
        [ -f "$REPO/pyproject.toml" ] || die "$REPO is not fanoutd's repository: use --wheels DIR"
        say "building and installing fanoutd from $REPO"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$REPO"
    fi
    [ -x "$VENV/bin/fanoutd" ] || die "$VENV/bin/fanoutd is missing after the install"
    say "installed $("$VENV/bin/fanoutd" --version) in $VENV"
}

# systemd/fanoutd.service with ExecStart pointing at $PREFIX/bin/fanoutd, nothing else changed, into file $1.
render_unit() {
    {
        echo "# Made by fanoutd's systemd/install.sh from systemd/fanoutd.service, with ExecStart"
        echo "# pointing at the virtualenv $PREFIX. Change settings in a drop-in."
        sed -e "s|^ExecStart=[^ ]*/fanoutd |ExecStart=$PREFIX/bin/fanoutd |" "$HERE/$UNIT_NAME"
    } > "$1"
    grep -q "^ExecStart=$PREFIX/bin/fanoutd " "$1" || die "could not point ExecStart of $HERE/$UNIT_NAME at $PREFIX"
}

install_unit() {
    tmp=$(mktemp)
    trap 'rm -f "$tmp"' EXIT
    render_unit "$tmp"
    mkdir -p "$UNIT_DIR"
    install -m 644 "$tmp" "$UNIT"
    rm -f "$tmp"
    trap - EXIT
    say "installed $UNIT (ExecStart=$PREFIX/bin/fanoutd)"

    install -d -m 755 "$CONF_DIR"
    if [ -e "$CONF" ]; then
        say "kept the existing $CONF"
    else
        install -m 644 "$HERE/fanoutd.toml" "$CONF"
        say "installed the default configuration $CONF"
    fi

    if [ "$CURVE" = 1 ]; then
        if [ -e "$DROPIN" ]; then
            say "kept the existing $DROPIN"
        else
            install -d -m 755 "$DROPIN_DIR"
            install -m 644 "$HERE/$UNIT_NAME.d/curve.conf" "$DROPIN"
            say "installed $DROPIN (LoadCredential=server.key_secret)"
        fi
    fi
}

do_install() {
    apt_install
    install_venv
    install_unit
    if systemd_running; then
        systemctl daemon-reload
    elif [ -z "$ROOT" ]; then
        say "systemd is not running here: run 'systemctl daemon-reload' once it is"
    fi
    echo
    echo "Next:"
    if [ "$CURVE" = 1 ]; then
        echo "  $PREFIX/bin/fanoutd keygen /etc/fanoutd server     # if /etc/fanoutd/server.key_secret does not exist yet"
        echo "  # in /etc/fanoutd/fanoutd.toml (the name is looked up in \$CREDENTIALS_DIRECTORY):"
        echo "  #   curve_secret_key = \"server.key_secret\""
        echo "  #   collector_curve = true                        # and/or publish_curve, push_curve"
    fi
    echo "  \$EDITOR /etc/fanoutd/fanoutd.toml                     # endpoints, limits, CURVE"
    check="$PREFIX/bin/fanoutd --config /etc/fanoutd/fanoutd.toml --check-config"
    [ "$CURVE" = 0 ] || check="CREDENTIALS_DIRECTORY=/etc/fanoutd $check"
    echo "  $check"
    echo "  systemctl enable --now fanoutd"
    echo "  systemctl status fanoutd; journalctl -u fanoutd"
}

do_uninstall() {
    if systemd_running && systemctl cat "$UNIT_NAME" >/dev/null 2>&1; then
        say "stopping and disabling $UNIT_NAME"
        systemctl disable --now "$UNIT_NAME" || say "could not stop or disable $UNIT_NAME; going on"
    fi
    if [ -e "$UNIT" ]; then
        rm -f "$UNIT"
        say "removed $UNIT"
    fi
    if [ -e "$DROPIN" ]; then
        if cmp -s "$DROPIN" "$HERE/$UNIT_NAME.d/curve.conf"; then
            rm -f "$DROPIN"
            say "removed $DROPIN"
        else
            say "kept $DROPIN: it differs from the one shipped"
        fi
    fi
    if [ -d "$DROPIN_DIR" ]; then
        rmdir "$DROPIN_DIR" 2>/dev/null || say "kept $DROPIN_DIR: it holds other drop-ins"
    fi
    if is_venv "$VENV"; then
        rm -rf "$VENV"
        say "removed the virtualenv $VENV"
    elif [ -e "$VENV" ]; then
        say "kept $VENV: it is not a virtualenv"
    fi
    if systemd_running; then
        systemctl daemon-reload
        systemctl reset-failed "$UNIT_NAME" 2>/dev/null || true
    fi
    if [ -d "$CONF_DIR" ]; then
        say "kept $CONF_DIR (configuration and keys); remove it yourself if you no longer want it"
    fi
}

do_print_unit() {
    tmp=$(mktemp)
    trap 'rm -f "$tmp"' EXIT
    render_unit "$tmp"
    cat "$tmp"
}

case $ACTION in
    install) do_install ;;
    print-unit) do_print_unit ;;
    uninstall) do_uninstall ;;
esac
