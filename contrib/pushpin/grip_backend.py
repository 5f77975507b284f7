#!/usr/bin/env python3
"""A minimal GRIP backend: tells Pushpin to hold each request as a stream on a channel.

Pushpin proxies every request to its backend (``contrib/pushpin/routes``);
a backend that answers with ``Grip-Hold: stream`` and ``Grip-Channel: C``
makes Pushpin keep the client's connection open and append to it every
message published on channel ``C``, which fanoutd delivers to Pushpin as
the messages of topic ``C`` (recipe: docs/pushpin.md). This backend does
only that, for two kinds of client:

- ``GET /stream/C``: a plain HTTP stream (``text/plain``), for curl and
  programs; it carries the messages' ``http-stream`` content as is.
- ``GET /events/C``: Server-Sent Events (``text/event-stream``), for a
  browser's ``EventSource``; it carries the same content, which a producer
  formats as SSE (``data: ...`` lines and a blank line).

Anything else is 404, and so is a channel outside ``[A-Za-z0-9_.:-]``
(a comma or a semicolon would change the meaning of the GRIP header).
A real application authenticates here and picks the channels a user may
see; Pushpin only does what the answer says. Standard library only:
``python3 grip_backend.py --port 7990``.
"""

from __future__ import annotations

import argparse
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHANNEL = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
KINDS = {
    # path prefix: (Content-Type, the first bytes of the stream, GRIP keep-alive)
    "/stream/": ("text/plain; charset=utf-8", b"", None),
    # A comment line opens the stream for EventSource; the keep-alive (a comment
    # every 20 s of silence) stops proxies and browsers from closing an idle stream.
    "/events/": ("text/event-stream", b": open\n\n", ":\\n\\n; format=cstring; timeout=20"),
}


class GripHandler(BaseHTTPRequestHandler):
    """Answers GET /stream/C and GET /events/C with the GRIP headers that hold the request on channel C."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        for prefix, (content_type, opening, keep_alive) in KINDS.items():
            channel = path.removeprefix(prefix)
            if channel != path and CHANNEL.fullmatch(channel):
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Grip-Hold", "stream")
                self.send_header("Grip-Channel", channel)
                if keep_alive:
                    self.send_header("Grip-Keep-Alive", keep_alive)
                # EventSource and fetch on pages of another origin may read the stream.
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Content-Length", str(len(opening)))
                self.end_headers()
                self.wfile.write(opening)
                return
        self.send_error(404, "GET /stream/CHANNEL or /events/CHANNEL")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7990, help="port to listen on (default 7990, as in routes)")
    args = parser.parse_args(argv)
    with ThreadingHTTPServer((args.host, args.port), GripHandler) as server:
        print(f"grip backend on http://{args.host}:{server.server_port}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
