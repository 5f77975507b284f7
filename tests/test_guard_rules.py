"""The slow-consumer guard's rules, each driven by made-up kernel readings: no daemon, no TCP buffers to fill.

The rules (fanoutd/slowrules.py) get readings and return decisions; the
Guard (fanoutd/slow.py) is then driven whole through a made-up KernelView,
cutting real socketpairs, so the wiring between the two is checked too. The
same behaviour on real sockets and a real daemon: tests/test_slow_consumers.py.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import gevent
import pytest
import zmq

from fanoutd.config import Config, load
from fanoutd.peers import Connection, PeerTracker
from fanoutd.slow import Guard
from fanoutd import slow
from fanoutd.config import ConfigError
from fanoutd.slowrules import (BECAUSE, FURTHEST_BEHIND, MAX_PENDING, PACE_BOUND, RULES, STOPPED, STOPPED_AFTER,
                               TIMEOUT, WINDOW, Cut, Pacing, Progress, Reading, StallLook, full, gone,
                               over_max_pending, resume_below, stall_above)

BUF = 64 * 1024  # a send-buffer size: a queue of a quarter of it or more is a full one
FULL = 60_000  # bytes queued: full in a BUF buffer
BEHIND = 2_000  # bytes queued: a reader a little behind, far from full


def conn(fd: int, role: str = "publish", reason: str = "") -> Connection:
    """A connection as the peer tracker keeps it; the fd is only a key here (nothing reads it)."""
    return Connection(role, fd, 1000 + fd, f"127.0.0.1:{40000 + fd}", reason=reason)


# (a) stopped reader


def test_a_full_connection_that_acknowledged_nothing_between_the_looks_is_cut():
    stopped, draining, busy = conn(5), conn(6), conn(7)
    look = StallLook({stopped: Reading(FULL, 100), draining: Reading(FULL, 100), busy: Reading(BEHIND, 100)},
                     {stopped: Reading(FULL, 100, BUF), draining: Reading(FULL - 900, 1000, BUF),
                      busy: Reading(BEHIND, 100, BUF)})
    # The busy reader acknowledged nothing either, but its buffer is far from full: it cannot hold the full queue.
    assert look.stopped() == [Cut(stopped, STOPPED, FULL)]


def test_a_connection_not_seen_at_the_first_look_is_not_judged_stopped():
    new = conn(5)
    assert StallLook({}, {new: Reading(FULL, 100, BUF)}).stopped() == []


def test_a_connection_without_tcp_info_is_judged_by_its_queue_shrinking():
    """A unix socket has no acknowledged bytes (-1): a queue that did not shrink means it read nothing."""
    stopped, reading = conn(5), conn(6)
    look = StallLook({stopped: Reading(FULL, -1), reading: Reading(FULL, -1)},
                     {stopped: Reading(FULL, -1, BUF), reading: Reading(FULL - 1, -1, BUF)})
    assert look.stopped() == [Cut(stopped, STOPPED, FULL)]


def test_full_means_a_quarter_of_the_send_buffer_and_at_least_16_KiB():
    assert full(Reading(BUF // 4, 0, BUF))
    assert not full(Reading(BUF // 4 - 1, 0, BUF))
    assert not full(Reading(16 * 1024 - 1, 0, 16 * 1024))  # below 16 KiB nothing is full, whatever the buffer
    assert not full(Reading(FULL, 0, 0)), "a buffer size that could not be read proves nothing"


# (b) furthest behind


def test_when_none_stopped_the_full_connection_with_the_most_queued_is_cut_and_only_that_one():
    a, b, c, small = conn(5), conn(6), conn(7), conn(8)
    first = {a: Reading(FULL, 1), b: Reading(FULL, 1), c: Reading(FULL, 1), small: Reading(BEHIND, 1)}
    second = {a: Reading(FULL, 2, BUF), b: Reading(FULL + 500, 2, BUF), c: Reading(FULL - 500, 2, BUF),
              small: Reading(BEHIND, 2, BUF)}
    look = StallLook(first, second)
    assert look.stopped() == []
    assert look.furthest_behind([a, b, c, small]) == Cut(b, FURTHEST_BEHIND, FULL + 500)


def test_the_most_queued_is_not_cut_when_its_buffer_is_not_full():
    """Buffers autotune per connection: the most bytes queued need not be a full buffer."""
    big, full_one = conn(5), conn(6)
    second = {big: Reading(200_000, 2, 4 * 1024 * 1024), full_one: Reading(FULL, 2, BUF)}
    look = StallLook({big: Reading(200_000, 1), full_one: Reading(FULL, 1)}, second)
    assert look.furthest_behind([big, full_one]) == Cut(full_one, FURTHEST_BEHIND, FULL)


def test_nobody_is_cut_as_furthest_behind_while_a_cut_connection_is_being_torn_down():
    a, leaving = conn(5), conn(6, reason="slow consumer: being cut")
    look = StallLook({a: Reading(FULL, 1)}, {a: Reading(FULL, 2, BUF)})
    assert look.furthest_behind([a, leaving]) is None
    assert look.furthest_behind([a]) == Cut(a, FURTHEST_BEHIND, FULL)


# (c) broker behind


def test_when_no_kernel_buffer_is_full_nobody_is_cut_and_the_stalled_output_holds_on():
    """libzmq's own I/O thread is behind, not a subscriber: back-pressure goes to the producers."""
    a, b = conn(5), conn(6, "relay")
    look = StallLook({a: Reading(BEHIND, 1), b: Reading(BEHIND, 1)},
                     {a: Reading(BEHIND, 1, BUF), b: Reading(BEHIND, 1, BUF)})
    assert look.behind == {}
    assert look.stopped() == [] and look.furthest_behind([a, b]) is None
    assert look.stall_on("publish", [a, b]) and look.stall_on("relay", [a, b])


