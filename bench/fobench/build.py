"""Compile the bench's C programs (load generators, the C baseline broker).

They are built into ``bench/build/bin`` (git-ignored) with ``cc -O2`` against
the system libzmq, and rebuilt only when a source is newer than its binary.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
C_DIR = BENCH_DIR / "c"
BUILD_DIR = BENCH_DIR / "build"
BIN_DIR = BUILD_DIR / "bin"

PROGRAMS = ("cbase", "zpub", "zsink", "msink", "rawpub")
ZMTP_DIR = BENCH_DIR / "zmtp"
# The ZMTP publisher prototype (issue #28): several sources, one binary.
ZMTPD_SOURCES = ("zmtpd.c", "conn.c", "zmtp.c")
ZMTPD_HEADERS = ("server.h", "zmtp.h")
CFLAGS = ("-O2", "-Wall", "-Wextra", "-std=gnu11")
LIBS = ("-lzmq", "-lpthread")


class BuildError(RuntimeError):
    """A C program did not compile; the message carries the compiler output."""


def _stale(binary: Path, sources: list[Path]) -> bool:
    if not binary.exists():
        return True
    built = binary.stat().st_mtime
    return any(src.stat().st_mtime > built for src in sources)


def _compile(compiler: str, binary: Path, sources: list[Path]) -> None:
    cmd = [compiler, *CFLAGS, "-o", str(binary), *map(str, sources), *LIBS]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0 or "warning" in done.stderr:
        raise BuildError(f"{' '.join(cmd)}\n{done.stderr}")


def build_zmtpd(out_dir: Path, cc: str | None = None) -> Path:
    """Build the prototype publisher (bench/zmtp/) into out_dir if needed; a warning fails the build."""
    compiler = cc or shutil.which("cc") or "gcc"
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / "zmtpd"
    sources = [ZMTP_DIR / name for name in ZMTPD_SOURCES]
    if _stale(binary, [*sources, *(ZMTP_DIR / h for h in ZMTPD_HEADERS)]):
        _compile(compiler, binary, sources)
    return binary


def build_all(cc: str | None = None) -> dict[str, Path]:
    """Build every program if needed and return name -> path of its binary."""
    compiler = cc or shutil.which("cc") or "gcc"
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    header = C_DIR / "common.h"
    paths: dict[str, Path] = {}
    for name in PROGRAMS:
        source = C_DIR / f"{name}.c"
        binary = BIN_DIR / name
        if _stale(binary, [source, header]):
            cmd = [compiler, *CFLAGS, "-o", str(binary), str(source), *LIBS]
            done = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if done.returncode != 0:
                raise BuildError(f"{' '.join(cmd)}\n{done.stderr}")
        paths[name] = binary
    paths["zmtpd"] = build_zmtpd(BIN_DIR, compiler)
    return paths
