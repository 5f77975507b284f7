"""``fanout``: publish to, subscribe to and pull from fanoutd from a shell.

    fanout pub  [-e EP]... [--wait S] [--count N] [--json] TOPIC [MESSAGE]
    fanout sub  [-e EP]... [--count N] [--timeout S] [--sep SEP] [--raw] [--stamped [--repair EP [--last-value]]] [TOPIC...]
    fanout pull [-e EP]... [--count N] [--timeout S] [--sep SEP] [--json | --raw]
    fanout --version

Exit statuses are listed in :data:`EPILOG` (``fanout --help``) and
docs/clients.md.  Every error is one line on stderr, never a traceback: this is a
tool for shell scripts, whose authors need the status and a reason, not
our stack.

Output is one line per message, its frames separated by a space as the C
and Node examples print them (``--sep`` to choose), escaped so that a
message never spans lines (``--raw``: bytes unchanged); see :mod:`._lines`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from typing import NoReturn

import zmq

from . import __version__
from ._base import (DEFAULT_COLLECTOR, DEFAULT_PUBLISH, DEFAULT_PUSH, DEFAULT_STAMPED, CurveKeys,
                    load_curve_keys, normalize_endpoints, validate_endpoint)
from ._lines import emit, frames_to_line, printable
from ._stamps import NotStamped
from .consumers import Puller, Subscriber
from .producer import MessageTooLarge, Producer, single_frame_topic
from .repair import Gone

__all__ = ["build_parser", "main", "printable"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141
PUB_LINGER = 5.0  # seconds the tool waits on exit to flush what it sent
PUB_SEND_TIMEOUT = 10.0  # seconds a full collector queue may hold up the next line

RAW_HELP = ("write the frames' bytes exactly as received, unescaped (a frame may then contain newlines; "
            "for piping binary payloads, see --sep)")

EPILOG = """\
exit status:
  0    did its job: pub sent every message; sub/pull printed --count messages,
       or at least one before --timeout
  1    it could not: nothing arrived within --timeout, the collector never
       answered (pub --wait), the collector did not take the last messages
       before exit (pub: some may be lost), a message was refused locally (over the
       broker's max_message_size; with --json, a stdin line that is not JSON),
       or another error at run time
  2    bad arguments (the reason is one line on stderr, as for 1)
  130  interrupted (Ctrl-C)
  141  stdout was closed (e.g. `fanout sub | head -1`)

Docs: README.md ('Using it') and docs/clients.md; wire format: clients/README.md
"""


class UsageError(Exception):
    """Bad arguments: exit 2."""


class Failure(Exception):
    """The command ran but could not do its job: exit 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(minimum_exclusive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not math.isfinite(value) or value < 0 or (minimum_exclusive and value == 0):
            raise argparse.ArgumentTypeError(f"must be {'>' if minimum_exclusive else '>='} 0, not {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fanout", description="Publish to, subscribe to and pull from fanoutd.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{pub,sub,pull}")

    def command(name: str, help: str, env: str, default: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("-e", "--endpoint", action="append", metavar="EP",
                         help=f"endpoint to connect to, repeatable (default: ${env} "
                              f"(comma-separated) or {default})")
        sub.add_argument("--keys", metavar="FILE",
                         help="your CURVE secret certificate (NAME.key_secret from `fanoutd keygen`)")
        sub.add_argument("--server-key", metavar="FILE", help="the daemon's CURVE public certificate (NAME.key)")
        sub.set_defaults(env=env, default_endpoint=default)
        return sub

    pub = command("pub", "send messages to the collector (waits until it is ready)",
                  "FANOUT_COLLECTOR", DEFAULT_COLLECTOR)
    pub.add_argument("--wait", type=_seconds(False), default=5.0, metavar="S",
                     help="seconds to wait for the collector's subscription (default 5; 0: don't wait, "
                          "and early messages may be lost)")
    pub.add_argument("--count", type=_count, metavar="N",
                     help="send MESSAGE N times (default 1); with stdin, stop after N lines")
    pub.add_argument("--json", action="store_true",
                     help="refuse messages that are not JSON (stdin: blank lines skipped)")
    pub.add_argument("topic", metavar="TOPIC", help="topic (no spaces)")
    pub.add_argument("message", metavar="MESSAGE", nargs="?",
                     help="payload; if omitted each line of stdin is one message")
    pub.set_defaults(handler=_pub)

    sub = command("sub", "print `topic payload` lines from the publisher", "FANOUT_PUBLISH", DEFAULT_PUBLISH)
    _receiver_options(sub)
    sub.add_argument("--raw", action="store_true", help=RAW_HELP)
    sub.add_argument("--stamped", action="store_true",
                     help="read fanoutd's stamped output (default endpoint: $FANOUT_STAMPED or "
                          f"{DEFAULT_STAMPED}): strip each message's sequence stamp and report on stderr every "
                          "gap (messages missed), broker restart and reset, with totals at exit")
    sub.add_argument("--repair", metavar="EP",
                     help="with --stamped: fill every gap from fanoutd's repair endpoint EP (default: "
                          "$FANOUT_REPAIR; none: report gaps only), and report on stderr one line for what each gap "
                          "got back and one for what is gone")
    sub.add_argument("--last-value", action="store_true",
                     help="with --repair: first print the latest message of each stream under the topics, then "
                          "live ones from the next on (no gap, no duplicate)")
    sub.add_argument("topics", metavar="TOPIC", nargs="*", help="topic prefixes (default: everything)")
    sub.set_defaults(handler=_sub)

    pull = command("pull", "print payload lines pulled from the push socket", "FANOUT_PUSH", DEFAULT_PUSH)
    _receiver_options(pull)
    shape = pull.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true",
                       help="print payloads as compact JSON; skip (and report) any that are not")
    shape.add_argument("--raw", action="store_true", help=RAW_HELP)
    pull.set_defaults(handler=_pull)
    return parser


def _receiver_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=_count, metavar="N", help="exit after N messages")
    parser.add_argument("--timeout", type=_seconds(True), metavar="S",
                        help="exit after S idle seconds: status 0 if anything arrived, else 1")
    parser.add_argument("--sep", metavar="SEP",
                        help="written between a message's frames (default: a space, as the C and Node "
                             "examples print them; '' runs them together; a tab: --sep $'\\t')")


def _curve(args: argparse.Namespace) -> CurveKeys:
    """Client CURVE keyword arguments from --keys/--server-key (both or neither)."""
    if not args.keys and not args.server_key:
        return {}
    if not (args.keys and args.server_key):
        raise UsageError(f"fanout {args.command}: --keys and --server-key go together")
    try:
        return load_curve_keys(args.keys, args.server_key)
    except (OSError, ValueError) as exc:
        raise UsageError(f"fanout {args.command}: cannot load CURVE keys: {exc}") from None


def _endpoints(args: argparse.Namespace) -> tuple[str, ...]:
    source = "--endpoint"
    items = args.endpoint
    if not items:
        env = os.environ.get(args.env, "").strip()
        source, items = (args.env, [e.strip() for e in env.split(",") if e.strip()]) if env else \
            ("default", [args.default_endpoint])
    try:
        return normalize_endpoints(items)
    except ValueError as exc:
        raise UsageError(f"fanout {args.command}: {source}: {exc}") from None


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        return False
    return True


def _stdin_lines(limit: int | None) -> Iterator[bytes]:
    lines = (line.rstrip(b"\n").removesuffix(b"\r") for line in sys.stdin.buffer)
    return itertools.islice(lines, limit)


def _pub(args: argparse.Namespace) -> int:
    try:
        topic = single_frame_topic(os.fsencode(args.topic))  # fsencode: argv bytes as given
    except ValueError as exc:
        raise UsageError(f"fanout pub: {exc}") from None
    if args.message is not None:
        message = os.fsencode(args.message)
        if args.json and not _is_json(message):
            raise UsageError("fanout pub: --json: MESSAGE is not valid JSON")
        messages: Iterator[bytes] = itertools.repeat(message, args.count or 1)
    else:
        messages = _stdin_lines(args.count)
    # drop=False: piping a file in must not lose lines when the queue fills up
    sent = 0
    with Producer(_endpoints(args), linger=PUB_LINGER, drop=False, send_timeout=PUB_SEND_TIMEOUT,
                  **_curve(args)) as producer:
        if args.wait > 0:
            try:
                producer.wait_ready(args.wait)
            except TimeoutError as exc:
                raise Failure(f"fanout pub: {exc}") from None
        for number, message in enumerate(messages, 1):
            if args.json and args.message is None:
                if not message.strip():
                    continue
                if not _is_json(message):
                    raise Failure(f"fanout pub: --json: stdin line {number} is not valid JSON "
                                  f"({sent} messages before it were sent)")
            try:
                producer.send(topic, message)
            except TimeoutError as exc:
                raise Failure(f"fanout pub: {exc}; {sent} messages were sent") from None
            except MessageTooLarge as exc:
                if args.message is not None:
                    raise Failure(f"fanout pub: MESSAGE: {exc}") from None
                raise Failure(f"fanout pub: stdin line {number}: {exc}; {sent} messages before it were sent") from None
            sent += 1
        _flush(producer, sent)
    return EXIT_OK


def _flush(producer: Producer, sent: int) -> None:
    """Close, waiting up to PUB_LINGER for the collector to take what is queued; say so if it may not have.

    libzmq discards what is still queued when the linger runs out, without a
    count (``Producer.flushed`` is False then): the last messages may be
    lost, so exit 1 rather than claim they were sent.
    """
    producer.close()
    if producer.dropped:
        raise Failure(f"fanout pub: {producer.dropped} of {sent} messages were not sent: the collector drained "
                      "(fanoutd stopping) and none came back")
    if producer.flushed is False:
        raise Failure(f"fanout pub: the collector did not take the last messages within {PUB_LINGER:g}s "
                      f"(is fanoutd holding its producers back, or gone?): some of the {sent} sent may be lost")


def _receive(args: argparse.Namespace, recv: Callable[[float | None], bytes | None]) -> int:
    """Print what ``recv`` returns (None: skip) until --count lines or --timeout idle seconds."""
    received = 0
    while args.count is None or received < args.count:
        try:
            line = recv(args.timeout)
        except TimeoutError:
            if received:
                return EXIT_OK
            raise Failure(f"fanout {args.command}: no messages within {args.timeout:g}s "
                          f"from {', '.join(_endpoints(args))}") from None
        if line is not None:
            emit(sys.stdout.buffer, line)
            received += 1
    return EXIT_OK


def _sub(args: argparse.Namespace) -> int:
    topics = [os.fsencode(t) for t in args.topics] or [b""]
    line = frames_to_line(args.sep, args.raw)
    if args.stamped:  # the stamped output has an endpoint of its own
        args.env, args.default_endpoint = "FANOUT_STAMPED", DEFAULT_STAMPED
        args.repair = args.repair or os.environ.get("FANOUT_REPAIR", "").strip() or None
        if args.repair:
            try:
                validate_endpoint(args.repair)
            except ValueError as exc:
                raise UsageError(f"fanout sub: --repair: {exc}") from None
    elif args.repair:  # $FANOUT_REPAIR alone is ignored without --stamped, as $FANOUT_STAMPED is
        raise UsageError("fanout sub: --repair needs --stamped (only the stamps say what is missing)")
    if args.last_value and not args.repair:
        raise UsageError("fanout sub: --last-value needs --stamped and --repair (the repair endpoint holds them)")
    with Subscriber(_endpoints(args), topics, stamped=args.stamped, repair=args.repair or None,
                    repair_report=_repair_note, last_value=args.last_value, **_curve(args)) as subscriber:
        if not args.stamped:
            return _receive(args, lambda timeout: line(subscriber.recv_multipart(timeout)))

        def recv(timeout: float | None) -> bytes:
            before = (subscriber.lost, subscriber.restarts, subscriber.resets)
            try:
                frames = subscriber.recv_multipart(timeout)
            except NotStamped as exc:
                raise Failure(f"fanout sub: {exc}") from None
            lost, restarts, resets = subscriber.lost, subscriber.restarts, subscriber.resets
            key = frames[0][:subscriber.last_stamp.key_length if subscriber.last_stamp else 0]
            if lost > before[0] and not args.repair:  # with repair, _repair_note says what is gone
                _note(f"missed {lost - before[0]} message(s) of stream {key!r} before this one")
            if restarts > before[1]:
                _note("the broker restarted (not a gap: nothing was published while it was down)")
            if resets > before[2]:
                _note(f"stream {key!r} was restarted by the broker; what came between is unknown")
            return line(frames)
        try:
            return _receive(args, recv)
        finally:
            repaired = f", repaired {subscriber.repaired}" if args.repair else ""
            _note(f"lost {subscriber.lost}{repaired}, restarts {subscriber.restarts}, resets {subscriber.resets}, "
                  f"untracked {subscriber.untracked}")


def _repair_note(key: bytes, repaired: int, gone: list[Gone]) -> None:
    """One line for what a gap got back, one for what of it is gone (and why)."""
    if repaired:
        _note(f"repaired {repaired} message(s) of stream {key!r}")
    if gone:
        runs = ", ".join(f"{run.first}..{run.last} ({run.why})" for run in gone)
        _note(f"gone {sum(run.last - run.first + 1 for run in gone)} message(s) of stream {key!r}: seq {runs}")


def _note(text: str) -> None:
    print(f"fanout sub: {text}", file=sys.stderr, flush=True)


def _pull(args: argparse.Namespace) -> int:
    if args.json and args.sep is not None:
        raise UsageError("fanout pull: --sep does not apply to --json (the payload's frames are parsed together)")
    line = frames_to_line(args.sep, args.raw)
    with Puller(_endpoints(args), **_curve(args)) as puller:
        def recv(timeout: float | None) -> bytes | None:
            if not args.json:
                return line(puller.recv_multipart(timeout))
            payload = puller.recv(timeout)
            try:
                obj = json.loads(payload)
            except ValueError:
                print(f"fanout pull: skipped a payload that is not JSON ({len(payload)} bytes)",
                      file=sys.stderr, flush=True)
                return None
            return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return _receive(args, recv)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (the console script exits with it)."""
    command = "fanout"
    try:
        args = build_parser().parse_args(argv)
        command = f"fanout {args.command}"
        status: int = args.handler(args)
        return status
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except Failure as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILED
    except zmq.ZMQError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`fanout sub | head -1`): say nothing, and keep
        # Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
