"""The ``fanout`` tool as a user runs it: a subprocess, against stand-in sockets.

``python -m fanoutd_client.tool`` is the same ``main`` the installed
``fanout`` script calls; one test runs the installed script itself.  The
stand-ins are those of test_clients (a continuously read bound SUB as the
collector, a bound XPUB as the publisher so a test can wait for the tool's
subscription, a bound PUSH).  Every subprocess has a timeout and is killed
at teardown if still running.
"""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from fanoutd_client import wire
from fanoutd_client.tool import printable
from test_clients import CLIENTS_DIR, Collector, Make, await_subscription, bound, collector, collectors, nowhere

__all__ = ["collector", "collectors"]  # fixtures shared with test_clients

pytestmark = pytest.mark.timeout(30)
RUN_TIMEOUT = 20


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CLIENTS_DIR), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fanoutd_client.tool", *args]


def fanout(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(command(*args), check=False, input=stdin, capture_output=True, env=tool_env(env),
                          timeout=RUN_TIMEOUT)


@pytest.fixture
def start() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """start(*args, env=None) -> the tool running in the background; killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(command(*args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=tool_env(env))
        procs.append(proc)
        return proc

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def one_line(stderr: bytes) -> str:
    """The tool's stderr must be exactly one line and never a traceback."""
    text = stderr.decode()
    assert "Traceback" not in text, text
    assert text.endswith("\n") and text.count("\n") == 1, repr(text)
    return text


# --- pub ----------------------------------------------------------------------------------------


def test_pub_waits_for_the_collector_then_sends(collector: Collector):
    result = fanout("pub", "-e", collector.endpoint, "orders", '{"id": 1}')
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert collector.recv() == [b'orders {"id": 1}']


def test_pub_sends_each_stdin_line(collector: Collector):
    result = fanout("pub", "-e", collector.endpoint, "orders", stdin=b"one\ntwo\r\n\nthree")
    assert result.returncode == 0, result.stderr
    assert [collector.recv() for _ in range(4)] == [[b"orders one"], [b"orders two"], [b"orders "],
                                                     [b"orders three"]]


def test_pub_loses_no_stdin_line_while_the_collector_stalls(collectors):
    stalled = collectors(hold=True)  # subscribes, then reads nothing until released
    lines = 20_000  # 1 KB each: twice the 10 000 message HWM; a dropping producer loses half
    release = threading.Timer(1.0, stalled.reading.set)
    release.start()
    try:
        result = fanout("pub", "-e", stalled.endpoint, "t", stdin=b"".join(b"%05d%s\n" % (i, b"x" * 994)
                                                                         for i in range(lines)))
    finally:
        release.cancel()
    assert result.returncode == 0, result.stderr
    received = [stalled.recv() for _ in range(lines)]
    assert [int(m[0][2:7]) for m in received] == list(range(lines))


def test_pub_count(collector: Collector):
    assert fanout("pub", "--count", "3", "-e", collector.endpoint, "t", "m").returncode == 0
    assert fanout("pub", "--count", "2", "-e", collector.endpoint, "t", stdin=b"1\n2\n3\n").returncode == 0
    assert [collector.recv() for _ in range(5)] == [[b"t m"]] * 3 + [[b"t 1"], [b"t 2"]]
    with pytest.raises(pytest.fail.Exception):
        collector.recv(timeout=0.3)


def test_pub_json_validates(collector: Collector):
    ep = collector.endpoint
    assert fanout("pub", "--json", "-e", ep, "t", '{"ok": true}').returncode == 0
    assert collector.recv() == [b't {"ok": true}']
    bad = fanout("pub", "--json", "-e", ep, "t", "{nope")
    assert bad.returncode == 2 and "not valid JSON" in one_line(bad.stderr)
    lines = fanout("pub", "--json", "-e", ep, "t", stdin=b'[1]\n\n{oops\n[3]\n')
    assert lines.returncode == 1 and "stdin line 3" in one_line(lines.stderr)
    assert collector.recv() == [b"t [1]"]  # blank line skipped, nothing after the bad line


def test_pub_endpoint_from_the_environment(collector: Collector):
    result = fanout("pub", "t", "env", env={"FANOUT_COLLECTOR": collector.endpoint})
    assert result.returncode == 0, result.stderr
    assert collector.recv() == [b"t env"]


def test_pub_fails_clearly_when_no_collector_answers():
    result = fanout("pub", "-e", nowhere(), "--wait", "0.3", "t", "m")
    assert result.returncode == 1
    assert "collector not ready within 0.3s" in one_line(result.stderr)


# --- sub ----------------------------------------------------------------------------------------


def test_sub_prints_topic_payload_lines(sockets: Make, start):
    pub, ep = bound(sockets, zmq.XPUB)
    proc = start("sub", "-e", ep, "--count", "4", "orders")
    await_subscription(pub, b"orders")
    pub.send(b"orders hello")
    pub.send(b"other x")
    pub.send(b"orders \xff\x00bin\nnext\tline")
    pub.send("orders caf\u00e9 \\ ok".encode())
    pub.send_multipart([b"orders", b"a", b"b"])
    out, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert (proc.returncode, err) == (0, b"")
    assert out.decode().splitlines() == ["orders hello", "orders \\xff\\x00bin\\nnext\tline",
                                         "orders caf\u00e9 \\ ok", "orders a b"]


def stamp(seq: int, stream: int = 1, epoch: int = 5) -> bytes:
    return wire.stamp_trailer(epoch, stream, seq, len(b"orders "))


def test_sub_stamped_strips_stamps_and_reports_each_gap(sockets: Make, start):
    pub, ep = bound(sockets, zmq.XPUB)
    proc = start("sub", "-e", ep, "--count", "4", "--stamped", "orders")
    await_subscription(pub, b"orders")
    for n, seq in enumerate((1, 2, 6)):
        pub.send_multipart([b"orders %d" % n, stamp(seq)])
    pub.send_multipart([b"orders 3", stamp(1, epoch=6)])
    out, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, err
    assert out.decode().splitlines() == ["orders 0", "orders 1", "orders 2", "orders 3"]
    assert err.decode().splitlines() == [
        "fanout sub: missed 3 message(s) of stream b'orders ' before this one",
        "fanout sub: the broker restarted (not a gap: nothing was published while it was down)",
        "fanout sub: lost 3, restarts 1, resets 0, untracked 0"]


def test_sub_stamped_reads_fanout_stamped_not_fanout_publish(sockets: Make, start):
    """With --stamped and no -e, the endpoint comes from $FANOUT_STAMPED (the stamped output's own),
    never from $FANOUT_PUBLISH."""
    pub, ep = bound(sockets, zmq.XPUB)
    plain, plain_ep = bound(sockets, zmq.XPUB)
    proc = start("sub", "--count", "1", "--stamped", "orders",
                 env={"FANOUT_STAMPED": ep, "FANOUT_PUBLISH": plain_ep})
    await_subscription(pub, b"orders")
    pub.send_multipart([b"orders 0", stamp(1)])
    out, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert (proc.returncode, out.decode()) == (0, "orders 0\n"), err
    assert not plain.poll(0), "the plain publish endpoint got a subscription"


def test_sub_stamped_refuses_an_unstamped_endpoint(sockets: Make, start):
    pub, ep = bound(sockets, zmq.XPUB)
    proc = start("sub", "-e", ep, "--stamped")
    await_subscription(pub, b"")
    pub.send_multipart([b"orders", b"12345678"])
    _, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 1
    assert "fanout sub: the last frame does not start with fanoutd's trailer magic: is " in err.decode()
    assert "fanoutd's stamped output?" in err.decode()


def test_sub_raw_writes_bytes_unchanged(sockets: Make, start):
    pub, ep = bound(sockets, zmq.XPUB)
    proc = start("sub", "-e", ep, "--count", "1", "--raw")
    await_subscription(pub, b"")
    pub.send(b"t \xff\x00\nx")
    out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    assert (proc.returncode, out) == (0, b"t \xff\x00\nx\n")


def test_sub_separates_frames_like_the_c_and_node_examples(sockets: Make, start):
    """Frames are shown separated (default a space, as clients/c and clients/node print them), never run together."""
    pub, ep = bound(sockets, zmq.XPUB, xpub_verbose=1)  # verbose: one subscription message per tool
    default = start("sub", "-e", ep, "--count", "2")
    piped = start("sub", "-e", ep, "--count", "2", "--sep", "|")
    together = start("sub", "-e", ep, "--count", "2", "--sep", "")
    for _ in range(3):
        await_subscription(pub, b"")
    pub.send_multipart([b"orders", b"part 1", b"part\n2"])
    pub.send(b"orders single frame")
    outputs = [proc.communicate(timeout=RUN_TIMEOUT) for proc in (default, piped, together)]
    assert [proc.returncode for proc in (default, piped, together)] == [0, 0, 0]
    assert [out for out, _ in outputs] == [b"orders part 1 part\\n2\norders single frame\n",
                                           b"orders|part 1|part\\n2\norders single frame\n",
                                           b"orderspart 1part\\n2\norders single frame\n"]


def test_sub_raw_with_a_separator_writes_each_frame_as_received(sockets: Make, start):
    pub, ep = bound(sockets, zmq.XPUB)
    proc = start("sub", "-e", ep, "--count", "1", "--raw", "--sep", "\t")
    await_subscription(pub, b"")
    pub.send_multipart([b"t", b"\xff\x00", b"\n"])
    out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    assert (proc.returncode, out) == (0, b"t\t\xff\x00\t\n\n")


def test_sub_times_out_with_status_1_when_nothing_came():
    result = fanout("sub", "-e", nowhere(), "--timeout", "0.3")
    assert result.returncode == 1 and result.stdout == b""
    assert "no messages within 0.3s" in one_line(result.stderr)


def test_sub_idle_timeout_after_messages_is_success(sockets: Make, start):
    (pub1, ep1), (pub2, ep2) = bound(sockets, zmq.XPUB), bound(sockets, zmq.XPUB)
    proc = start("sub", "--timeout", "0.5", env={"FANOUT_PUBLISH": f"{ep1}, {ep2}"})
    await_subscription(pub1, b"")
    await_subscription(pub2, b"")
    pub1.send(b"a 1")
    pub2.send(b"b 2")
    out, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert (proc.returncode, err) == (0, b"")
    assert sorted(out.decode().splitlines()) == ["a 1", "b 2"]


# --- pull ---------------------------------------------------------------------------------------


def test_pull_prints_payloads(sockets: Make, start):
    push, ep = bound(sockets, zmq.PUSH)
    proc = start("pull", "-e", ep, "--count", "2")
    push.send(b"plain text")  # waits (SNDTIMEO-bounded) for the tool to connect
    push.send_multipart([b"\x01", b"two"])
    out, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert (proc.returncode, out, err) == (0, b"plain text\n\\x01 two\n", b"")


def test_pull_sep_and_raw(sockets: Make, start):
    push, ep = bound(sockets, zmq.PUSH)
    sep = start("pull", "-e", ep, "--count", "1", "--sep", ",")
    push.send_multipart([b"a", b"b\x00"])
    out, err = sep.communicate(timeout=RUN_TIMEOUT)
    assert (sep.returncode, out, err) == (0, b"a,b\\x00\n", b"")
    raw = start("pull", "-e", ep, "--count", "1", "--raw", "--sep", "")
    push.send_multipart([b"a", b"b\x00"])
    out, err = raw.communicate(timeout=RUN_TIMEOUT)
    assert (raw.returncode, out, err) == (0, b"ab\x00\n", b"")


def test_pull_json_prints_compact_and_skips_the_rest(sockets: Make, start):
    push, ep = bound(sockets, zmq.PUSH)
    proc = start("pull", "-e", ep, "--count", "2", "--json")
    for payload in [b'{"a": 1}', b"not json", b'[1,\n 2, "\xc3\xa9"]']:
        push.send(payload)
    out, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0
    assert out.decode() == '{"a":1}\n[1,2,"\u00e9"]\n'
    assert "not JSON" in one_line(err)


def test_pull_times_out_with_status_1():
    result = fanout("pull", "--timeout", "0.2", env={"FANOUT_PUSH": nowhere()})
    assert result.returncode == 1 and "no messages within 0.2s" in one_line(result.stderr)


# --- arguments, signals, entry points -----------------------------------------------------------


@pytest.mark.parametrize(("args", "env", "says"), [
    ([], {}, "required"),
    (["bogus"], {}, "invalid choice"),
    (["pub"], {}, "TOPIC"),
    (["pub", "has space", "m"], {}, "contains a space"),
    (["pub", "--count", "0", "t", "m"], {}, "at least 1"),
    (["pub", "--wait", "-1", "t", "m"], {}, ">= 0"),
    (["pub", "-e", "tcp://*:5560", "t", "m"], {}, "for binding"),
    (["sub", "--timeout", "0"], {}, "> 0"),
    (["sub", "--timeout", "nan"], {}, "> 0"),
    (["sub", "--count", "x"], {}, "not a whole number"),
    (["pull", "--json", "--raw"], {}, "not allowed"),
    (["pull"], {"FANOUT_PUSH": "localhost:5562"}, "FANOUT_PUSH: bad endpoint"),
    (["pull", "--json", "--sep", ","], {}, "--sep does not apply to --json"),
    (["sub", "--sep"], {}, "expected one argument"),
    (["sub", "--stamped", "--last-value"], {}, "--last-value needs --stamped and --repair"),
])
def test_bad_arguments_give_one_line_and_status_2(args, env, says):
    result = fanout(*args, env=env)
    assert result.returncode == 2 and result.stdout == b""
    assert says in one_line(result.stderr)


def test_ctrl_c_exits_quietly_with_130(sockets: Make, start):
    pub, pub_ep = bound(sockets, zmq.XPUB)
    push, push_ep = bound(sockets, zmq.PUSH)
    sub = start("sub", "-e", pub_ep)
    pull = start("pull", "-e", push_ep)
    await_subscription(pub, b"")  # the tool is past start-up, inside its receive loop
    push.send(b"first")
    assert pull.stdout is not None and pull.stdout.readline() == b"first\n"
    for proc in (sub, pull):
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=RUN_TIMEOUT)
        assert (proc.returncode, err) == (130, b"")


