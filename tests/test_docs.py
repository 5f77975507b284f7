"""Every code block in README.md, clients/README.md and docs/ is either run here, as written, or says why not;
every relative link between the docs resolves; the README stays a front page.

A block is *run* when this file has a runner for it (keyed by its first
line): shell lines are typed into bash one second apart, as a person would,
with only the default endpoints replaced by the test daemon's and paths
under /etc or /tmp moved into a temporary directory; background jobs are
killed at the end. Any other block must be introduced by a visible line
``*Not run by the tests: REASON.*`` or ``*Run by CI ...*``. A new block with
neither fails this test, so the docs cannot quietly rot. The Python blocks
of "Using it" are run by ``tests/test_clients_readme.py``.

docs/configuration.md and docs/metrics.md are generated from the code
(``fanoutd/reference.py``), which has drift tests of its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ROOT, Daemon

pytestmark = pytest.mark.timeout(120)

GENERATED = frozenset({"docs/configuration.md", "docs/metrics.md"})
DOCS = ("README.md", "clients/README.md",
        *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")
                if str(p.relative_to(ROOT)) not in GENERATED))
LINKED = (*DOCS, *sorted(GENERATED), "bench/README.md", "CHANGELOG.md")
README_MAX_BYTES = 12 * 1024  # a front page: what it is, the two commands, a first example, where to read on
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
MARKER = re.compile(r"^\s*\*(Not run by the tests: .+|Run by CI\b.+)\*\s*$")
BIN = Path(sys.executable).parent


def blocks(doc: str) -> list[tuple[str, str, str]]:
    """(the line before the block, the block's first line, the block's text) for every code block."""
    lines = (ROOT / doc).read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].lstrip().startswith("```"))
            body = lines[i + 1:end]
            out.append((_before(lines, i), body[0].strip() if body else "", "\n".join(body)))
            i = end + 1
            continue
        if line.startswith("    ") and line.strip() and i > 0 and not lines[i - 1].strip():
            indent = len(line) - len(line.lstrip())
            previous = _before(lines, i)
            if not previous.lstrip().startswith(("-", "|")) or indent >= 6:
                j = i
                while j < len(lines) and (lines[j].startswith(" " * indent) or not lines[j].strip()):
                    j += 1
                body = [text[indent:] for text in lines[i:j]]
                while body and not body[-1].strip():
                    body.pop()
                out.append((previous, body[0].strip(), "\n".join(body)))
                i = j
                continue
        i += 1
    return out


def _before(lines: list[str], i: int) -> str:
    return next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")


def typed(script: str, cwd: Path, env: dict[str, str] | None = None,
          replace: tuple[tuple[str, str], ...] = ()) -> subprocess.CompletedProcess[str]:
    """Type the block's lines into bash one second apart (set -e); background jobs are killed at the end."""
    for old, new in replace:
        script = script.replace(old, new)
    body = "\nsleep 1\n".join(line for line in script.splitlines() if line.strip())
    wrapped = f"set -e\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{body}\nsleep 1\n"
    environ = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **(env or {})}
    return subprocess.run(["bash", "-c", wrapped], cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=90)


def endpoints(d: Daemon) -> tuple[tuple[str, str], ...]:
    return (("tcp://127.0.0.1:5560", d.collector), ("tcp://127.0.0.1:5561", d.publish),
            ("tcp://127.0.0.1:5562", d.push), ("tcp://127.0.0.1:5565", d.stamped),
            ("127.0.0.1:9560", d.http.removeprefix("http://")))


def run_using_it(text: str, start_daemon, tmp_path: Path) -> None:
    d = start_daemon()
    env = {"FANOUT_COLLECTOR": d.collector, "FANOUT_PUBLISH": d.publish, "FANOUT_PUSH": d.push}
    # `fanoutd top` redraws until interrupted: the same screen once, from the test daemon.
    result = typed(text, ROOT, env, endpoints(d) + (("fanoutd top", f"fanoutd top --once --url {d.http}/metrics"),))
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert 'orders {"id": 1}' in out and '{"id": 1}' in out, result.stdout
    assert "received" in result.stdout and "fanoutd_received_messages_total" in result.stdout


