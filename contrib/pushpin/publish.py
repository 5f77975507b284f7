#!/usr/bin/env python3
"""Publish to Pushpin's streams through fanoutd: what a Python producer calls.

Pushpin's SUB reads two-frame messages ``[channel, b"J" + JSON]`` from
fanoutd's publish output, where the JSON's ``formats.http-stream.content``
is appended to every stream held on ``channel``. A producer therefore sends
exactly that through fanoutd's collector with
``Producer.send_multipart(channel, frame)``; fanoutd forwards the frames
unchanged and needs to know nothing of Pushpin (recipe: docs/pushpin.md).

``sse_frame`` formats the content as one Server-Sent Event, which a
browser's ``EventSource`` reads; plain HTTP streams receive the same text.

    python3 contrib/pushpin/publish.py news 'hello'           # SSE: data: hello
    python3 contrib/pushpin/publish.py --raw news $'hello\\n'  # the bytes as they are
"""

from __future__ import annotations

import argparse
import json

from fanoutd_client import DEFAULT_COLLECTOR, Producer


def stream_frame(content: str) -> bytes:
    """The second frame of a message whose ``content`` is appended as is to every stream on the channel."""
    return b"J" + json.dumps({"formats": {"http-stream": {"content": content}}}, separators=(",", ":")).encode()


def sse_frame(data: str, event: str | None = None, id: str | None = None) -> bytes:
    """The second frame of one Server-Sent Event: ``data`` (one ``data:`` line per line), ``event`` and ``id``."""
    if any("\n" in field or "\r" in field for field in (event or "", id or "")):
        raise ValueError("an SSE event name or id cannot contain a line break")
    lines = ([f"event: {event}"] if event else []) + ([f"id: {id}"] if id is not None else [])
    lines += [f"data: {line}" for line in data.split("\n")]
    return stream_frame("\n".join(lines) + "\n\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="publish one message to the Pushpin streams on CHANNEL")
    parser.add_argument("channel")
    parser.add_argument("text")
    parser.add_argument("--raw", action="store_true", help="append TEXT as is instead of as a Server-Sent Event")
    parser.add_argument("--event", help="the SSE event name (default: none, which EventSource calls message)")
    parser.add_argument("--collector", default=DEFAULT_COLLECTOR, help=f"default {DEFAULT_COLLECTOR}")
    args = parser.parse_args(argv)
    frame = stream_frame(args.text) if args.raw else sse_frame(args.text, args.event)
    producer = Producer(args.collector, wait=5.0, drop=False)
    try:
        producer.send_multipart(args.channel, frame)
    finally:
        producer.close()


if __name__ == "__main__":
    main()