def test_a_full_subscriber_left_uncut_makes_its_own_output_send_lossy_and_only_that_one():
    stuck, other = conn(5), conn(6, "relay")
    look = StallLook({stuck: Reading(FULL, 1)}, {stuck: Reading(FULL, 2, BUF)})
    assert not look.stall_on("publish", [stuck, other])
    assert look.stall_on("relay", [stuck, other])


def test_while_a_cut_is_under_way_on_an_output_it_holds_on():
    """The next look finds the next full one, if any; "no" would make libzmq skip a subscriber."""
    stuck, cutting = conn(5), conn(6)
    look = StallLook({stuck: Reading(FULL, 1), cutting: Reading(FULL, 1)},
                     {stuck: Reading(FULL, 2, BUF), cutting: Reading(FULL, 1, BUF)})
    cutting.reason = "slow consumer: being cut"  # what cutting it at this look did
    assert look.stall_on("publish", [stuck, cutting])
    assert not look.stall_on("publish", [stuck]), "the cut one is gone and a full one is left: send lossy"


# (d) window close


def test_after_a_lossy_send_the_fullest_connection_of_that_output_is_the_one_to_cut():
    a, b, other = conn(5), conn(6), conn(7, "relay")
    second = {a: Reading(FULL, 2, BUF), b: Reading(FULL + 1, 2, BUF), other: Reading(FULL * 2, 2, BUF)}
    look = StallLook({}, second)
    assert look.fullest("publish") == Cut(b, WINDOW, FULL + 1)
    assert look.fullest("relay") == Cut(other, WINDOW, FULL * 2)


def test_the_fullest_is_taken_among_full_buffers_first_then_among_any_with_data_waiting():
    big, full_one, waiting = conn(5), conn(6), conn(7)
    look = StallLook({}, {big: Reading(200_000, 2, 4 * 1024 * 1024), full_one: Reading(FULL, 2, BUF)})
    assert look.fullest("publish") == Cut(full_one, WINDOW, FULL)
    look = StallLook({}, {waiting: Reading(BEHIND, 2, BUF), conn(8): Reading(BEHIND - 1, 2, BUF)})
    assert look.fullest("publish") == Cut(waiting, WINDOW, BEHIND)
    assert StallLook({}, {}).fullest("publish") is None, "drained since: the next full send is refused again"


def test_a_window_may_close_only_once_its_cut_connection_is_gone():
    cut = conn(5)
    assert not gone([cut], {5: cut, 6: conn(6)})
    assert gone([cut], {6: conn(6)})
    assert gone([cut], {5: conn(5)}), "libzmq reused the fd for a new connection: the cut one is gone"


# (e) the sampler's timeout rule


def test_data_waiting_with_no_progress_for_the_timeout_is_cut():
    stuck = conn(5)
    progress = Progress()
    assert progress.update(100.0, {stuck: Reading(BEHIND, 10)}, timeout=10) == []
    assert progress.update(105.0, {stuck: Reading(BEHIND, 10)}, timeout=10) == []
    assert progress.update(109.9, {stuck: Reading(BEHIND, 10)}, timeout=10) == []
    [cut] = progress.update(110.0, {stuck: Reading(BEHIND, 10)}, timeout=10)
    assert cut == Cut(stuck, TIMEOUT, BEHIND, 10.0)
    assert cut.why == "it read nothing for 10.0s"
    assert progress.stalled(stuck, 110.0) == 10.0


def test_progress_restarts_the_timeout():
    reader = conn(5)
    progress = Progress()
    progress.update(100.0, {reader: Reading(BEHIND, 10)}, timeout=10)
    progress.update(105.0, {reader: Reading(BEHIND, 11)}, timeout=10)  # acknowledged a byte
    assert progress.update(110.0, {reader: Reading(BEHIND, 11)}, timeout=10) == []
    assert progress.stalled(reader, 110.0) == 5.0
    assert progress.update(115.0, {reader: Reading(BEHIND, 11)}, timeout=10) == [Cut(reader, TIMEOUT, BEHIND, 10.0)]


