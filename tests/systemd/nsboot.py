"""Boot a real systemd, as PID 1, in a throw-away box: stdlib only, root only.

``SystemdBox`` starts ``/lib/systemd/systemd --system`` as PID 1 of new PID,
mount, network, UTS, IPC and cgroup namespaces, on a root file system of its
own, so that tests can drive real units with a real service manager
(``Type=notify``, ``WatchdogSec=``, ``DynamicUser=``, the sandboxing options)
without touching the machine they run on::

    with SystemdBox(units={"toy.service": TEXT}, enable=["toy.service"]) as box:
        box.systemctl("start", "toy.service")
        print(box.journal("toy.service"))

What the box is made of (all of it lives only inside the box's mount
namespace, so it disappears with the box's last process, even if the test
process is killed):

* root: an overlayfs whose lower layer is the host's ``/`` (its root file
  system only, not the mounts below it) and whose upper layer is a tmpfs.
  The host's files are seen read-only; every write, delete or chmod made in
  the box lands in the tmpfs.  ``/tmp``, ``/run`` and ``/dev`` are fresh
  tmpfs; ``/proc`` is the box's own, with ``/proc/sys`` read-only (systemd
  would otherwise raise host-global sysctls such as ``fs.nr_open``) except
  the per-namespace ``/proc/sys/net``; ``/sys`` is read-only with a cgroup2
  file system of the box's own cgroup below it.
* cgroups: the box lives in ``/sys/fs/cgroup/unified/<name>`` (or
  ``/sys/fs/cgroup/<name>`` on a pure cgroup2 host) and a cgroup namespace
  rooted there, so its systemd builds its tree below that and nowhere else.
* network: a new network namespace with only ``lo`` (brought up).
* units: the host's ``/etc/systemd/system`` (what the host enabled) and every
  generator are removed in the box; the default target is ``nsboot.target``,
  which wants only the units named in ``enable`` besides journald; the units
  the vendor wants at boot (tmpfiles, udev, getty, logind, dbus, ...) are
  masked.
* console: ``/dev/console`` in the box is the staging directory's
  ``console.log``, which also gets PID 1's stdout and stderr: the setup
  script's errors and whatever systemd prints before its journal runs
  (systemd itself finds no terminal there and logs to the journal).
* paths: ``binds`` (default: what ``sys.executable`` needs to run, see
  :func:`python_paths`) are bind-mounted read-only at the same place in the
  box, so that a venv under ``/tmp`` or on another file system is there too.

Teardown (``close``, also run by ``__exit__`` and when boot fails): ask
systemd to power off (SIGRTMIN+4), then SIGKILL the box's PID 1 (the kernel
kills every process of the PID namespace with it), remove the box's cgroups
and the staging directory.  The ``unshare`` process is tied to the test
process with PR_SET_PDEATHSIG and to the box's PID 1 with ``--kill-child``,
so a test process killed outright takes the box with it.

Anything the box cannot do on this machine (not root, no overlayfs, no
namespaces, no systemd) raises :class:`BoxError` with the reason: the tests
built on it fail, they never skip.
"""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

SYSTEMD_CANDIDATES = ("/lib/systemd/systemd", "/usr/lib/systemd/systemd")
BOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TARGET = "nsboot.target"

# Units a booting system pulls in that a box must not run: they would set up
# devices, consoles, logins, the network or the clock, or clean /tmp.  Every
# unit the vendor's *.target.wants/ directories name is masked too (see
# _mask_list); these are the ones pulled in by other routes or worth naming.
ALWAYS_MASK = (
    "systemd-tmpfiles-setup.service", "systemd-tmpfiles-setup-dev.service",
    "systemd-tmpfiles-clean.service", "systemd-tmpfiles-clean.timer",
    "getty.target", "getty@.service", "serial-getty@.service", "console-getty.service",
    "container-getty@.service", "getty-static.service",
    "systemd-networkd.service", "systemd-networkd.socket", "systemd-networkd-wait-online.service",
    "systemd-resolved.service", "systemd-timesyncd.service", "systemd-logind.service",
    "dbus.service", "dbus.socket", "systemd-udevd.service", "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket", "systemd-udev-trigger.service", "systemd-udev-settle.service",
    "systemd-journald-audit.socket", "systemd-journal-flush.service", "systemd-journal-catalog-update.service",
    "systemd-remount-fs.service", "systemd-update-utmp.service", "systemd-update-done.service",
    "systemd-hwdb-update.service", "systemd-firstboot.service", "systemd-sysusers.service",
    "systemd-random-seed.service", "systemd-sysctl.service", "systemd-modules-load.service",
    "systemd-binfmt.service", "systemd-pstore.service", "systemd-machine-id-commit.service",
    "systemd-boot-system-token.service", "systemd-boot-update.service",
    "systemd-pcrphase.service", "systemd-pcrphase-sysinit.service", "systemd-repart.service",
    "tmp.mount", "remote-fs.target", "swap.target", "cryptsetup.target", "veritysetup.target",
    "integritysetup.target", "emergency.service", "rescue.service",
)
# What a box keeps of the vendor's boot-time units: the journal.
KEEP = ("systemd-journald.service", "systemd-journald.socket", "systemd-journald-dev-log.socket")
WANTS_OF = ("sysinit", "basic", "sockets", "timers", "paths", "local-fs", "local-fs-pre",
            "slices", "multi-user", "default", "getty")

