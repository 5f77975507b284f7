"""The kernel's view of the data sockets' connections (bytes queued, bytes acknowledged), read in C for many at once."""

from __future__ import annotations

from collections.abc import Sequence

from . import _forward

#: fd -> (bytes queued in the kernel send queue, bytes the peer acknowledged or -1 where not TCP)
KernelState = tuple[int, int]


def states(fds: Sequence[int]) -> list[KernelState | None]:
    """Each connection's kernel state, None where an fd cannot be read (one call, without the GIL)."""
    return _forward.kernel_states(fds)


def waiting(fds: Sequence[int]) -> list[tuple[int, int, int]]:
    """(index into fds, queued, acknowledged) of only the connections with bytes in their send queue."""
    return _forward.kernel_waiting(fds)