def test_a_queue_that_emptied_between_passes_restarts_the_timeout():
    """Not seen with data waiting at a pass: whatever waits at the next came since."""
    reader = conn(5)
    progress = Progress()
    progress.update(100.0, {reader: Reading(BEHIND, 10)}, timeout=10)
    progress.update(105.0, {}, timeout=10)
    assert progress.update(110.0, {reader: Reading(BEHIND, 10)}, timeout=10) == []
    assert progress.stalled(reader, 110.0) == 0.0


def test_without_tcp_info_the_sampler_counts_a_shrinking_queue_as_progress():
    reader, stuck = conn(5), conn(6)
    progress = Progress()
    progress.update(100.0, {reader: Reading(BEHIND, -1), stuck: Reading(BEHIND, -1)}, timeout=10)
    progress.update(105.0, {reader: Reading(BEHIND - 1, -1), stuck: Reading(BEHIND, -1)}, timeout=10)
    assert progress.update(110.0, {reader: Reading(BEHIND - 1, -1), stuck: Reading(BEHIND, -1)}, timeout=10) == [
        Cut(stuck, TIMEOUT, BEHIND, 10.0)]


def test_a_timeout_of_0_cuts_nobody():
    stuck = conn(5)
    progress = Progress()
    for now in (0.0, 100.0, 10_000.0):
        assert progress.update(now, {stuck: Reading(BEHIND, 10)}, timeout=0) == []


def test_a_quiet_loop_limits_the_look_to_connections_seen_with_data_waiting():
    waiting = conn(5)
    progress = Progress()
    assert progress.among(received=7) is None
    progress.update(1.0, {waiting: Reading(BEHIND, 10)}, timeout=10)
    assert progress.among(received=8) is None, "the loop read a message since the last pass: look at everyone"
    assert progress.among(received=8) is None, "quiet for one pass only: a message may still be on its way"
    assert progress.among(received=8) == {(waiting.fd, waiting.inode)}, "quiet for two passes"
    progress.update(5.0, {}, timeout=10)
    assert progress.among(received=8) == set()
    assert progress.among(received=9) is None, "traffic again: everyone"


# (f) the pace policy: hold on while full readers read; cut one still for STOPPED_AFTER, or past the pace bound


def paced_look(acked: dict[Connection, tuple[int, int]], queued: dict[Connection, int] | None = None) -> StallLook:
    """A look at full connections: conn -> (acknowledged at the first reading, at the second 4 ms later)."""
    queued = queued or {}
    return StallLook({c: Reading(queued.get(c, FULL), first) for c, (first, _) in acked.items()},
                     {c: Reading(queued.get(c, FULL), second, BUF) for c, (_, second) in acked.items()})


LOOKS = (0.0, 0.02, 0.06, 0.14, 0.30, 0.62, 1.0, 2.0)  # a long stall's looks: slow_consumer_stall, doubling to 1 s


def test_under_pace_a_full_reader_that_makes_progress_is_never_cut():
    """Behind a burst, reading: under cut it is the furthest behind and goes; under pace the fleet waits for it."""
    reader, fast = conn(5), conn(6)
    pacing = Pacing(share=1.0, window=10.0)
    for i, now in enumerate(LOOKS):
        look = paced_look({reader: (10 * i, 10 * i + 1), fast: (10 * i, 10 * i + 5)}, {reader: FULL + 500})
        assert look.furthest_behind([reader, fast]) == Cut(reader, FURTHEST_BEHIND, FULL + 500)  # what cut does
        assert pacing.decide(100 + now, look, {"publish": now}) == []


def test_under_pace_a_full_reader_with_no_progress_is_cut_as_stopped_only_after_STOPPED_AFTER():
    """A live reader descheduled for a few milliseconds acknowledges nothing during one 4 ms look; one stopped
    acknowledges nothing across looks for STOPPED_AFTER."""
    stopped, reader = conn(5), conn(6)
    pacing = Pacing(share=1.0, window=10.0)
    for i, now in enumerate(LOOKS):
        cuts = pacing.decide(100 + now, paced_look({stopped: (7, 7), reader: (i, i + 1)}), {"publish": now})
        if now < STOPPED_AFTER:
            assert cuts == [], f"cut at {now}s, before STOPPED_AFTER"
        else:
            assert cuts == [Cut(stopped, STOPPED, FULL, pytest.approx(now))]
            return
    pytest.fail("never cut")


