#!/bin/sh
# `make deb` and `make deb-wheels` (see the Makefile); run from the top of the tree.
#
#   debian/build.sh wheels DIR PYTHON     the wheels fanoutd's package is built from, for PYTHON,
#                                         downloaded from the package index into DIR
#   debian/build.sh deb OUT WHEELS [VERSION]
#                                         the .deb, built offline from WHEELS, in a copy of the
#                                         tree (OUT/src), into OUT; VERSION: that Debian version
set -eu
say() { echo "deb: $*"; }
die() { echo "deb: error: $*" >&2; exit 1; }
[ -f debian/rules ] || die "run from the top of fanoutd's tree"

wheels() {
    dir=$1 python=$2
    command -v "$python" >/dev/null 2>&1 || die "no $python (apt-get install python3 python3-venv)"
    mkdir -p "$dir"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # A throw-away venv of the interpreter the package is built with, so that pip picks
    # the wheels for its version; the requirements are pyproject.toml's, read by it.
    "$python" -m venv "$tmp/venv"
    "$tmp/venv/bin/python" - > "$tmp/requirements.txt" <<'PY'
import tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)
print("\n".join(project["build-system"]["requires"] + project["project"]["dependencies"]))
PY
    say "downloading into $dir the wheels of: $(tr '\n' ' ' < "$tmp/requirements.txt")"
    PIP_CONFIG_FILE=${PIP_CONFIG_FILE:-/dev/null} "$tmp/venv/bin/python" -m pip download \
        --disable-pip-version-check --quiet --only-binary=:all: -d "$dir" -r "$tmp/requirements.txt"
}

deb() {
    out=$1 wheels=$2 version=${3:-}
    [ -d "$wheels" ] || die "$wheels: not a directory of wheels (make deb WHEELS=DIR, or make deb-wheels)"
    wheels=$(cd "$wheels" && pwd)
    mkdir -p "$out"
    out=$(cd "$out" && pwd)
    src=$out/src
    rm -rf "$src"
    mkdir -p "$src"
    # Everything but what git ignores and the build's own output.
    tar -c --exclude-vcs --exclude=./.venv --exclude=./build --exclude='*.so' --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis --exclude=./bench . | tar -x -C "$src"
    if [ -n "$version" ]; then
        { printf 'fanoutd (%s) bookworm; urgency=medium\n\n  * Built as version %s by make deb DEB_VERSION=%s.\n\n -- %s  %s\n\n' \
              "$version" "$version" "$version" "$(sed -n 's/^ -- \(.*>\)  .*/\1/p' debian/changelog | head -1)" \
              "$(date -R)"
          cat debian/changelog; } > "$src/debian/changelog"
    fi
    say "building in $src from the wheels in $wheels"
    (cd "$src" && FANOUTD_WHEELS=$wheels dpkg-buildpackage -b -us -uc)
    rm -rf "$src"
    ls "$out"/fanoutd_*.deb
}

case ${1:-} in
    wheels) shift; wheels "$@" ;;
    deb) shift; deb "$@" ;;
    *) die "usage: debian/build.sh wheels DIR PYTHON | deb OUT WHEELS [VERSION]" ;;
esac
