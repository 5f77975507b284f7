/*
 * fanoutd/dataplane/wire.h: fanoutd's wire format, the C half.
 *
 * The one other definition is clients/fanoutd_client/wire.py (clients and
 * the daemon's Python both read it); tests/test_wire.py compiles this header
 * on its own and asserts the two agree. The format itself is described in
 * clients/README.md ("Trailing frame").
 *
 *   trailer: magic "\0FDT" | version | flags | [stamp] | [route]
 *   stamp (WIRE_STAMP):  epoch u64 | stream u64 | seq u64 | key length u16
 *   route (WIRE_ROUTE):  hops u8 | hops x node id (WIRE_NODE_ID_LEN bytes)
 *   flags 0 alone: a relay's hello; WIRE_READY alone: the stamped output's
 *   answer to a subscription, sent as [prefix, trailer].
 * Integers are big-endian. Flag bits 8..128 are the repair protocol's, on the
 * repair endpoint only (a ROUTER; clients/README.md, "Repair"):
 *   request:  head(RANGE) | tag u32 | epoch u64 | stream u64 | first u64 | last u64
 *             head(HEADS) | tag u32 | prefix (0..WIRE_STREAM_KEY_CAP bytes)
 *   answers:  [head(ANSWER|RANGE) | tag u32] + the message as the stamped output sent it (on relay_repair: as
 *                 the relay sent it, its trailer with the route)
 *             head(ANSWER|RANGE|END) | tag u32 | epoch | stream | first | last | runs u16 |
 *                 runs x (first u64 | last u64 | reason u8)
 *             head(ANSWER|HEADS[|MORE]) | tag u32 | epoch u64 | count u16 |
 *                 count x (stream u64 | seq u64 | key length u8 | key)
 * A reader refuses a trailer with a bit it does not know.
 */
#ifndef FANOUTD_WIRE_H
#define FANOUTD_WIRE_H

#include <stddef.h>
#include <string.h>

#define WIRE_MAGIC "\0FDT"
#define WIRE_MAGIC_LEN 4
#define WIRE_VERSION 1
#define WIRE_HEAD_LEN 6           /* magic, version, flags */
#define WIRE_STAMP 1
#define WIRE_ROUTE 2
#define WIRE_READY 4              /* control, on the stamped output: "your subscription to this prefix is live" */
/* The repair protocol's flags (free for the trailer of a message: a stamped message never carries them). */
#define WIRE_REPAIR_RANGE 8       /* a request (or its answers) for a range of one stream */
#define WIRE_REPAIR_HEADS 16      /* a request (or its answer) for the heads of the streams under a prefix */
#define WIRE_REPAIR_ANSWER 32     /* set in every answer */
#define WIRE_REPAIR_END 64        /* the last answer to a RANGE: what could not be supplied, and why */
#define WIRE_REPAIR_MORE 128      /* a HEADS answer left streams out (a longer prefix lists them) */
#define WIRE_REPAIR_LAST (WIRE_REPAIR_HEADS | WIRE_REPAIR_RANGE)  /* HEADS with each stream's latest held message */
#define WIRE_REPAIR_TAG_LEN 4     /* the request's tag, chosen by the client, echoed in each answer */
#define WIRE_REPAIR_RANGE_LEN 36  /* a RANGE request's body: tag, epoch, stream, first, last */
#define WIRE_REPAIR_RUN_LEN 17    /* a run an END names: first, last (u64 each), reason (u8) */
#define WIRE_REPAIR_REQUEST_MAX (WIRE_HEAD_LEN + WIRE_REPAIR_TAG_LEN + WIRE_STREAM_KEY_CAP)  /* the longest HEADS; larger: refused */
/* Why an END names a run of sequences. */
#define WIRE_GONE_EVICTED 1       /* older than the history holds (evicted, or stamped while it was off) */
#define WIRE_GONE_EPOCH 2         /* another epoch: the broker restarted since (or the epoch was never its) */
#define WIRE_GONE_UNKNOWN 3       /* a stream id this epoch never gave */
#define WIRE_GONE_LIMIT 4         /* past the reply's bound: ask again from the run's first sequence */
#define WIRE_GONE_FUTURE 5        /* not stamped yet */
#define WIRE_STAMP_LEN 26         /* epoch, stream, seq (u64 each), key length (u16) */
#define WIRE_NODE_ID_LEN 8
#define WIRE_MAX_HOPS 32          /* a route names at most this many nodes */
#define WIRE_STREAM_KEY_CAP 255   /* a stream key is cut here (the stamp says where) */
/* The largest frame an output accepts from a subscriber (ZMQ_MAXMSGSIZE): a bigger one, a subscription
 * over WIRE_LONGEST_PREFIX bytes, closes that connection (docs/concepts.md, "Subscriptions"). */
#define WIRE_OUTPUT_FRAME_MAX 8192
#define WIRE_LONGEST_PREFIX (WIRE_OUTPUT_FRAME_MAX - 10)  /* ZMTP 3.1's SUBSCRIBE command takes 10 bytes */
/* Draining: the collector subscribes to this topic to tell fanoutd's producers to hold their messages. */
#define WIRE_DRAIN_TOPIC "\0FDT-draining"
/* A relay's ZMTP metadata property (and its value): an edge accepts messages only from a relay. */
#define WIRE_RELAY_PROPERTY "X-Fanoutd-Relay"
#define WIRE_RELAY_PROPERTY_VALUE "1"

/* The topic of a single-frame message: the bytes before its first space (all of it without one). */
static inline size_t wire_topic_len(const char *data, size_t len)
{
    const char *space = memchr(data, ' ', len);
    return space ? (size_t)(space - data) : len;
}

/* How much of the first frame names the message's stream: a multipart message's whole first frame; a
 * single frame's topic with the space that ends it (the whole frame if it has none); cut at
 * WIRE_STREAM_KEY_CAP. Every message of a stream starts with its key, so a subscription that is a prefix of
 * the key receives all of the stream or none of it: its gaps are exact. */
static inline size_t wire_stream_key_len(const char *data, size_t len, int frames)
{
    if (frames == 1) {
        size_t topic = wire_topic_len(data, len);
        if (topic < len)
            len = topic + 1;
    }
    return len > WIRE_STREAM_KEY_CAP ? WIRE_STREAM_KEY_CAP : len;
}

#endif