def test_a_closed_stdout_ends_sub_quietly(sockets: Make, start):
    pub, ep = bound(sockets, zmq.XPUB)
    proc = start("sub", "-e", ep)
    await_subscription(pub, b"")
    pub.send(b"t 1")
    assert proc.stdout is not None and proc.stdout.readline() == b"t 1\n"
    proc.stdout.close()  # like `fanout sub | head -1` once head has its line
    pub.send(b"t 2")
    assert proc.wait(timeout=RUN_TIMEOUT) == 141
    assert proc.stderr is not None and proc.stderr.read() == b""


def test_help_and_python_dash_m():
    result = fanout("--help")
    assert result.returncode == 0 and b"pub" in result.stdout and b"pull" in result.stdout
    package = subprocess.run([sys.executable, "-m", "fanoutd_client", "sub", "--help"], check=False,
                             capture_output=True, env=tool_env(), timeout=RUN_TIMEOUT)
    assert package.returncode == 0 and b"--timeout" in package.stdout and b"--sep" in package.stdout


def test_help_lists_the_exit_statuses_and_ends_with_where_the_docs_are():
    text = fanout("--help").stdout.decode()
    epilog = text[text.index("exit status:"):]
    for status, says in [(0, "did its job"), (1, "collector never"), (1, "refused locally"), (2, "bad arguments")]:
        assert f"\n  {status} " in epilog and says in epilog.replace("\n      ", " ").replace("  ", " ")
    assert text.rstrip().splitlines()[-1] == (
        "Docs: README.md ('Using it') and docs/clients.md; wire format: clients/README.md")


