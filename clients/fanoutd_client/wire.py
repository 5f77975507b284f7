"""fanoutd's wire format, the Python half: the trailer, its flags, and the names the broker and clients share.

The one other definition is ``fanoutd/dataplane/wire.h`` (the forwarding
loop's); ``tests/test_wire.py`` asserts the two agree. The format is
described in clients/README.md ("Trailing frame")::

    trailer: MAGIC | VERSION | flags | [stamp] | [route]
    stamp (STAMP): epoch u64 | stream u64 | seq u64 | key length u16   (big-endian)
    route (ROUTE): hops u8 | hops x node id (NODE_ID_LEN bytes)

Flags 0 alone is a relay's hello; READY alone is the stamped output's answer
to a subscription, sent as ``[prefix, trailer]``. Flag bits 8..128 are the
repair protocol's, on the repair endpoint only (clients/README.md, "Repair")::

    request RANGE: head(REPAIR_RANGE) | tag u32 | epoch u64 | stream u64 | first u64 | last u64
    request HEADS: head(REPAIR_HEADS) | tag u32 | prefix
    request LAST:  head(REPAIR_LAST) | tag u32 | prefix   (answered by LAST messages, then a HEADS answer)
    a message:     [head(ANSWER|RANGE) | tag u32] + the message as the stamped output sent it
    a last value:  [head(ANSWER|LAST) | tag u32] + the message as the stamped output sent it
    END:           head(ANSWER|RANGE|END) | tag | epoch | stream | first | last | runs u16 | runs x RUN
    HEADS answer:  head(ANSWER|HEADS[|MORE]) | tag | epoch u64 | count u16 | count x (stream u64 | seq u64 | key length u8 | key)

A reader refuses a trailer with a bit it does not know.
"""

from __future__ import annotations

import struct

MAGIC = b"\x00FDT"
VERSION = 1
HEAD = struct.Struct(">4sBB")          #: magic, version, flags
STAMP_BODY = struct.Struct(">QQQH")    #: epoch, stream, seq, key length
STAMP = 1   #: the trailer carries a stamp
ROUTE = 2   #: the trailer carries a route (relay output)
READY = 4   #: control, on the stamped output: "your subscription to this prefix is live"
REPAIR_RANGE = 8     #: a repair request (or its answers) for a range of one stream
REPAIR_HEADS = 16    #: a repair request (or its answer) for the heads of the streams under a prefix
REPAIR_ANSWER = 32   #: set in every repair answer
REPAIR_END = 64      #: the last answer to a RANGE: what could not be supplied, and why
REPAIR_MORE = 128    #: a HEADS answer left streams out (a longer prefix lists them)
REPAIR_LAST = REPAIR_HEADS | REPAIR_RANGE  #: HEADS that also sends each stream's latest held message
REPAIR_TAG_LEN = 4   #: the request's tag, chosen by the client, echoed in each answer
REPAIR_RANGE_BODY = struct.Struct(">IQQQQ")  #: tag, epoch, stream, first, last
REPAIR_RUN = struct.Struct(">QQB")           #: a run an END names: first, last, reason
REPAIR_REQUEST_MAX = 6 + 4 + 255             #: the longest HEADS request; a larger request is refused
GONE_EVICTED = 1   #: older than the history holds (evicted, or stamped while it was off)
GONE_EPOCH = 2     #: another epoch: the broker restarted since
GONE_UNKNOWN = 3   #: a stream id this epoch never gave
GONE_LIMIT = 4     #: past the reply's bound: ask again from the run's first sequence
GONE_FUTURE = 5    #: not stamped yet
NODE_ID_LEN = 8
MAX_HOPS = 32            #: a route names at most this many nodes
STREAM_KEY_CAP = 255     #: a stream key is cut here (the stamp says where)
#: The largest frame an output accepts from a subscriber: a bigger one closes that connection.
OUTPUT_FRAME_MAX = 8192
#: The longest topic prefix a subscriber can subscribe to on an output (ZMTP 3.1's SUBSCRIBE takes 10 bytes).
LONGEST_PREFIX = OUTPUT_FRAME_MAX - len(b"\x09SUBSCRIBE")
#: The collector subscribes to this topic while the broker drains: fanoutd's producers hold their messages.
DRAIN_TOPIC = b"\x00FDT-draining"
#: A relay's ZMTP metadata property and its value: an edge accepts messages only from a relay.
RELAY_PROPERTY = "X-Fanoutd-Relay"
RELAY_PROPERTY_VALUE = "1"
#: A relay's welcome message to each new link: a trailer with neither stamp nor route.
RELAY_HELLO = HEAD.pack(MAGIC, VERSION, 0)
#: The stamped output's answer to a subscription (the last frame after the prefix).
READY_TRAILER = HEAD.pack(MAGIC, VERSION, READY)


def topic(frame: bytes) -> bytes:
    """The topic of a single-frame message: the bytes before its first space (all of it without one)."""
    space = frame.find(b" ")
    return frame if space < 0 else frame[:space]


def stream_key_length(first: bytes, frames: int) -> int:
    """How much of the first frame names the message's stream (the broker's rule, wire.h ``wire_stream_key_len``).

    A multipart message's whole first frame; a single frame's topic with the
    space that ends it (the whole frame if it has none); cut at STREAM_KEY_CAP.
    """
    length = len(first)
    if frames == 1:
        key = topic(first)
        if len(key) < length:
            length = len(key) + 1
    return min(length, STREAM_KEY_CAP)


def stamp_trailer(epoch: int, stream: int, seq: int, key_length: int, route: tuple[bytes, ...] = ()) -> bytes:
    """A trailer frame with a stamp (and a route of node ids, as the relay output sends it)."""
    flags = STAMP | (ROUTE if route else 0)
    body = HEAD.pack(MAGIC, VERSION, flags) + STAMP_BODY.pack(epoch, stream, seq, key_length)
    if route:
        body += bytes((len(route),)) + b"".join(route)
    return body