_PR_SET_PDEATHSIG = 1


class BoxError(RuntimeError):
    """The box could not be built, booted or reached; the message says why."""


def python_paths() -> list[str]:
    """The directories the box must show for this Python (``sys.executable``) to run.

    The venv (``sys.prefix``), the interpreter it points to (``sys.base_prefix``,
    the resolved executable) and every existing ``sys.path`` directory; nested
    paths are collapsed.  An editable install maps the project's packages
    to its source tree without a ``sys.path`` entry: add that tree yourself.
    """
    exe = sys.executable
    found = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.abspath(exe)), os.path.dirname(os.path.realpath(exe))}
    found.update(p for p in sys.path if p and os.path.isdir(p))
    return _outermost([os.path.realpath(p) for p in found] + [os.path.abspath(p) for p in found])


def _outermost(paths: Iterable[str]) -> list[str]:
    """Drop paths inside another one of the set, and '/', keep order stable."""
    out: list[str] = []
    for p in sorted(set(paths), key=lambda p: (p.count("/"), p)):
        if p == "/" or any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
            continue
        out.append(p)
    return out


def service_paths_dropin(paths: Sequence[str]) -> str:
    """A ``[Service]`` drop-in that lets a sandboxed unit see ``paths`` read-only.

    For a unit with ``ProtectHome=yes``, ``PrivateTmp=yes`` or ``DynamicUser=yes``
    (which implies a private ``/tmp``): the paths are bound back read-only, and
    if one of them lies under ``/home``, ``/root`` or ``/run/user``,
    ``ProtectHome=tmpfs`` replaces ``ProtectHome=yes`` (an inaccessible,
    mode 000 ``/root`` could not be walked through to reach the bind).  Test
    use only: it relaxes the sandbox the unit file asks for.
    """
    paths = _outermost(paths)
    lines = ["[Service]"]
    if any(re.match(r"^/(home|root|run/user)(/|$)", p) for p in paths):
        lines.append("ProtectHome=tmpfs")
    lines += [f"BindReadOnlyPaths={p}" for p in paths]
    return "\n".join(lines) + "\n"


def _cgroup_parent() -> Path:
    for base in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if (base / "cgroup.procs").exists() and (base / "cgroup.subtree_control").exists():
            return base
    raise BoxError("no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified: "
                   "systemd in the box needs one")


def _remove_cgroup_tree(root: Path) -> None:
    """rmdir a cgroup and everything below it, deepest first (cgroups are removed with rmdir)."""
    if not root.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda t: -t[0].count("/")):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


def _host_mounts_under(path: str) -> list[str]:
    prefix = path.rstrip("/") + "/"
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt == path or mnt.startswith(prefix):
                out.append(mnt)
    return out


def _remove_staging_dir(d: Path) -> None:
    """Remove a staging directory: the files nsboot wrote, and its mount points only if empty."""
    leaked = _host_mounts_under(str(d))
    if leaked:
        raise BoxError(f"mounts of the box are visible on the host, not removing {d}: {leaked}")
    for sub in ("etc-systemd-system", "files"):
        shutil.rmtree(d / sub, ignore_errors=True)
    for f in ("setup.sh", "binds", "masks", "console.log"):
        (d / f).unlink(missing_ok=True)
    for sub in ("root", "layers"):
        if (d / sub).exists():
            (d / sub).rmdir()  # mount points: rmdir only ever removes an empty directory
    d.rmdir()