def test_under_pace_progress_across_looks_restarts_the_stopped_clock():
    """It acknowledged nothing during either 4 ms look, but bytes between the looks: it reads."""
    reader = conn(5)
    pacing = Pacing(share=1.0, window=10.0)
    assert pacing.decide(100.0, paced_look({reader: (7, 7)}), {}) == []
    assert pacing.decide(100.4, paced_look({reader: (8, 8)}), {}) == []  # moved since the last look
    assert pacing.decide(100.8, paced_look({reader: (8, 8)}), {}) == []  # still for 0.4 s only
    [cut] = pacing.decide(100.9, paced_look({reader: (8, 8)}), {})
    assert cut.rule == STOPPED and cut.seconds == pytest.approx(0.5)


def test_under_pace_a_reader_that_drained_between_looks_starts_afresh():
    """Not full at a look (its queue drained): it read; if it fills again, its clock starts then."""
    reader, other = conn(5), conn(6)
    pacing = Pacing(share=1.0, window=10.0)
    pacing.decide(100.0, paced_look({reader: (7, 7), other: (1, 2)}), {})
    pacing.decide(100.3, paced_look({other: (2, 3)}), {})
    assert pacing.decide(100.6, paced_look({reader: (7, 7), other: (3, 4)}), {}) == []
    assert pacing.decide(101.1, paced_look({reader: (7, 7), other: (4, 5)}), {})[0].conn is reader


def test_the_pace_bound_cuts_the_reader_that_is_persistently_furthest_behind():
    """Held one second between looks, always for the same slow reader: past half of 10 s it is cut.

    The first look is the baseline of the output's held time; each later one charges what it grew since."""
    slow, fast = conn(5), conn(6)
    pacing = Pacing(share=0.5, window=10.0)
    for second in range(12):
        look = paced_look({slow: (second, second + 1), fast: (second, second + 9)}, {slow: FULL + 500})
        cuts = pacing.decide(100.0 + second, look, {"publish": float(second), "relay": 0.0})
        if second <= 5:
            assert cuts == [], f"cut after {second}s held, within the bound"
        else:
            assert cuts == [Cut(slow, PACE_BOUND, FULL + 500, 6.0)]
            assert cuts[0].why == ("it held the others back for 6.0s, more than slow_consumer_pace_share of the "
                                   "window")
            return
    pytest.fail("never cut")


def test_readers_that_take_turns_being_furthest_behind_are_never_cut_by_the_pace_bound():
    """Equal readers under overload: the output is held all the time, but for each only part of it (here half:
    at the bound, not past it)."""
    a, b = conn(5), conn(6)
    pacing = Pacing(share=0.5, window=10.0)
    for second in range(1, 60):
        queued = {a: FULL + 500, b: FULL} if second % 2 else {a: FULL, b: FULL + 500}
        look = paced_look({a: (second, second + 1), b: (second, second + 1)}, queued)
        assert pacing.decide(100.0 + second, look, {"publish": float(second)}) == [], f"cut at {second}s"


def test_a_pace_share_of_1_never_cuts_by_the_pace_bound():
    slow = conn(5)
    pacing = Pacing(share=1.0, window=10.0)
    for second in range(1, 30):
        assert pacing.decide(100.0 + second, paced_look({slow: (second, second + 1)}), {"publish": second}) == []


def test_pace_needs_a_stall_and_a_window():
    """slow_consumer_stall = 0 never holds output, so there is nothing to pace with: refused, not ignored."""
    with pytest.raises(ConfigError, match="slow_consumer_stall"):
        load({"slow_consumer_policy": "pace", "slow_consumer_stall": "0"}, {})
    with pytest.raises(ConfigError, match="slow_consumer_pace_window"):
        load({"slow_consumer_policy": "pace", "slow_consumer_pace_window": "0"}, {})
    with pytest.raises(ConfigError, match="pace or cut"):
        load({"slow_consumer_policy": "wait"}, {})
    with pytest.raises(ConfigError, match="slow_consumer_stall"):  # pace is the default
        load({"slow_consumer_stall": "0"}, {})
    assert load({"slow_consumer_stall": "0", "slow_consumer_policy": "cut"}, {}).slow_consumer_stall == 0


# (g) held bytes past slow_consumer_max_pending

MIB = 1024 * 1024


def test_the_loop_stalls_at_three_quarters_of_max_pending_under_pace_and_at_all_of_it_under_cut():
    assert stall_above("pace", 64 * MIB) == 48 * MIB
    assert stall_above("cut", 64 * MIB) == 64 * MIB
    assert stall_above("pace", 0) == stall_above("cut", 0) == 0  # no byte bound
    assert load({}, {}).slow_consumer_max_pending == 64 * MIB and load({}, {}).slow_consumer_policy == "pace"


def test_a_paced_output_takes_messages_again_at_half_of_max_pending_and_a_cut_one_at_the_bound():
    assert resume_below("pace", 64 * MIB) == 32 * MIB < stall_above("pace", 64 * MIB)
    assert resume_below("cut", 64 * MIB) == stall_above("cut", 64 * MIB)  # latency first: no low-water mark
    assert resume_below("pace", 0) == 0


