"""The thin clients and the `fanout` tool against the real daemon: the README's promise, end to end."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
import zmq.auth

from conftest import free_port, settle
from fanoutd_client import Producer, Puller, Subscriber, aio, load_curve_keys


def test_producer_subscriber_puller_round_trip(start_daemon):
    d = start_daemon()
    with Subscriber(d.publish, topics=["orders"]) as sub, Puller(d.push) as pull, \
            Producer(d.collector) as prod:
        prod.wait_ready(5)
        deadline = time.monotonic() + 10
        while True:  # the subscriber's own subscription needs a moment to reach the daemon
            prod.send("orders", b"warm")
            try:
                sub.recv(timeout=0.1)
                break
            except TimeoutError:
                assert time.monotonic() < deadline
        while True:
            try:
                sub.recv(timeout=0.3)
            except TimeoutError:
                break
        while True:
            try:
                pull.recv(timeout=0.3)
            except TimeoutError:
                break
        prod.send("orders", b"hello")
        prod.send_json("orders", {"id": 7})
        prod.send_multipart("orders", b"a", b"b")
        prod.send("prices", b"not for this subscriber")
        assert sub.recv(timeout=5) == (b"orders", b"hello")
        topic, payload = sub.recv(timeout=5)
        assert topic == b"orders" and json.loads(payload) == {"id": 7}
        assert sub.recv_multipart(timeout=5) == [b"orders", b"a", b"b"]
        with pytest.raises(TimeoutError):
            sub.recv(timeout=0.3)
        assert pull.recv(timeout=5) == b"hello"
        assert pull.recv_json(timeout=5) == {"id": 7}
        assert pull.recv_multipart(timeout=5) == [b"a", b"b"]
        assert pull.recv(timeout=5) == b"not for this subscriber"


def test_producer_wait_ready_solves_the_slow_joiner(start_daemon):
    """Without the wait, the first messages of a fresh PUB vanish (libzmq #2267); with it, none do."""
    d = start_daemon()
    with Puller(d.push) as pull:
        settle(d, "push", 1)  # the puller side is not what this test is about
        for _ in range(5):
            with Producer(d.collector) as prod:
                prod.wait_ready(5)
                for i in range(100):
                    prod.send("t", b"%d" % i)
            got = [pull.recv(timeout=5) for _ in range(100)]
            assert got == [b"%d" % i for i in range(100)]


def run_tool(*args: str, input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fanoutd_client.tool", *args], input=input, capture_output=True,
                          text=True, timeout=timeout)


def test_fanout_tool_pub_sub_pull_through_the_daemon(start_daemon):
    d = start_daemon()
    sub = subprocess.Popen([sys.executable, "-m", "fanoutd_client.tool", "sub", "-e", d.publish, "--count", "3",
                            "--timeout", "20", "orders"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pull = subprocess.Popen([sys.executable, "-m", "fanoutd_client.tool", "pull", "-e", d.push, "--count", "3",
                             "--timeout", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        settle(d, "publish", 1, timeout=15)  # the subscription follows the handshake on the same connection
        settle(d, "push", 1, timeout=15)
        r = run_tool("pub", "-e", d.collector, "orders", input="one\ntwo\nthree\n")
        assert r.returncode == 0, r.stderr
        out, err = sub.communicate(timeout=30)
        assert sub.returncode == 0, err
        assert out.splitlines() == ["orders one", "orders two", "orders three"]
        out, err = pull.communicate(timeout=30)
        assert pull.returncode == 0, err
        assert out.splitlines() == ["one", "two", "three"]
    finally:
        for p in (sub, pull):
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)


def test_clients_and_tool_with_curve(start_daemon, tmp_path):
    for name in ("server", "me"):
        zmq.auth.create_certificates(tmp_path, name)
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "me.key").write_bytes((tmp_path / "me.key").read_bytes())
    d = start_daemon("--curve-secret-key", str(tmp_path / "server.key_secret"),
                     "--collector-curve", "--collector-clients", str(tmp_path / "allowed"),
                     "--push-curve", "--push-clients", str(tmp_path / "allowed"))
    keys = load_curve_keys(str(tmp_path / "me.key_secret"), str(tmp_path / "server.key"))
    with Puller(d.push, **keys) as pull:
        r = run_tool("pub", "-e", d.collector, "--keys", str(tmp_path / "me.key_secret"),
                     "--server-key", str(tmp_path / "server.key"), "--count", "50", "t", "secret")
        assert r.returncode == 0, r.stderr
        assert pull.recv(timeout=10) == b"secret"

        async def asyncio_producer() -> None:  # the asyncio client takes the same keys
            async with asyncio.timeout(20), aio.Producer(d.collector, **keys) as producer:
                await producer.wait_ready(10)
                await producer.send("t", "asyncio secret")
        asyncio.run(asyncio_producer())
        while (payload := pull.recv(timeout=10)) == b"secret":  # the rest of the tool's 50
            pass
        assert payload == b"asyncio secret"
    r = run_tool("pub", "-e", d.collector, "--wait", "1", "t", "plain")
    assert r.returncode == 1 and "not ready" in r.stderr
    r = run_tool("pub", "-e", d.collector, "--keys", str(tmp_path / "me.key_secret"), "t", "x")
    assert r.returncode == 2 and "--keys and --server-key go together" in r.stderr
    zmq.auth.create_certificates(tmp_path, "stranger")  # a valid key pair the daemon does not admit
    r = run_tool("pub", "-e", d.collector, "--wait", "1", "--keys", str(tmp_path / "stranger.key_secret"),
                 "--server-key", str(tmp_path / "server.key"), "t", "refused")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("fanout pub: no answer: the collector may have refused this key"), r.stderr


@pytest.mark.parametrize("flavour", ["blocking", "asyncio"])
def test_a_producer_loses_nothing_unseen_across_a_broker_restart(start_daemon, flavour):
    """What a producer sends while the broker restarts is held (the stopping broker said it drains) and goes
    out once a collector is back; past its high-water mark a message is refused and counted in ``dropped``,
    never lost unseen. Each number comes from its own counter: the producer's attempts and drops, the new
    broker's received messages."""
    d = start_daemon("--push", "", restartable=True)
    n, hwm = 3000, 1000
    producer: Producer | aio.Producer
    if flavour == "blocking":
        producer = Producer(d.collector, hwm=hwm, wait=5)
    else:
        producer = aio.Producer(d.collector, hwm=hwm)
        asyncio.run(producer.wait_ready(5))
    try:
        assert d.stop() == 0
        for i in range(n):
            if flavour == "blocking":
                producer.send("t", b"%d" % i)
            else:
                asyncio.run(producer.send("t", b"%d" % i))
        assert 0 < producer.dropped < n
        again = start_daemon("--push", "", ports=d.ports)
        if flavour == "blocking":  # held messages go out once a collector is back
            producer.wait_ready(5)
        else:
            asyncio.run(producer.wait_ready(5))
        assert again.wait_value("fanoutd_received_messages_total", n - producer.dropped) == n - producer.dropped
        time.sleep(0.5)  # the quiet IS the test: nothing beyond what was held arrives later
        assert again.value("fanoutd_received_messages_total") == n - producer.dropped
    finally:
        producer.close()


def test_a_puller_knows_when_its_connection_is_up(start_daemon):
    """Puller.wait_ready() (a monitor on the client's own handshake) is readiness for the PUSH output: a message
    sent right after it returns reaches that puller, every time, with no sleep, and nothing is counted as
    pushed to no puller."""
    d = start_daemon()
    with Producer(d.collector) as prod:
        prod.wait_ready(5)
        for i in range(30):
            with Puller(d.push) as pull:
                pull.wait_ready(5)
                prod.send("jobs", b"%d" % i)
                assert pull.recv(timeout=5) == b"%d" % i
            settle(d, "push", 0)
    assert d.wait_value("fanoutd_dropped_messages_total", 0, output="push", reason="no_puller") == 0


def test_puller_wait_ready_times_out_naming_the_endpoint_and_keeps_what_arrived_meanwhile(start_daemon):
    """With one endpoint up and one down, wait_ready() times out; messages that arrived from the live one
    while it waited are kept for the next receives, in order."""
    d = start_daemon()
    dead = f"tcp://127.0.0.1:{free_port()}"
    with Producer(d.collector) as prod, Puller([d.push, dead]) as pull:
        prod.wait_ready(5)
        settle(d, "push", 1)
        for i in range(3):
            prod.send("jobs", b"%d" % i)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="no connection to the push output"):
            pull.wait_ready(0.5)
        assert 0.45 < time.monotonic() - t0 < 3
        assert [pull.recv(timeout=5) for _ in range(3)] == [b"0", b"1", b"2"]


def test_an_asyncio_puller_waits_for_its_connection(start_daemon):
    d = start_daemon()

    async def main() -> bytes:
        async with aio.Producer(d.collector) as prod, aio.Puller(d.push) as pull:
            await prod.wait_ready(5)
            await pull.wait_ready(5)
            await prod.send("jobs", b"async")
            return await pull.recv(timeout=5)

    assert asyncio.run(main()) == b"async"
