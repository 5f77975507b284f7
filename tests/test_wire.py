"""The wire format's two definitions agree: fanoutd/dataplane/wire.h (the loop's) and fanoutd_client/wire.py.

tests/abi/wire_probe.c is built against wire.h alone and prints its
constants and what its topic and stream-key rules answer for each case this
test sends; every value must equal wire.py's, so a change to either side
alone fails here.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fanoutd_client import wire

from conftest import ROOT

HEADER = ROOT / "fanoutd" / "dataplane" / "wire.h"
PROBE = ROOT / "tests" / "abi" / "wire_probe.c"
TIMEOUT = 60

# wire.h's name -> wire.py's value (strings as bytes, as the probe prints them).
EXPECTED: dict[str, int | bytes] = {
    "WIRE_MAGIC": wire.MAGIC,
    "WIRE_MAGIC_LEN": len(wire.MAGIC),
    "WIRE_VERSION": wire.VERSION,
    "WIRE_HEAD_LEN": wire.HEAD.size,
    "WIRE_STAMP": wire.STAMP,
    "WIRE_ROUTE": wire.ROUTE,
    "WIRE_READY": wire.READY,
    "WIRE_STAMP_LEN": wire.STAMP_BODY.size,
    "WIRE_REPAIR_RANGE": wire.REPAIR_RANGE,
    "WIRE_REPAIR_HEADS": wire.REPAIR_HEADS,
    "WIRE_REPAIR_ANSWER": wire.REPAIR_ANSWER,
    "WIRE_REPAIR_END": wire.REPAIR_END,
    "WIRE_REPAIR_MORE": wire.REPAIR_MORE,
    "WIRE_REPAIR_LAST": wire.REPAIR_LAST,
    "WIRE_REPAIR_TAG_LEN": wire.REPAIR_TAG_LEN,
    "WIRE_REPAIR_RANGE_LEN": wire.REPAIR_RANGE_BODY.size,
    "WIRE_REPAIR_RUN_LEN": wire.REPAIR_RUN.size,
    "WIRE_REPAIR_REQUEST_MAX": wire.REPAIR_REQUEST_MAX,
    "WIRE_GONE_EVICTED": wire.GONE_EVICTED,
    "WIRE_GONE_EPOCH": wire.GONE_EPOCH,
    "WIRE_GONE_UNKNOWN": wire.GONE_UNKNOWN,
    "WIRE_GONE_LIMIT": wire.GONE_LIMIT,
    "WIRE_GONE_FUTURE": wire.GONE_FUTURE,
    "WIRE_NODE_ID_LEN": wire.NODE_ID_LEN,
    "WIRE_MAX_HOPS": wire.MAX_HOPS,
    "WIRE_STREAM_KEY_CAP": wire.STREAM_KEY_CAP,
    "WIRE_OUTPUT_FRAME_MAX": wire.OUTPUT_FRAME_MAX,
    "WIRE_LONGEST_PREFIX": wire.LONGEST_PREFIX,
    "WIRE_DRAIN_TOPIC": wire.DRAIN_TOPIC,
    "WIRE_RELAY_PROPERTY": wire.RELAY_PROPERTY.encode(),
    "WIRE_RELAY_PROPERTY_VALUE": wire.RELAY_PROPERTY_VALUE.encode(),
}
# wire.py's names that are built from the ones above rather than defined in wire.h.
DERIVED = {"HEAD", "STAMP_BODY", "RELAY_HELLO", "READY_TRAILER", "REPAIR_RANGE_BODY", "REPAIR_RUN"}

CAP = wire.STREAM_KEY_CAP
# (frames, first frame): the edges of the topic and stream-key rules.
CASES: list[tuple[int, bytes]] = [
    (1, b""), (2, b""),
    (1, b"orders"), (1, b"orders 42"), (1, b"orders "), (1, b" leading"), (1, b" "), (1, b"  "),
    (1, b"a  b c"), (1, b"orders\x00 nul before the space"), (1, b"\x00FDT\x01\x01"), (1, b"tab\tis no space"),
    (2, b"orders 42"), (2, b"orders"), (3, b" "), (5, b"a b"),
    (1, b"x" * (CAP - 1) + b" "), (1, b"x" * CAP + b" y"), (1, b"x" * (CAP - 2) + b" y"),
    (1, b"x" * CAP), (1, b"x" * (CAP + 1)), (1, b"x" * 300), (1, b"x" * 300 + b" tail"),
    (2, b"y" * CAP), (2, b"y" * (CAP + 1)), (2, b"y" * 256 + b" z"), (1, b" " * 300),
]


def fuzzed(count: int = 300) -> Iterator[tuple[int, bytes]]:
    """Random first frames, spaces frequent, some past the key cap, reproducibly."""
    rng = random.Random(24)
    for _ in range(count):
        size = rng.choice((rng.randrange(0, 12), rng.randrange(CAP - 4, CAP + 6), rng.randrange(0, 600)))
        frame = bytes(rng.choice((0x20, 0x20, 0x00, rng.randrange(256))) for _ in range(size))
        yield rng.choice((1, 1, 2, 4)), frame


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """wire_probe.c built against wire.h alone; a missing compiler fails the test (CI installs gcc)."""
    cc = shutil.which("cc")
    assert cc is not None, "no C compiler (cc): install gcc; wire.h cannot be checked against wire.py without one"
    exe = tmp_path_factory.mktemp("wire") / "wire_probe"
    build = subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Wstrict-prototypes", "-Werror",
                            f"-I{HEADER.parent}", str(PROBE), "-o", str(exe)],
                           capture_output=True, text=True, timeout=TIMEOUT)
    assert build.returncode == 0, f"wire.h does not compile on its own:\n{build.stderr}"
    return exe


class Header:
    """What the probe printed: wire.h's numbers and strings by name, and its answer to each case."""

    def __init__(self, exe: Path, cases: list[tuple[int, bytes]]) -> None:
        stdin = "".join(f"{frames} {frame.hex() or '-'}\n" for frames, frame in cases)
        run = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, timeout=TIMEOUT)
        assert run.returncode == 0, run.stderr
        lines = run.stdout.splitlines()
        end = lines.index("end")
        self.numbers: dict[str, int] = {}
        self.strings: dict[str, bytes] = {}
        for name, value in (line.split(" ") for line in lines[:end]):
            if value.startswith("x"):
                self.strings[name] = bytes.fromhex(value[1:])
            else:
                self.numbers[name] = int(value)
        self.answers = [(int(topic), int(key)) for topic, key in (line.split(" ") for line in lines[end + 1:])]
        assert len(self.answers) == len(cases), run.stdout