def test_max_pending_must_hold_one_message_or_be_off():
    with pytest.raises(ConfigError, match="slow_consumer_max_pending .* max_message_size"):
        load({"slow_consumer_max_pending": "512KiB", "max_message_size": "1MiB"}, {})
    assert load({"slow_consumer_max_pending": "0"}, {}).slow_consumer_max_pending == 0
    assert load({"slow_consumer_max_pending": "1MiB"}, {}).slow_consumer_max_pending == MIB


def test_past_max_pending_the_fullest_full_connection_of_that_output_is_cut():
    a, b, c, other = conn(5), conn(6), conn(7), conn(8, "relay")
    behind = {a: FULL, b: FULL + 10, other: FULL + 99}
    assert over_max_pending(behind, "publish", [a, b, c, other]) == Cut(b, MAX_PENDING, FULL + 10)
    assert over_max_pending({}, "publish", [a, b, c]) is None, "none full: libzmq's I/O is behind, hold on"
    cutting = conn(7, reason="slow consumer: ...")
    assert over_max_pending(behind, "publish", [a, b, cutting]) is None, "a cut under way gives bytes back"


# The whole Guard, driven through a made-up kernel view and cutting real socketpairs.


class MadeUpKernel:
    """A KernelView whose readings the test writes: each call to waiting() takes the next of ``looks``."""

    def __init__(self, *looks: dict[int, tuple[int, int]], sndbuf: int = BUF) -> None:
        self.looks = list(looks)  # fd -> (queued, acked); the last one repeats
        self.sndbuf = sndbuf

    def waiting(self, fds: Sequence[int]) -> list[tuple[int, int, int]]:
        state = self.looks.pop(0) if len(self.looks) > 1 else self.looks[0]
        return [(i, *state[fd]) for i, fd in enumerate(fds) if state.get(fd, (0, 0))[0] > 0]

    def send_buffer(self, fd: int) -> int:
        return self.sndbuf


class MadeUpOutputs:
    """The Outputs the guard talks to, as the Engine would be, recording what the guard told it."""

    def __init__(self) -> None:
        self.stall_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.received_count = 0
        self.held_ns = {"publish_held_ns": 0, "relay_held_ns": 0, "stamped_held_ns": 0}
        self.open_stalls: dict[str, int] = {}
        self.held: dict[str, int] = {}  # output -> bytes held for its readers
        self.open_windows: dict[str, int] = {}
        self.answers: list[tuple[str, int, bool]] = []
        self.closed: list[tuple[str, int]] = []

    def received(self) -> int:
        return self.received_count

    def counters(self) -> dict[str, int]:
        return dict(self.held_ns)

    def stalls(self) -> dict[str, int]:
        return dict(self.open_stalls)

    def held_bytes(self) -> dict[str, int]:
        return dict(self.held)

    def answer_stall(self, role: str, number: int, stall_on: bool) -> None:
        self.answers.append((role, number, stall_on))

    def windows(self) -> dict[str, int]:
        return dict(self.open_windows)

    def close_window(self, role: str, number: int) -> bool:
        self.closed.append((role, number))
        return True


class Subscriber:
    """One end of a socketpair as the connection the guard may cut; the other end sees the cut."""

    def __init__(self, peers: PeerTracker, role: str = "publish") -> None:
        self.ours, self.theirs = socket.socketpair()
        fd = self.ours.fileno()
        self.conn = Connection(role, fd, os.fstat(fd).st_ino, f"pid {os.getpid()} uid {os.getuid()}")
        peers.open[role][fd] = self.conn

    def was_cut(self) -> bool:
        """Shut down: the other end reads the end of the stream at once; a live pair has nothing to read."""
        self.theirs.setblocking(False)
        try:
            return self.theirs.recv(1) == b""
        except BlockingIOError:
            return False

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


@pytest.fixture
def rig() -> Iterator[Callable[..., tuple[Guard, PeerTracker, MadeUpOutputs]]]:
    """Builds a Guard over made-up readings; closes its context, eventfd and socketpairs afterwards."""
    made: list[tuple[zmq.Context, PeerTracker, MadeUpOutputs, Guard]] = []

    def build(view: MadeUpKernel, config: Config | None = None) -> tuple[Guard, PeerTracker, MadeUpOutputs]:
        context = zmq.Context()
        peers = PeerTracker(context, ("publish", "relay", "push"))
        outputs = MadeUpOutputs()
        guard = Guard(config or load({"slow_consumer_policy": "cut"}, {}), peers, outputs, view)
        made.append((context, peers, outputs, guard))
        return guard, peers, outputs

    yield build
    for context, peers, outputs, guard in made:
        guard.close()
        peers.close(timeout=0.1)
        os.close(outputs.stall_fd)
        context.term()


