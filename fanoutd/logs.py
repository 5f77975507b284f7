"""Logging set-up (timestamps on a terminal, syslog priorities under journald) and rate-limited warnings.

journald stamps every line itself and understands a ``<N>`` priority
prefix, so when stderr is the journal stream (``$JOURNAL_STREAM`` names its
device and inode) lines carry the priority instead of a second timestamp.
"""

from __future__ import annotations

import logging
import os
import sys
import time

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``; tracebacks stay attached to their record."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def stderr_is_journal(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    stream = environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return bool(stream) and f"{st.st_dev}" == dev and f"{st.st_ino}" == ino


def configure(level: int) -> None:
    """Route the root logger to stderr at ``level``; safe to call again on reload."""
    root = logging.getLogger()
    if not any(getattr(h, "_fanoutd", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler._fanoutd = True  # type: ignore[attr-defined]
        if stderr_is_journal():
            handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
        else:
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


class Sparse:
    """A warning logged at most once per ``every`` seconds; the ones held back are counted into the next.

    For events a peer can cause at any rate (refused connections, cut
    subscribers): the log stays readable and nothing is lost from the count.
    """

    def __init__(self, logger: logging.Logger, every: float = 10.0) -> None:
        self._log = logger
        self._every = every
        self._last = float("-inf")
        self._held = 0

    def warning(self, msg: str, *args: object, held: str = "more not logged") -> None:
        """``msg % args``, plus "; N <held>" when some were held back since the last line."""
        self._emit(logging.WARNING, msg, args, held)

    def info(self, msg: str, *args: object, held: str = "more not logged") -> None:
        """As :meth:`warning`, at info: for events that are normal but sometimes the only clue."""
        self._emit(logging.INFO, msg, args, held)

    def _emit(self, level: int, msg: str, args: tuple[object, ...], held: str) -> None:
        now = time.monotonic()
        if now - self._last < self._every:
            self._held += 1
            return
        suffix = f"; {self._held} {held}" if self._held else ""
        self._log.log(level, msg + "%s", *args, suffix)
        self._last, self._held = now, 0