def _preexec(cgroup_procs: str) -> Callable[[], None]:
    def run() -> None:
        # Die with the test process; join the box's cgroup before the cgroup
        # namespace is made, so that cgroup becomes the namespace's root.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        with open(cgroup_procs, "w") as f:
            f.write(str(os.getpid()))
    return run


# PID 1 of the new namespaces runs this, then execs systemd.  $1 = staging dir.
SETUP_SCRIPT = r"""
set -eu
W="$1"; R="$W/root"; L="$W/layers"; SYSTEMD="$2"
say() { echo "nsboot: $*" >&2; }

mount --make-rprivate /
mount -t tmpfs -o mode=0755,size=2g nsboot-layers "$L"
mkdir "$L/upper" "$L/work"
mount -t overlay -o "lowerdir=/,upperdir=$L/upper,workdir=$L/work" nsboot-root "$R" \
  || { say "cannot mount an overlayfs of / (is the overlay module available?)"; exit 90; }

# /proc: the box's own; /proc/sys read-only but for the per-netns /proc/sys/net.
mountpoint -q "$R" || { say "$R is not a mount point after mounting the overlay"; exit 91; }

mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
mount --bind "$R/proc/sys" "$R/proc/sys"
mount --bind "$R/proc/sys/net" "$R/proc/sys/net"
mount -o remount,bind,ro,nosuid,nodev,noexec "$R/proc/sys"
if [ -e "$R/proc/sysrq-trigger" ]; then
  mount --bind "$R/proc/sysrq-trigger" "$R/proc/sysrq-trigger"
  mount -o remount,bind,ro "$R/proc/sysrq-trigger"
fi

# /sys read-only, with the box's cgroup (the namespace root) writable below it.
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"

# /dev: a minimal one, as a container manager makes it.
mount -t tmpfs -o mode=0755,nosuid,size=4m nsboot-dev "$R/dev"
mknod -m 666 "$R/dev/null" c 1 3;    mknod -m 666 "$R/dev/zero" c 1 5
mknod -m 666 "$R/dev/full" c 1 7;    mknod -m 666 "$R/dev/random" c 1 8
mknod -m 666 "$R/dev/urandom" c 1 9; mknod -m 666 "$R/dev/tty" c 5 0
mkdir -m 755 "$R/dev/pts"; mkdir -m 1777 "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
ln -s /proc/self/fd "$R/dev/fd"; ln -s /proc/self/fd/0 "$R/dev/stdin"
ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
touch "$R/dev/console"; mount --bind "$W/console.log" "$R/dev/console"

# Fresh /run and /tmp: the host's are never seen, let alone cleaned.
mount -t tmpfs -o mode=0755,nosuid,nodev,size=256m nsboot-run "$R/run"
mount -t tmpfs -o mode=1777,nosuid,nodev,size=1g nsboot-tmp "$R/tmp"

# Host paths the tests need, read-only, at the same place.
while IFS= read -r p; do
  [ -n "$p" ] || continue
  if [ -d "$p" ]; then mkdir -p "$R$p"; else mkdir -p "$R$(dirname "$p")"; touch "$R$p"; fi
  mount --bind "$p" "$R$p"
  mount -o remount,bind,ro "$R$p"
done < "$W/binds"

# Units: none of the host's; only what the test gives, the masks and the target.
find "$R/etc/systemd/system" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
for d in /etc/systemd/system-generators /usr/local/lib/systemd/system-generators \
         /lib/systemd/system-generators /usr/lib/systemd/system-generators; do
  [ -d "$R$d" ] && find "$R$d" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
done
cp -a "$W/etc-systemd-system/." "$R/etc/systemd/system/"
cp -a "$W/files/." "$R/"
while IFS= read -r u; do [ -n "$u" ] && ln -sf /dev/null "$R/etc/systemd/system/$u"; done < "$W/masks"

hostname nsboot
ip link set lo up 2>/dev/null || say "could not bring lo up here; systemd will"

cd "$R"
mkdir -p .nsboot-oldroot
pivot_root . .nsboot-oldroot
umount -l /.nsboot-oldroot
rmdir /.nsboot-oldroot
# Shared propagation inside the box, as systemd sets it up on a real machine
# (it skips that in a container): LoadCredential= mounts each unit's ramfs in
# a namespace of its own and moves it to /run/credentials/UNIT, which only
# reaches PID 1's namespace, and so the service, through a shared /run. The
# box's mounts were made private above, so nothing propagates to the host.
mount --make-rshared /
exec env -i container=nsboot PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  "$SYSTEMD" --system --show-status=false --unit=nsboot.target
"""