@pytest.fixture
def subscribers() -> Iterator[Callable[[PeerTracker], Subscriber]]:
    made: list[Subscriber] = []

    def make(peers: PeerTracker, role: str = "publish") -> Subscriber:
        made.append(Subscriber(peers, role))
        return made[-1]

    yield make
    for sub in made:
        sub.close()


def wait_for(what: Callable[[], bool], timeout: float = 2.0) -> None:
    """Let the guard's greenlets run until ``what`` holds; fail the test if it never does."""
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, f"timed out after {timeout}s"
        gevent.sleep(0.001)


def counted(guard: Guard) -> dict[tuple[str, str], int]:
    """The guard's cut counts that are not zero; every (socket, rule) is there from the start, at 0, so the
    metric names each one before any cut."""
    assert set(guard.cut) == {(role, rule) for role in ("publish", "relay") for rule in RULES}
    return {key: n for key, n in guard.cut.items() if n}


def test_each_rule_has_a_stable_one_word_name_and_its_prose():
    """Logged as "(rule=NAME)", shown in /peers and a label of fanoutd_slow_consumers_total: what scripts match."""
    assert RULES == (STOPPED, FURTHEST_BEHIND, TIMEOUT, WINDOW, PACE_BOUND, MAX_PENDING) == (
        "stopped", "furthest_behind", "timeout", "window", "pace_bound", "max_pending")
    assert Cut(conn(5), STOPPED, FULL).why == BECAUSE[STOPPED]
    assert Cut(conn(5), TIMEOUT, FULL, 12.34).why == "it read nothing for 12.3s"


def test_the_operators_table_of_rules_names_each_rule_once():
    """docs/concepts.md tells operators what each rule means: a rule added here must be explained there."""
    text = (Path(__file__).parent.parent / "docs" / "concepts.md").read_text()
    table = text[text.index("| rule | what happened |"):]
    table = table[:table.index("\n\n")]
    assert re.findall(r"^\| `(\w+)` \|", table, re.M) == list(RULES), table


def test_a_stall_wakes_the_guard_which_cuts_the_stopped_reader_and_holds_on_while_it_goes(rig, subscribers, caplog):
    crashed: list[gevent.Greenlet] = []
    view = MadeUpKernel({})
    guard, peers, outputs = rig(view)
    stopped, reading, other = subscribers(peers), subscribers(peers), subscribers(peers, "relay")
    view.looks = [{stopped.conn.fd: (FULL, 10), reading.conn.fd: (FULL, 10)},
                  {stopped.conn.fd: (FULL, 10), reading.conn.fd: (FULL - 100, 99)}, {}]
    outputs.open_stalls = {"publish": 3}
    guard.start(crashed.append)
    with caplog.at_level(logging.WARNING, "fanoutd.slow"):
        os.eventfd_write(outputs.stall_fd, 1)
        wait_for(lambda: bool(outputs.answers))
    assert outputs.answers == [("publish", 3, True)]
    assert stopped.was_cut() and not reading.was_cut() and not other.was_cut()
    assert stopped.conn.rule == STOPPED and stopped.conn.reason == f"slow consumer: {BECAUSE[STOPPED]}"
    assert counted(guard) == {("publish", STOPPED): 1}
    assert re.search(r"slow consumer on publish: disconnected pid \d+ uid \d+ \(rule=stopped\) because ",
                     caplog.text), caplog.text
    assert not crashed


def test_with_no_kernel_buffer_full_the_guard_cuts_nobody_and_the_stalled_output_holds_on(rig, subscribers):
    view = MadeUpKernel({})
    guard, peers, outputs = rig(view)
    behind = [subscribers(peers), subscribers(peers)]
    view.looks = [{sub.conn.fd: (BEHIND, 10) for sub in behind}]  # nobody acknowledges, but nobody is full
    outputs.open_stalls = {"publish": 4}
    guard.look()
    assert outputs.answers == [("publish", 4, True)]
    assert not any(sub.was_cut() for sub in behind) and counted(guard) == {}


def test_a_full_subscriber_that_cannot_be_cut_makes_its_output_send_lossy(rig, subscribers):
    """Its fd now names another socket (libzmq closed it and reused the number): the inode check spares that one."""
    view = MadeUpKernel({})
    guard, peers, outputs = rig(view)
    reused = subscribers(peers)
    reused.conn.inode += 1
    view.looks = [{reused.conn.fd: (FULL, 10)}]
    outputs.open_stalls = {"publish": 5, "relay": 2}
    guard.look()
    assert sorted(outputs.answers) == [("publish", 5, False), ("relay", 2, True)]
    assert not reused.was_cut() and counted(guard) == {} and not reused.conn.reason


