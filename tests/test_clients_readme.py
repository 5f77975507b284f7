"""The README's Python examples, run as written against the real daemon.

A new user's first hour starts by pasting them; an example that raises is
worse than none.  Each ```python block of the "Using it" section runs in
its own interpreter, with only the default endpoints replaced by the test
daemon's, and must exit 0 and print what its comments promise.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.timeout(60)


def using_it_examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Using it\n"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"^```python\n(.*?)^```$", section, re.S | re.M)


def test_the_using_it_section_has_the_blocking_and_the_asyncio_example():
    examples = using_it_examples()
    assert len(examples) == 2
    assert "from fanoutd_client import Producer" in examples[0] and "from fanoutd_client import aio" in examples[1]


@pytest.mark.parametrize("index", [0, 1], ids=["blocking", "asyncio"])
def test_a_readme_example_runs_as_written(start_daemon, index):
    d = start_daemon()
    code = using_it_examples()[index]
    for default, endpoint in (("tcp://127.0.0.1:5560", d.collector), ("tcp://127.0.0.1:5561", d.publish),
                              ("tcp://127.0.0.1:5562", d.push), ("tcp://127.0.0.1:5565", d.stamped)):
        code = code.replace(default, endpoint)
    assert "127.0.0.1:556" not in code
    if index == 0:
        code += "assert (topic, payload) == (b'orders', b'{\"id\":1}') and event == {'id': 1}\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    if index == 1:
        assert result.stdout == "b'orders' b'{\"id\":1}'\n"