def test_every_constant_of_wire_h_equals_wire_py(probe: Path) -> None:
    h = Header(probe, [])
    defined = set(re.findall(r"^#define (WIRE_\w+)", HEADER.read_text(), re.MULTILINE))
    assert set(h.numbers) | set(h.strings) == defined, "wire_probe.c must print every constant wire.h defines"
    assert {**h.numbers, **h.strings} == EXPECTED


def test_every_public_name_of_wire_py_is_checked() -> None:
    public = {name for name in dir(wire) if name.isupper()}
    checked = {name.removeprefix("WIRE_") for name in EXPECTED} - {"MAGIC_LEN", "HEAD_LEN", "STAMP_LEN",
                                                                     "REPAIR_RANGE_LEN", "REPAIR_RUN_LEN"}
    assert public == checked | DERIVED


def test_the_trailers_wire_py_builds_have_wire_hs_layout(probe: Path) -> None:
    n, s = (h := Header(probe, [])).numbers, h.strings
    head = s["WIRE_MAGIC"] + bytes((n["WIRE_VERSION"],))
    assert wire.RELAY_HELLO == head + b"\x00"
    assert wire.READY_TRAILER == head + bytes((n["WIRE_READY"],))
    stamped = wire.stamp_trailer(1, 2, 3, 4)
    assert stamped[:len(head)] == head and stamped[len(head)] == n["WIRE_STAMP"]
    assert len(stamped) == n["WIRE_HEAD_LEN"] + n["WIRE_STAMP_LEN"]
    routed = wire.stamp_trailer(1, 2, 3, 4, route=(b"A" * n["WIRE_NODE_ID_LEN"], b"B" * n["WIRE_NODE_ID_LEN"]))
    assert routed[len(head)] == n["WIRE_STAMP"] | n["WIRE_ROUTE"]
    assert len(routed) == len(stamped) + 1 + 2 * n["WIRE_NODE_ID_LEN"]


@pytest.mark.parametrize("cases", [CASES, list(fuzzed())], ids=["edges", "fuzzed"])
def test_the_topic_and_stream_key_rules_agree(probe: Path, cases: list[tuple[int, bytes]]) -> None:
    answers = Header(probe, cases).answers
    python = [(len(wire.topic(frame)), wire.stream_key_length(frame, frames)) for frames, frame in cases]
    wrong = [(case, c, p) for case, c, p in zip(cases, answers, python) if c != p]
    assert not wrong, f"wire.h and wire.py disagree (case, C, Python): {wrong[:5]}"