def test_while_a_cut_connection_is_torn_down_the_guard_cuts_nobody_else_and_holds_on(rig, subscribers):
    """libzmq freeing the cut one's queue lets the stalled send through; the next look finds the next, if any."""
    view = MadeUpKernel({})
    guard, peers, outputs = rig(view)
    leaving, behind = subscribers(peers), subscribers(peers)
    leaving.conn.reason = "slow consumer: being cut"
    view.looks = [{leaving.conn.fd: (FULL, 10), behind.conn.fd: (FULL, 10)},
                  {leaving.conn.fd: (FULL, 10), behind.conn.fd: (FULL, 11)}]
    outputs.open_stalls = {"publish": 6}
    guard.look()
    assert outputs.answers == [("publish", 6, True)]
    assert not leaving.was_cut() and not behind.was_cut() and counted(guard) == {}


def test_after_a_lossy_send_the_fullest_is_cut_and_the_window_closes_once_it_is_gone_and_not_before(rig, subscribers):
    view = MadeUpKernel({})
    guard, peers, outputs = rig(view)
    fullest, less, elsewhere = subscribers(peers), subscribers(peers), subscribers(peers, "relay")
    state = {fullest.conn.fd: (BEHIND + 1, 10), less.conn.fd: (BEHIND, 10), elsewhere.conn.fd: (BEHIND * 2, 10)}
    view.looks = [state, {fd: (queued, acked + 1) for fd, (queued, acked) in state.items()}]
    outputs.open_windows = {"publish": 9}
    looking = gevent.spawn(guard.look)
    wait_for(lambda: bool(fullest.conn.reason))
    assert fullest.was_cut() and not less.was_cut() and not elsewhere.was_cut()
    assert fullest.conn.rule == WINDOW
    gevent.sleep(0.05)
    assert outputs.closed == [], "libzmq has not closed the cut connection yet: messages still skip it"
    del peers.open["publish"][fullest.conn.fd]  # what the monitor's disconnect event does
    looking.join(timeout=2.0)
    assert looking.successful(), looking.exception
    assert outputs.closed == [("publish", 9)]
    assert counted(guard) == {("publish", WINDOW): 1}


def test_the_sampler_pass_cuts_a_reader_that_read_nothing_for_the_timeout(rig, subscribers):
    view = MadeUpKernel({})
    guard, peers, outputs = rig(view, load({"slow_consumer_timeout": "0.05"}, {}))
    stuck, reading = subscribers(peers), subscribers(peers)
    view.looks = [{stuck.conn.fd: (BEHIND, 10), reading.conn.fd: (BEHIND, 10)},
                  {stuck.conn.fd: (BEHIND, 10), reading.conn.fd: (BEHIND, 11)}]
    guard.sample()
    time.sleep(0.06)
    guard.sample()
    assert stuck.was_cut() and not reading.was_cut()
    assert stuck.conn.rule == TIMEOUT
    assert re.fullmatch(r"slow consumer: it read nothing for 0\.\ds", stuck.conn.reason), stuck.conn.reason
    assert counted(guard) == {("publish", TIMEOUT): 1}


def test_a_reader_cut_again_after_reconnecting_is_counted_each_time_and_logged_as_a_summary_per_rule(
        rig, subscribers, caplog, monkeypatch):
    """Each cut counts; the log has one line per rule per REPORT_EVERY, and the next line of that rule says how
    many it held back, so a reader that reconnects and is cut again and again does not flood the log."""
    monkeypatch.setattr(slow, "REPORT_EVERY", 1.0)
    view = MadeUpKernel({})
    guard, peers, outputs = rig(view)

    def stall(number: int, acked_after: int) -> Subscriber:
        """The reader connects (again), fills its queue and stalls the output; acked_after 10: it read nothing."""
        sub = subscribers(peers)
        view.looks = [{sub.conn.fd: (FULL, 10)}, {sub.conn.fd: (FULL, acked_after)}]
        outputs.open_stalls = {"publish": number}
        guard.look()
        assert sub.was_cut()
        del peers.open["publish"][sub.conn.fd]  # libzmq closed it; its socket reconnects
        return sub

    with caplog.at_level(logging.WARNING, "fanoutd.slow"):
        stall(1, 10)
        stall(2, 10)  # within REPORT_EVERY of the first by the same rule: counted, not logged
        stall(3, 11)  # it read a little: not stopped, but still the one with the full queue
        time.sleep(1.05)
        stall(4, 10)
    assert counted(guard) == {("publish", STOPPED): 3, ("publish", FURTHEST_BEHIND): 1}
    lines = [record.getMessage() for record in caplog.records]
    assert [re.search(r"\(rule=(\w+)\)", line)[1] for line in lines] == [STOPPED, FURTHEST_BEHIND, STOPPED], lines
    assert not lines[0].endswith("report") and not lines[1].endswith("report"), lines
    assert lines[2].endswith("; 1 more disconnected by rule=stopped since its last report"), lines