def run_curve_collector(text: str, start_daemon, tmp_path: Path) -> None:
    """The CURVE worked example: its keygen lines, then the config file in the same block, which
    --check-config accepts."""
    moved = (("/etc/fanoutd", str(tmp_path / "etc")), ("/tmp/keys", str(tmp_path / "keys")))
    commands, _, config = text.partition("# /etc/fanoutd/fanoutd.toml\n")
    result = typed(commands, tmp_path, replace=moved)
    assert result.returncode == 0, result.stderr
    for old, new in moved:
        config = config.replace(old, new)
    (tmp_path / "fanoutd.toml").write_text(config)
    check = subprocess.run([str(BIN / "fanoutd"), "--check-config", "--config", str(tmp_path / "fanoutd.toml")],
                           capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["collector_curve"] is True


def run_public_key_sed(text: str, start_daemon, tmp_path: Path) -> None:
    subprocess.run([str(BIN / "fanoutd"), "keygen", str(tmp_path), "server"], check=True, capture_output=True,
                   timeout=30)
    result = typed(text, tmp_path)
    assert result.returncode == 0 and re.fullmatch(r"\S{40}\n", result.stdout), result


def run_c_examples(text: str, start_daemon, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "clients" / "c", tmp_path / "clients" / "c")
    d = start_daemon()
    result = typed(text, tmp_path, replace=endpoints(d))
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert [line for line in out if line.startswith("orders ")] == [f"orders hello-{n}" for n in (1, 2, 3)], out
    assert [line for line in out if line.startswith("hello-")] == [f"hello-{n}" for n in (1, 2, 3)], out


RUNNERS: dict[str, Callable[[str, object, Path], None]] = {
    ".venv/bin/fanout sub orders &                     # tail a topic (prints \"topic payload\" lines)":
        run_using_it,
    "fanoutd keygen /etc/fanoutd server               # server.key (public) + server.key_secret": run_curve_collector,
    "sed -n 's/^ *public-key = \"\\(.*\\)\"$/\\1/p' server.key": run_public_key_sed,
    "cd clients/c && make            # or: cc -O2 -Wall -o fanout_producer fanout_producer.c -lzmq": run_c_examples,
}


def all_blocks() -> list[tuple[str, str, str, str]]:
    return [(doc, before, first, text) for doc in DOCS for before, first, text in blocks(doc)]


def test_every_block_is_run_or_says_why_not():
    unaccounted = [f"{doc}: {first}" for doc, before, first, text in all_blocks()
                   if first not in RUNNERS and not MARKER.match(before)
                   and not (first.startswith(("import ", "from ")) and doc == "README.md")]
    assert not unaccounted, "blocks neither run by tests/test_docs.py nor marked *Not run by the tests: ...*:\n" + \
        "\n".join(unaccounted)
    assert {first for _, _, first, _ in all_blocks()} >= set(RUNNERS), "a runner whose block is gone"


@pytest.mark.parametrize("first", sorted(RUNNERS))
def test_a_block_runs_as_written(first, start_daemon, tmp_path):
    doc, _, _, text = next(item for item in all_blocks() if item[2] == first)
    RUNNERS[first](text, start_daemon, tmp_path)


def test_the_readme_is_a_front_page():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes: move detail into docs/ (limit {README_MAX_BYTES})"


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (outside code blocks)."""
    out: set[str] = set()
    fenced = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = re.match(r"#{1,6} (.+)", line)
        if match and not fenced:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            n, candidate = 0, slug
            while candidate in out:
                n += 1
                candidate = f"{slug}-{n}"
            out.add(candidate)
    return out


def links(doc: str) -> list[str]:
    """The relative link targets of a Markdown file, outside code blocks and inline code."""
    text = re.sub(r"```.*?```", "", (ROOT / doc).read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


def test_every_relative_link_between_the_docs_resolves():
    broken = []
    for doc in LINKED:
        for target in links(doc):
            path, _, anchor = target.partition("#")
            file = (ROOT / doc).parent / path if path else ROOT / doc
            if not file.exists():
                broken.append(f"{doc}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{doc}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)