def test_version_prints_the_installed_version():
    result = fanout("--version")
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout.decode() == f"fanout {importlib.metadata.version('fanoutd')}\n"


def test_pub_with_curve_keys_says_the_key_may_be_refused(tmp_path: Path):
    """A refused CURVE handshake is silence to the producer: the error names the likely cause."""
    import zmq.auth

    for name in ("server", "me"):
        zmq.auth.create_certificates(tmp_path, name)
    result = fanout("pub", "-e", nowhere(), "--wait", "0.3", "--keys", str(tmp_path / "me.key_secret"),
                    "--server-key", str(tmp_path / "server.key"), "t", "m")
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "no answer: the collector may have refused this key" in line and "is fanoutd running" not in line


def test_the_installed_fanout_script(collector: Collector):
    script = Path(sys.executable).parent / "fanout"
    assert script.exists(), f"{script} is missing: install the package (pip install -e .)"
    result = subprocess.run([str(script), "pub", "-e", collector.endpoint, "t", "script"], check=False,
                            capture_output=True, env=tool_env(), timeout=RUN_TIMEOUT)
    assert (result.returncode, result.stderr) == (0, b"")
    assert collector.recv() == [b"t script"]


# --- output escaping ----------------------------------------------------------------------------


@given(st.binary())
def test_printable_is_always_one_line_of_utf8(data: bytes):
    text = printable(data).decode("utf-8")
    assert len(text.splitlines()) <= 1  # splitlines knows every line break: \n \r \x85 \u2028 ...
    assert not any((ord(c) < 0x20 and c != "\t") or 0x7F <= ord(c) < 0xA0 for c in text)


def test_printable_examples():
    assert printable(b"a\xff\x00\x1b[31m\n\t\\") == b"a\\xff\\x00\\x1b[31m\\n\t\\"
    assert printable("\u0085 \u2028 \u00e9".encode()) == b"\\u0085 \\u2028 \xc3\xa9"


@given(st.text(alphabet=st.characters(exclude_categories=["Cc", "Cs", "Zl", "Zp"])))
def test_printable_leaves_ordinary_text_alone(text: str):
    assert printable(text.encode()) == text.encode()