TARGET_UNIT = """\
[Unit]
Description=nsboot: the only target a box boots to
Requires=basic.target
After=basic.target
AllowIsolate=yes
"""

JOURNALD_CONF = """\
[Journal]
Storage=volatile
RateLimitIntervalSec=0
ForwardToConsole=no
ForwardToSyslog=no
ForwardToWall=no
"""


class SystemdBox:
    """A real systemd as PID 1 of private namespaces on a private root; see the module doc.

    units:   unit files to install, ``{"name.service": text}``; a key with a
             slash is a path below /etc/systemd/system, e.g.
             ``"fanoutd.service.d/test.conf"`` for a drop-in.
    enable:  units the box's default target wants (started at boot).
    files:   other files to put in the box before boot, ``{"/abs/path": text or bytes}``;
             a mode can be given as ``(content, mode)``.
    binds:   host paths shown read-only at the same place (default: python_paths()).
    """

    def __init__(self, units: Mapping[str, str] | None = None, enable: Sequence[str] = (), *,
                 files: Mapping[str, str | bytes | tuple[str | bytes, int]] | None = None,
                 binds: Sequence[str] | None = None, boot_timeout: float = 60.0,
                 stop_timeout: float = 20.0) -> None:
        self.units = dict(units or {})
        self.enable = list(enable)
        self.files = dict(files or {})
        self.binds = list(python_paths() if binds is None else binds)
        self.boot_timeout = boot_timeout
        self.stop_timeout = stop_timeout
        self.name = f"nsboot-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.pid: int | None = None  # the box's PID 1, as the host sees it
        self.state: str | None = None  # systemctl is-system-running after boot
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._cgroup: Path | None = None
        self._systemd = ""

    # ---------------------------------------------------------------- life cycle

    def __enter__(self) -> SystemdBox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        try:
            self._check_host()
            self.cleanup_stale()
            self._stage()
            self._boot()
        except BaseException:
            self.close()
            raise

    def _check_host(self) -> None:
        if os.geteuid() != 0:
            raise BoxError("SystemdBox needs root (it mounts, makes namespaces and runs systemd as PID 1)")
        for tool in ("unshare", "nsenter", "mount", "mountpoint", "pivot_root", "mknod", "systemctl", "journalctl"):
            if shutil.which(tool) is None:
                raise BoxError(f"SystemdBox needs {tool!r} on PATH (util-linux / systemd packages)")
        self._systemd = next((c for c in SYSTEMD_CANDIDATES if os.access(c, os.X_OK)), "")
        if not self._systemd:
            raise BoxError(f"no systemd binary at {' or '.join(SYSTEMD_CANDIDATES)} (apt-get install systemd)")
        with open("/proc/filesystems") as f:
            if not re.search(r"\boverlay\b", f.read()):
                subprocess.run(["modprobe", "overlay"], capture_output=True, timeout=10, check=False)
        with open("/proc/filesystems") as f:
            if not re.search(r"\boverlay\b", f.read()):
                raise BoxError("the kernel has no overlay file system (modprobe overlay failed)")

    def _stage(self) -> None:
        d = self._dir = Path(tempfile.mkdtemp(prefix=self.name + "-", dir="/run" if os.path.isdir("/run") else None))
        os.chmod(d, 0o700)
        (d / "root").mkdir()
        (d / "layers").mkdir()
        (d / "console.log").touch()
        (d / "setup.sh").write_text(SETUP_SCRIPT)
        binds = [os.path.abspath(b) for b in self.binds if os.path.exists(b)]
        (d / "binds").write_text("".join(b + "\n" for b in binds))

        etc = d / "etc-systemd-system"
        etc.mkdir()
        units = {TARGET: TARGET_UNIT, **self.units}
        for name, text in units.items():
            path = etc / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        wants = etc / f"{TARGET}.wants"
        wants.mkdir(exist_ok=True)
        for unit in [*KEEP, *self.enable]:
            src = f"/etc/systemd/system/{unit}" if unit in self.units else f"/lib/systemd/system/{unit}"
            os.symlink(src, wants / unit)
        os.symlink(TARGET, etc / "default.target")
        (d / "masks").write_text("".join(u + "\n" for u in self._mask_list()))

        files: dict[str, str | bytes | tuple[str | bytes, int]] = {
            "/etc/systemd/journald.conf.d/nsboot.conf": JOURNALD_CONF,
            "/etc/machine-id": uuid.uuid4().hex + "\n",
            "/etc/hostname": "nsboot\n",
            **self.files,
        }
        for name, content in files.items():
            mode = 0o644
            if isinstance(content, tuple):
                content, mode = content
            if not name.startswith("/"):
                raise BoxError(f"files: {name!r} is not an absolute path")
            target = d / "files" / name.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode() if isinstance(content, str) else content)
            os.chmod(target, mode)

    def _mask_list(self) -> list[str]:
        wanted = set(KEEP) | set(self.enable) | set(self.units)
        masks = set(ALWAYS_MASK)
        for base in ("/lib/systemd/system", "/usr/lib/systemd/system"):
            for target in WANTS_OF:
                p = Path(base) / f"{target}.target.wants"
                if p.is_dir():
                    masks.update(e.name for e in p.iterdir())
        return sorted(masks - wanted)

    def _boot(self) -> None:
        assert self._dir is not None
        parent = _cgroup_parent()
        self._cgroup = parent / self.name
        self._cgroup.mkdir()
        cmd = ["unshare", "--pid", "--fork", "--kill-child=SIGKILL", "--mount", "--net", "--uts",
               "--ipc", "--cgroup", "--propagation", "private",
               "/bin/sh", str(self._dir / "setup.sh"), str(self._dir), self._systemd]
        with open(self._dir / "console.log", "ab") as log:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          preexec_fn=_preexec(  # noqa: PLW1509 - the harness starts boxes from one thread
                                              str(self._cgroup / "cgroup.procs")),
                                          env={"PATH": BOX_PATH, "LANG": "C.UTF-8"})
        deadline = time.monotonic() + self.boot_timeout
        # 1. the box's PID 1 has become systemd
        while True:
            if self._proc.poll() is not None:
                raise BoxError(f"the box's PID 1 exited with {self._proc.returncode} before systemd ran:\n"
                               + self.console())
            self.pid = self.pid or self._child_pid()
            if self.pid and self._exe(self.pid) == os.path.realpath(self._systemd):
                break
            if time.monotonic() > deadline:
                raise BoxError(f"systemd did not start within {self.boot_timeout}s:\n" + self.console())
            time.sleep(0.05)
        # 2. its manager answers and has finished booting
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                try:
                    jobs = self.run(["systemctl", "list-jobs", "--no-pager"], timeout=10, check=False).stdout
                except subprocess.TimeoutExpired:
                    jobs = "(systemctl list-jobs timed out)"
                raise BoxError(f"systemd in the box did not finish booting within {self.boot_timeout}s "
                               f"(state {self.state!r}); jobs:\n{jobs}\njournal:\n{self.journal()[-6000:]}\n"
                               f"console:\n{self.console()}")
            if self._proc.poll() is not None:
                raise BoxError(f"systemd in the box exited with {self._proc.returncode}:\n" + self.console())
            try:
                r = self.run(["systemctl", "is-system-running", "--wait"], timeout=min(left, 30), check=False)
            except subprocess.TimeoutExpired:
                continue
            self.state = r.stdout.strip()
            if self.state in ("running", "degraded"):
                return
            time.sleep(0.2)

    def _child_pid(self) -> int | None:
        assert self._proc is not None
        try:
            text = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children").read_text().split()
            return int(text[0]) if text else None
        except OSError:  # no CONFIG_PROC_CHILDREN: look for the process whose parent is unshare
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if fields[1] == str(self._proc.pid):
                    return int(stat.parent.name)
            return None

    @staticmethod
    def _exe(pid: int) -> str | None:
        try:
            return os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return None

    def close(self) -> None:
        """Power the box off, kill what is left, remove its cgroups and staging files. Idempotent.

        Every step is bounded in time; the first error is raised after all steps ran.
        """
        errors: list[BaseException] = []
        for step in (self._stop_processes, self._remove_cgroup, self._remove_staging):
            try:
                step()
            except BaseException as exc:  # noqa: BLE001 - go on tearing down, raise below
                errors.append(exc)
        if errors:
            raise errors[0]

    def _stop_processes(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None and self.pid:
            try:
                os.kill(self.pid, signal.SIGRTMIN + 4)  # systemd: start poweroff.target
                proc.wait(timeout=self.stop_timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if proc.poll() is None:
            # SIGKILL to a PID namespace's init kills every process in the namespace.
            for pid in (self.pid, proc.pid):
                if pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            proc.wait(timeout=10)

    def _remove_cgroup(self) -> None:
        if self._cgroup is None:
            return
        deadline = time.monotonic() + 10
        while self._cgroup.exists():
            _remove_cgroup_tree(self._cgroup)  # fails while dying processes are still in it
            if not self._cgroup.exists():
                break
            if time.monotonic() > deadline:
                raise BoxError(f"could not remove the box's cgroup {self._cgroup}")
            time.sleep(0.1)
        self._cgroup = None

    def _remove_staging(self) -> None:
        if self._dir is None:
            return
        d, self._dir = self._dir, None
        try:
            self._console_after = (d / "console.log").read_text(errors="replace")
        except OSError:
            pass
        _remove_staging_dir(d)

    @staticmethod
    def cleanup_stale() -> list[str]:
        """Remove what boxes of dead test processes left: empty cgroups and staging directories.

        Only boxes whose creating process (its pid is in the name) is gone are
        touched, and only when nothing is mounted in their staging directory.
        Returns what was removed.  ``start`` calls it.
        """
        removed = []
        candidates = [p for base in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"), Path("/run"))
                      if base.is_dir() for p in base.glob("nsboot-*")]
        for path in candidates:
            m = re.match(r"nsboot-(\d+)-[0-9a-f]{8}", path.name)
            if not m or Path(f"/proc/{m.group(1)}").exists():
                continue
            try:
                if path.parent.name == "run":
                    _remove_staging_dir(path)
                else:
                    _remove_cgroup_tree(path)
            except (OSError, BoxError):
                continue
            if not path.exists():
                removed.append(str(path))
        return removed

    # ---------------------------------------------------------------- inside the box

    def run(self, cmd: Sequence[str], *, timeout: float = 30.0, check: bool = True,
            input: str | None = None, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the box (all its namespaces and its root), as root, with a clean environment."""
        if not self.pid:
            raise BoxError("the box is not running")
        environ = {"PATH": BOX_PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0",
                   "SYSTEMD_LOG_COLOR": "0", **(env or {})}
        full = ["nsenter", f"--target={self.pid}", "--mount", "--pid", "--net", "--uts", "--ipc",
                "--root", "--wd", "--", "env", "-i", *[f"{k}={v}" for k, v in environ.items()], *cmd]
        r = subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise BoxError(f"in the box: {shlex.join(cmd)} exited with {r.returncode}\n"
                           f"stdout: {r.stdout}\nstderr: {r.stderr}")
        return r

    def systemctl(self, *args: str, timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``systemctl ARGS`` in the box; check=True raises BoxError (with the journal of units named) on failure."""
        r = self.run(["systemctl", "--no-pager", "--no-ask-password", *args], timeout=timeout, check=False)
        if check and r.returncode != 0:
            units = [a for a in args[1:] if not a.startswith("-")]
            logs = "".join(f"\n--- journal of {u}:\n{self.journal(u)}" for u in units)
            raise BoxError(f"systemctl {' '.join(args)} exited with {r.returncode}\n"
                           f"stdout: {r.stdout}\nstderr: {r.stderr}{logs}")
        return r

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show UNIT -p ...`` as a dict."""
        args = ["show", unit] + [f"--property={p}" for p in props]
        out = self.systemctl(*args, timeout=15).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str | None = None, *, timeout: float = 15.0, output: str = "short-monotonic") -> str:
        """The box's journal (of ``unit``, or all of it), as text."""
        cmd = ["journalctl", "--no-pager", "--quiet", f"--output={output}"]
        if unit:
            cmd += ["--unit", unit]
        try:
            return self.run(cmd, timeout=timeout, check=False).stdout
        except (subprocess.TimeoutExpired, BoxError) as exc:
            return f"(journal unavailable: {exc})"

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float = 30.0,
                 interval: float = 0.1) -> None:
        """Poll ``predicate`` until true; BoxError naming ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise BoxError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    def write_file(self, path: str, content: str, mode: int = 0o644) -> None:
        """Write a file in the box (its overlay, not the host)."""
        self.run(["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"', "sh",
                  path, format(mode, "o")], input=content, timeout=15)

    def console(self) -> str:
        """What the box's PID 1 (setup script, then systemd) printed."""
        if self._dir is not None:
            try:
                return (self._dir / "console.log").read_text(errors="replace")
            except OSError:
                pass
        return getattr(self, "_console_after", "")
