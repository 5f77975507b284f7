"""How the ``fanout`` tool turns a message into one line of output.

A message's frames are written separated by a space, as the C and Node
examples in clients/ print them, so ``[orders, part 1, part 2]`` reads
``orders part 1 part 2`` and a single frame ``orders hello`` reads as it
is.  Each frame is escaped on its own (the separator, chosen by the user,
never is): bytes that are not UTF-8 as ``\\xNN``, control characters as
escapes, so a message can neither span lines nor drive the terminal.
``--raw`` skips the escaping and writes the frames' bytes as received.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import BinaryIO

__all__ = ["emit", "frames_to_line", "printable"]

# Control characters (tab aside) as escapes, so a message can neither span
# lines nor drive the terminal; C1 controls (U+0080-U+009F, e.g. NEL, CSI)
# and the Unicode line/paragraph separators as \uNNNN, to tell them from
# invalid bytes, which decoding shows as \xNN.
_ESCAPES = ({c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F] if c != 0x09} | {0x0A: "\\n", 0x0D: "\\r"}
            | {c: f"\\u{c:04x}" for c in [*range(0x80, 0xA0), 0x2028, 0x2029]})


def printable(data: bytes) -> bytes:
    """``data`` as one line of UTF-8 text: invalid bytes as \\xNN, controls escaped."""
    return data.decode("utf-8", "backslashreplace").translate(_ESCAPES).encode("utf-8")


def frames_to_line(sep: str | None, raw: bool) -> Callable[[list[bytes]], bytes]:
    """A function joining a message's frames with ``sep`` (None: a space), escaped unless ``raw``."""
    separator = b" " if sep is None else os.fsencode(sep)  # fsencode: argv bytes as given
    if raw:
        return separator.join
    return lambda frames: separator.join(map(printable, frames))


def emit(out: BinaryIO, line: bytes) -> None:
    out.write(line + b"\n")
    out.flush()  # a line as soon as it arrives: the reader may be `grep` in a pipeline
