"""The folder shows the architecture: one door to the native module, configuration without it, files of one job."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import ROOT

DATAPLANE = ROOT / "fanoutd" / "dataplane"
C_MAX_LINES = 400  # a C file over this is doing more than one job (docs/architecture.md, module map)


def _imports_native(path) -> bool:
    """Whether a module imports the compiled extension (`_forward`) by any spelling."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        if any(name.split(".")[-1] == "_forward" for name in names):
            return True
    return False


def test_only_the_dataplane_imports_the_native_module():
    modules = [*(ROOT / "fanoutd").rglob("*.py"), *(ROOT / "clients").rglob("*.py")]
    outside = [str(p.relative_to(ROOT)) for p in modules if DATAPLANE not in p.parents and _imports_native(p)]
    assert not outside, f"import the native module only in fanoutd/dataplane/: {outside}"
    assert _imports_native(DATAPLANE / "engine.py"), "the scan must see the dataplane's own import"


def test_parsing_the_configuration_needs_no_compiled_code():
    """With the extension made unimportable, the configuration still loads and --check-config answers."""
    script = (
        "import sys\n"
        "sys.modules['fanoutd.dataplane._forward'] = None  # any import of it now raises ImportError\n"
        "from fanoutd import cli\n"
        "sys.argv = ['fanoutd', '--check-config', '--max-frames', '256']\n"
        "sys.exit(cli.main())\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert '"max_frames": 256' in r.stdout, r.stdout


def test_no_c_file_of_the_dataplane_has_more_than_one_job():
    sizes = {p.name: len(p.read_text().splitlines()) for p in [*DATAPLANE.glob("*.c"), *DATAPLANE.glob("*.h")]}
    assert len(sizes) >= 8, sizes  # split by job: the loop, fan-out, trailer, stamps, kernel, libzmq, glue, ...
    assert all(n <= C_MAX_LINES for n in sizes.values()), {k: n for k, n in sizes.items() if n > C_MAX_LINES}