def test_under_pace_the_guard_holds_on_for_a_full_reader_that_reads_and_cuts_a_stopped_one_only_after_a_while(
        rig, subscribers):
    """Under cut the reader would go as furthest behind at the first look; under pace nobody goes then, the
    answer is hold on, and the stopped one goes once it has been still for STOPPED_AFTER."""
    view = MadeUpKernel({})
    guard, peers, outputs = rig(view, load({"slow_consumer_policy": "pace"}, {}))
    reader, stopped = subscribers(peers), subscribers(peers)

    def stall(number: int, acked: int) -> None:
        view.looks = [{reader.conn.fd: (FULL + 500, acked), stopped.conn.fd: (FULL, 10)},
                      {reader.conn.fd: (FULL + 500, acked + 1), stopped.conn.fd: (FULL, 10)}]
        outputs.open_stalls = {"publish": number}
        guard.look()

    stall(1, 100)
    assert outputs.answers == [("publish", 1, True)]
    assert not reader.was_cut() and not stopped.was_cut() and counted(guard) == {}
    time.sleep(STOPPED_AFTER)
    stall(2, 200)
    assert outputs.answers[-1] == ("publish", 2, True)
    assert stopped.was_cut() and stopped.conn.rule == STOPPED and not reader.was_cut()
    assert counted(guard) == {("publish", STOPPED): 1}


def test_under_pace_the_guard_charges_the_outputs_held_time_to_the_furthest_behind(rig, subscribers):
    view = MadeUpKernel({})
    guard, peers, outputs = rig(view, load({"slow_consumer_policy": "pace", "slow_consumer_pace_share": "0.5",
                                            "slow_consumer_pace_window": "2"}, {}))
    slow_one, fast = subscribers(peers), subscribers(peers)
    for number in range(1, 4):
        outputs.held_ns["publish_held_ns"] = number * 600_000_000  # 0.6 s more held at each look
        view.looks = [{slow_one.conn.fd: (FULL + 500, number), fast.conn.fd: (FULL, number)},
                      {slow_one.conn.fd: (FULL + 500, number + 1), fast.conn.fd: (FULL, number + 9)}]
        outputs.open_stalls = {"publish": number}
        guard.look()
    # Charged 0.6 s at the second look, 1.2 s at the third: past half of 2 s.
    assert slow_one.was_cut() and slow_one.conn.rule == PACE_BOUND and not fast.was_cut()
    assert outputs.answers == [("publish", n, True) for n in (1, 2, 3)]
    assert counted(guard) == {("publish", PACE_BOUND): 1}


@pytest.mark.parametrize("policy", ["pace", "cut"])
def test_an_output_past_max_pending_has_its_furthest_behind_cut_by_that_rule_even_while_it_reads(
        rig, subscribers, policy):
    view = MadeUpKernel({})
    guard, peers, outputs = rig(view, load({"slow_consumer_policy": policy, "slow_consumer_max_pending": "4MiB"}, {}))
    behind, reading = subscribers(peers), subscribers(peers)
    view.looks = [{behind.conn.fd: (FULL + 500, 1), reading.conn.fd: (FULL, 1)},
                  {behind.conn.fd: (FULL + 500, 2), reading.conn.fd: (FULL, 2)}]  # both read
    outputs.held = {"publish": 4 * MIB}  # at the bound, not past it: under pace, hold on; nobody is cut
    outputs.open_stalls = {"publish": 1}
    if policy == "pace":
        guard.look()
        assert outputs.answers == [("publish", 1, True)] and counted(guard) == {}
    outputs.held = {"publish": 4 * MIB + 1}
    outputs.open_stalls = {"publish": 2}
    guard.look()
    assert behind.was_cut() and behind.conn.rule == MAX_PENDING and not reading.was_cut()
    assert outputs.answers[-1] == ("publish", 2, True), "hold on while the cut connection goes"
    assert counted(guard) == {("publish", MAX_PENDING): 1}


def test_the_sampler_cuts_past_max_pending_without_a_stall(rig, subscribers):
    """With slow_consumer_stall = 0 (cut) the loop never stalls: the once-a-second pass enforces the bound."""
    view = MadeUpKernel({})
    guard, peers, outputs = rig(view, load({"slow_consumer_policy": "cut", "slow_consumer_stall": "0",
                                            "slow_consumer_max_pending": "4MiB"}, {}))
    behind, reading = subscribers(peers), subscribers(peers)
    view.looks = [{behind.conn.fd: (FULL + 500, 1), reading.conn.fd: (BEHIND, 1)}]
    guard.sample()
    assert counted(guard) == {}, "within the bound: nobody"
    outputs.held = {"publish": 5 * MIB}
    guard.sample()
    assert behind.was_cut() and behind.conn.rule == MAX_PENDING and not reading.was_cut()
