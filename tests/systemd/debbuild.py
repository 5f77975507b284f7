"""Build fanoutd's Debian package twice, as `make deb` does, for the tests of the package.

``build_debs`` runs, on the host: ``make deb-wheels`` (the only step that
needs the package index: pip downloads the wheels of fanoutd's dependencies
and build requirements for Debian's python3), ``make deb`` from the
repository (the version in debian/changelog), and ``make deb`` again from a
copy of the repository as a higher version whose shipped configuration has
one more comment line: an upgrade whose conffile changed, so that the
operator's edited one is kept only because of ``--force-confold``.  Each
build runs in its own copy of the tree (debian/build.sh), so the working
tree is left as it was.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFFILE_MARK = "# (added by the package upgrade test: the shipped configuration changed)\n"


@dataclass(frozen=True)
class Debs:
    old: Path
    new: Path
    old_version: str
    new_version: str
    new_conffile: str  # systemd/fanoutd.toml as the new package ships it


def run(cmd: list[str], what: str, cwd: Path = REPO, timeout: float = 600) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert r.returncode == 0, \
        f"{what}: {' '.join(cmd)} exited with {r.returncode}\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}"
    return r.stdout


def only_deb(out: Path) -> Path:
    debs = sorted(out.glob("fanoutd_*.deb"))
    assert len(debs) == 1, f"expected one fanoutd_*.deb in {out}: {debs}"
    return debs[0]


def build_debs(tmp: Path) -> Debs:
    wheels_out = tmp / "wheels-out"
    run(["make", "deb-wheels", f"DEB_OUT={wheels_out}"], "downloading the wheels (needs the package index)")
    wheels = wheels_out / "wheels"
    version = run(["dpkg-parsechangelog", "-S", "Version"], "the package's version").strip()

    old_out = tmp / "old"
    run(["make", "deb", f"WHEELS={wheels}", f"DEB_OUT={old_out}"], "make deb")
    assert not (REPO / "debian" / "fanoutd").exists(), "make deb built in the working tree"

    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "*.so", ".hypothesis", ".pytest_cache"))
    conffile = src / "systemd" / "fanoutd.toml"
    conffile.write_text(conffile.read_text() + CONFFILE_MARK)
    new_version = f"{version}+upgrade1"
    new_out = tmp / "new"
    run(["make", "deb", f"WHEELS={wheels}", f"DEB_OUT={new_out}", f"DEB_VERSION={new_version}"],
        "make deb DEB_VERSION=", cwd=src)
    debs = Debs(only_deb(old_out), only_deb(new_out), version, new_version, conffile.read_text())
    shutil.rmtree(src)
    run(["dpkg", "--compare-versions", debs.new_version, "gt", debs.old_version], "the new version is higher")
    return debs
