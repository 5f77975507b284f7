/*
 * fanoutd._forward: the per-message path of fanoutd, in C.
 *
 * Why C: a per-message Python loop tops out around 20k msg/s on green
 * sockets and ~280k batched, while libzmq's own forwarders move over a
 * million.  This loop reads the collector and writes the publish and push
 * outputs with the GIL released, so Python (gevent) keeps everything around
 * it: HTTP, signals, socket monitors, watchdog and reload.
 *
 * Why no link against libzmq: the sockets are created by pyzmq, so the loop
 * must call into exactly the libzmq pyzmq uses (bundled in its wheel, the
 * system one, or linked into its extension).  bind_libzmq(path) resolves the
 * few functions needed through pyzmq's own extension module at path, never
 * by file name; inspect_libzmq(path) reports what that binding would be so
 * fanoutd.zmqlib can refuse a mismatch first.  The declarations, in
 * zmq_abi.h, are the stable libzmq 4.x ABI, written out so no libzmq headers
 * are needed to build (and checked against zmq.h by tests/abi/probe.c).
 *
 * Counting: the loop keeps plain counters of its own and publishes them to
 * the shared array with relaxed atomic stores once per batch (at most BATCH
 * messages or one idle tick stale), so counting costs no locked instruction
 * per message.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "zmq_abi.h"
#include "wire.h"
#include "_streams.h"

/* The libzmq functions, set once by bind_libzmq. */
static struct zabi Z;
static int bound;

/* Counter slots, in the order of COUNTER_NAMES. */
enum {
    C_RECEIVED, C_RECEIVED_BYTES, C_PUBLISHED, C_PUBLISH_DROPPED,
    C_PUSHED, C_PUSH_NO_PULLER, C_PUSH_HWM,
    C_REJECT_OVERSIZE, C_REJECT_FRAMES, C_TICKS,
    C_RECEIVED_UPSTREAM, C_RELAYED, C_REJECT_LOOP, C_REJECT_ROUTE,
    C_RELAY_DROPPED, C_PUBLISH_STALLS, C_RELAY_STALLS,
    C_STAMPED, C_STAMPED_DROPPED, C_STAMPED_STALLS, C_STREAM_EVICTIONS,
    C_UPSTREAM_GAPS, C_UPSTREAM_UNTRACKED, C_UPSTREAM_HELLOS, C_REJECT_NOT_RELAY,
    C_PUBLISH_HELD_NS, C_RELAY_HELD_NS, C_STAMPED_HELD_NS, C_COUNT
};
static const char *COUNTER_NAMES[C_COUNT] = {
    "received_messages", "received_bytes", "published_messages", "publish_dropped",
    "pushed_messages", "push_dropped_no_puller", "push_dropped_hwm",
    "rejected_oversize", "rejected_too_many_frames", "ticks",
    "received_upstream_messages", "relayed_messages", "rejected_loop", "rejected_bad_route",
    "relay_dropped", "publish_stalls", "relay_stalls",
    "stamped_messages", "stamped_dropped", "stamped_stalls", "stream_evictions",
    "upstream_gaps", "upstream_untracked", "upstream_hellos", "rejected_not_relay",
    "publish_held_ns", "relay_held_ns", "stamped_held_ns",
};

enum { MODE_RUN = 0, MODE_DRAIN = 1, MODE_ABORT = 2 };
/* Draining: the collector subscribes to WIRE_DRAIN_TOPIC, which tells fanoutd's
 * producers (they see subscriptions) to hold their messages until this node
 * is gone and another has subscribed; the loop reads until its inputs have
 * been quiet for DRAIN_QUIET_NS (what producers sent before they paused) or
 * DRAIN_GRACE_NS passed (producers that cannot pause, raw PUBs, never go
 * quiet), so nothing is in flight to a closing collector from those that can. */
#define DRAIN_QUIET_NS 50000000LL
#define DRAIN_GRACE_NS 1000000000LL
#define BATCH 512
#define TICK_MS 100
/* FRAMES_CAP and TOPICS_CAP come from fanoutd/dataplane/limits.py (setup.py passes them). */
/* Federation: relayed messages carry a trailer whose route lists the ids of
 * the nodes they passed; a node drops one that already names it, so a
 * message can never circulate, whatever the topology. */

/* The trailer's layout and the names shared with clients are in wire.h. */
typedef struct { uint64_t epoch, stream, seq; uint16_t keylen; } stamp_t;
typedef struct { int flags; stamp_t stamp; const unsigned char *ids; int hops; } trailer_t;

/* The fanning-out outputs (XPUB sockets with ZMQ_XPUB_NODROP): libzmq refuses
 * a message there, instead of silently dropping it for one subscriber, when a
 * matching subscriber's queue is at its high-water mark. The loop then holds
 * all output, signalling stall_fd so the slow-consumer guard (Python, on the
 * hub) looks at the kernel state of the output's connections and answers
 * (answer_stall): it has cut the subscriber that stopped reading, or found
 * none that is behind in the kernel, which means libzmq's own I/O thread is
 * (the broker is over its capacity, and no subscriber is to blame). Either
 * way it asks the loop to hold on, for stall_ns more each answer, and back-
 * pressure reaches the producers: nothing is dropped. The loop waits for the
 * answer (the hub runs the guard; a hub that never answers is a broker whose
 * control plane is gone, and shutdown's abort ends the wait). Only if the
 * guard answers "no" (a full subscriber it could not cut), or stall_ns is 0,
 * does the loop send lossy (NODROP off for that one message) and count it.
 * From then libzmq leaves the full subscriber out of its distribution until
 * it drains, without refusing anything: the loop keeps a *window* open on
 * that output and counts every message it sends there as missed by that
 * subscriber, until the guard has cut it off and closes the window
 * (close_window). A window whose subscriber the guard cannot name could not
 * be closed exactly; holding while it looks is what keeps windows to the
 * subscribers it can name. */
enum { OUT_PUBLISH = 0, OUT_RELAY = 1, OUT_STAMPED = 2, OUTS = 3 };
static const int DROPPED[OUTS] = {C_PUBLISH_DROPPED, C_RELAY_DROPPED, C_STAMPED_DROPPED};
static const int STALLS[OUTS] = {C_PUBLISH_STALLS, C_RELAY_STALLS, C_STAMPED_STALLS};
static const int HELD_NS[OUTS] = {C_PUBLISH_HELD_NS, C_RELAY_HELD_NS, C_STAMPED_HELD_NS};
#define HOLD_ASK_MAX_NS 1000000000LL  /* a long hold asks the guard again at least once a second */

typedef struct {
    PyObject_HEAD
    void *publish, *push, *relay;
    void *outs[OUTS];   /* publish, relay, stamped */
    uint64_t window[OUTS];  /* shared: the number of the lossy send that opened it; 0 closed */
    /* A one-slot mailbox: an upstream endpoint to connect afresh (libzmq never retries a link whose
     * handshake was refused; the hub may allow this node's key later). Written by Python while
     * reconnect_pending is 0, then read and cleared by the loop, which owns the socket. */
    char reconnect_to[512];
    int reconnect_pending;
    uint64_t lossy_sends;   /* numbers lossy sends, so the guard closes only the window it handled */
    uint64_t stall[OUTS];   /* shared: the number of the hold the output is in; 0 none */
    uint64_t answer[OUTS];  /* shared: the guard's answer to a hold, number << 1 | (1: hold on) */
    uint64_t holds;         /* numbers holds, so an answer is to the hold it was given for */
    int stall_fd;       /* eventfd the loop writes when it starts holding output; -1: none */
    int64_t stall_ns;   /* how long a hold lasts before the loop asks the guard again; 0: lossy at once */
    /* What the loop reads: the collector, then the PULL ingress, then the
     * upstream link (whose messages carry a route frame). */
    struct { void *socket; int from_upstream; } inputs[3];
    int ninputs;
    char node_id[WIRE_NODE_ID_LEN];
    int running;
    /* shared with other threads: atomics only */
    uint64_t shared[C_COUNT];
    int mode, push_peers, stamped_peers, max_frames, strip_topic;
    uint64_t max_size;
    /* per-topic counting (off when ntopics == 0): fixed at construction */
    int ntopics;
    char *topic_data[TOPICS_CAP];
    size_t topic_len[TOPICS_CAP];
    uint64_t topic_shared[TOPICS_CAP + 1];
    uint64_t topic_local[TOPICS_CAP + 1];
    /* the upstream link's subscriptions: its gaps are counted only for keys they cover */
    int nup_topics;
    char *up_topic_data[TOPICS_CAP];
    size_t up_topic_len[TOPICS_CAP];
    /* owned by the running loop */
    uint64_t local[C_COUNT];
    int64_t tick_ns;        /* the time at the start of this pass over the inputs */
    int64_t stamped_heard;  /* when the stamped output last had a subscription from a subscriber */
    int stamping;         /* stamped or relay output: each message gets a stamp */
    uint64_t epoch, last_stream;
    stream_table stamps;  /* topic key -> stream id, last sequence given */
    stream_table seen;    /* upstream (epoch, stream) -> last sequence seen */
    zmsg_t parts[FRAMES_CAP + 1];
    zmsg_t scratch;
} Forwarder;

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)

static void publish_counters(Forwarder *f)
{
    for (int i = 0; i < C_COUNT; i++)
        STORE(f->shared[i], f->local[i]);
    for (int i = 0; i < f->ntopics + 1; i++)
        STORE(f->topic_shared[i], f->topic_local[i]);
}

/* Count a message under its topic if it is on the allowlist, else under "other". */
static void count_topic(Forwarder *f, int n)
{
    const char *data = Z.msg_data(&f->parts[0]);
    size_t len = Z.msg_size(&f->parts[0]);
    if (n == 1)
        len = wire_topic_len(data, len);
    int i = 0;
    while (i < f->ntopics && !(f->topic_len[i] == len && memcmp(f->topic_data[i], data, len) == 0))
        i++;
    f->topic_local[i]++;
}

/* Close the first n parts; -1 if libzmq refused one (a corrupt message). */
static int close_parts(Forwarder *f, int n)
{
    int rc = 0;
    for (int i = 0; i < n; i++)
        if (Z.msg_close(&f->parts[i]) < 0)
            rc = -1;
    return rc;
}

/* Make out a copy of src sharing its data; -1 (out left closed) on failure. */
static int copy_part(zmsg_t *out, zmsg_t *src)
{
    if (Z.msg_init(out) < 0)
        return -1;
    if (Z.msg_copy(out, src) < 0) {
        Z.msg_close(out);
        return -1;
    }
    return 0;
}

/* zmq_msg_send, and once more if it was refused while the socket had room.
 * libzmq reads a socket's commands at most once a millisecond while sending
 * (a throttle of its own), and among them is each reader's "read up to
 * here", which is what frees room under the high-water mark: a burst can
 * find a pipe full that its reader emptied long ago. Asking for ZMQ_EVENTS
 * reads them at once. Only a refused send pays for it. */
static int send_now(zmsg_t *msg, void *sock, int flags)
{
    int rc = Z.msg_send(msg, sock, flags);
    if (rc >= 0 || Z.errno_() != EAGAIN)
        return rc;
    int events = 0;
    size_t len = sizeof events;
    if (Z.getsockopt(sock, Z_EVENTS, &events, &len) < 0)
        return -1;
    if (events & Z_POLLOUT)
        return Z.msg_send(msg, sock, flags);
    errno = EAGAIN;
    return -1;
}

/* Hand the payload to one puller without blocking; count a drop otherwise. */
static int push_out(Forwarder *f, int n)
{
    int strip = LOAD(f->strip_topic), flags, rc = 0;
    zmsg_t out;
    if (n == 1) {
        const char *data = Z.msg_data(&f->parts[0]);
        size_t len = Z.msg_size(&f->parts[0]);
        size_t topic = strip ? wire_topic_len(data, len) : len;
        if (topic < len) {
            size_t off = topic + 1;
            if (Z.msg_init_size(&out, len - off) < 0)
                return -1;
            memcpy(Z.msg_data(&out), data + off, len - off);
        } else if (copy_part(&out, &f->parts[0]) < 0) {
            return -1;
        }
        rc = send_now(&out, f->push, Z_DONTWAIT);
        if (rc < 0)
            Z.msg_close(&out);
    } else {
        /* Once the first frame is queued, libzmq keeps the rest of the
         * message on the same pipe, so only the first send can be refused. */
        for (int i = strip ? 1 : 0; i < n; i++) {
            if (copy_part(&out, &f->parts[i]) < 0)
                return -1;
            flags = Z_DONTWAIT | (i < n - 1 ? Z_SNDMORE : 0);
            rc = send_now(&out, f->push, flags);
            if (rc < 0) {
                Z.msg_close(&out);
                break;
            }
        }
    }
    if (rc >= 0) {
        f->local[C_PUSHED]++;
        return 0;
    }
    int err = Z.errno_();
    if (err != EAGAIN)
        return -1;
    f->local[LOAD(f->push_peers) > 0 ? C_PUSH_HWM : C_PUSH_NO_PULLER]++;
    return 0;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Offer a message to an XPUB output: frames[0..n) (copies of them unless
 * consume), then tail if given (consumed). Only the first frame can be
 * refused: once it is queued, libzmq keeps the rest on the same pipes.
 * 1 sent, 0 refused (EAGAIN: a matching subscriber is full), -1 error. */
static int offer(void *sock, zmsg_t *frames, int n, zmsg_t *tail, int consume)
{
    zmsg_t copy;
    int last = n - 1 + (tail != NULL);
    for (int i = 0; i <= last; i++) {
        zmsg_t *m = i < n ? &frames[i] : tail;
        if (i < n && !consume) {
            if (copy_part(&copy, m) < 0)
                return -1;
            m = &copy;
        }
        if (send_now(m, sock, Z_DONTWAIT | (i < last ? Z_SNDMORE : 0)) < 0) {
            int err = Z.errno_();
            if (m == &copy)
                Z.msg_close(&copy);
            return i == 0 && err == EAGAIN ? 0 : -1;
        }
    }
    return 1;
}

static int set_nodrop(void *sock, int on)
{
    return Z.setsockopt(sock, Z_XPUB_NODROP, &on, sizeof on);
}

static void wake_guard(Forwarder *f)
{
    uint64_t one = 1;
    if (f->stall_fd >= 0)
        (void)!write(f->stall_fd, &one, sizeof one);  /* a full eventfd already says it */
}

/* Hold all output while the guard looks and answers "hold on" (see OUTS):
 * retry the message every 0.2 ms, and ask again after stall_ns, then after
 * twice as long each time up to HOLD_ASK_MAX_NS (a long hold is the broker
 * catching up, and each look scans every connection). 1 sent, 0 the guard
 * answered "no" (the caller sends lossy), -1 error; an abort ends it too. */
static int hold(Forwarder *f, int out, zmsg_t *frames, int n, zmsg_t *tail, int consume)
{
    struct timespec pause = {0, 200000};  /* 0.2 ms: the guard's cut takes libzmq an I/O round */
    uint64_t number = ++f->holds;
    STORE(f->stall[out], number);
    int64_t start = now_ns(), period = f->stall_ns, deadline = start + period;
    int rc = 0;
    while (LOAD(f->mode) != MODE_ABORT) {
        int64_t now = now_ns();
        if (now >= deadline) {
            uint64_t answer = LOAD(f->answer[out]);
            if (answer == (number << 1 | 1)) {
                number = ++f->holds;  /* "hold on": a fresh look later */
                STORE(f->stall[out], number);
                wake_guard(f);
                period = period * 2 < HOLD_ASK_MAX_NS ? period * 2 : HOLD_ASK_MAX_NS;
                deadline = now + period;
            } else if (answer == number << 1) {
                break;  /* "no": a full subscriber the guard could not cut; the lossy send names it */
            } else {
                deadline = now + 1000000;  /* still looking: wait for the answer */
            }
        }
        nanosleep(&pause, NULL);
        if ((rc = offer(f->outs[out], frames, n, tail, consume)) != 0)
            break;
    }
    STORE(f->stall[out], 0);
    f->local[HELD_NS[out]] += (uint64_t)(now_ns() - start);
    return rc;
}

/* Deliver to a fanning-out output, stalling within the bound for the guard to
 * cut a slow consumer; a message sent lossy, or while a window is open, is
 * counted. 0 done, -1 error. */
static int fan_out(Forwarder *f, int out, zmsg_t *frames, int n, zmsg_t *tail, int consume)
{
    void *sock = f->outs[out];
    int window = LOAD(f->window[out]) != 0;
    int rc = offer(sock, frames, n, tail, consume);
    if (rc != 0) {
        if (rc > 0 && window)
            f->local[DROPPED[out]]++;  /* the full subscriber, out of libzmq's distribution, missed it */
        return rc < 0 ? -1 : 0;
    }
    if (!window) {
        wake_guard(f);
        if (f->stall_ns > 0) {
            f->local[STALLS[out]]++;
            publish_counters(f);
            rc = hold(f, out, frames, n, tail, consume);
            if (rc != 0)
                return rc < 0 ? -1 : 0;
        }
    }
    /* Each lossy send takes one more subscriber out of the distribution: (re)open the window with its number. */
    STORE(f->window[out], ++f->lossy_sends);
    wake_guard(f);
    if (set_nodrop(sock, 0) < 0)
        return -1;
    rc = offer(sock, frames, n, tail, consume);
    if (set_nodrop(sock, 1) < 0 || rc < 0)
        return -1;
    f->local[DROPPED[out]]++;  /* at least one subscriber missed this message */
    return 0;
}

/* Re-emit the message unchanged; consumes the parts. */
static int publish_out(Forwarder *f, int n)
{
    if (fan_out(f, OUT_PUBLISH, f->parts, n, NULL, 1) < 0)
        return -1;
    f->local[C_PUBLISHED]++;
    return 0;
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* The stream key of the message in parts (the rule is wire.h's). */
static size_t stamp_key_len(Forwarder *f, int n)
{
    return wire_stream_key_len(Z.msg_data(&f->parts[0]), Z.msg_size(&f->parts[0]), n);
}

/* The next stamp of this message's stream (a new stream id for a key the
 * table did not hold, or no longer held). */
static void next_stamp(Forwarder *f, int n, stamp_t *s)
{
    int created;
    size_t len = stamp_key_len(f, n);
    stream_entry *e = streams_get(&f->stamps, Z.msg_data(&f->parts[0]), len, &created);
    if (created)
        e->stream = ++f->last_stream;
    s->epoch = f->epoch;
    s->stream = e->stream;
    s->seq = ++e->seq;
    s->keylen = (uint16_t)len;
    f->local[C_STREAM_EVICTIONS] = f->stamps.evictions;
}

/* Start a trailer frame of len bytes in out with its head (magic, version,
 * flags); returns where the body goes, or NULL (out left closed). */
static unsigned char *trailer_head(zmsg_t *out, size_t len, int flags)
{
    if (Z.msg_init_size(out, len) < 0)
        return NULL;
    unsigned char *p = Z.msg_data(out);
    memcpy(p, WIRE_MAGIC, 4);
    p[4] = WIRE_VERSION;
    p[5] = (unsigned char)flags;
    return p + WIRE_HEAD_LEN;
}

/* A trailer frame in out: the stamp, and a route of ids[0..hops) then this
 * node when route is set.  -1 on failure (out left closed). */
static int make_trailer(Forwarder *f, zmsg_t *out, const stamp_t *s, int route, const unsigned char *ids, int hops)
{
    size_t len = WIRE_HEAD_LEN + WIRE_STAMP_LEN + (route ? 1 + (size_t)(hops + 1) * WIRE_NODE_ID_LEN : 0);
    unsigned char *p = trailer_head(out, len, WIRE_STAMP | (route ? WIRE_ROUTE : 0));
    if (!p)
        return -1;
    put_u64(p, s->epoch);
    put_u64(p + 8, s->stream);
    put_u64(p + 16, s->seq);
    p[24] = (unsigned char)(s->keylen >> 8);
    p[25] = (unsigned char)s->keylen;
    p += WIRE_STAMP_LEN;
    if (route) {
        *p++ = (unsigned char)(hops + 1);
        if (hops)
            memcpy(p, ids, (size_t)hops * WIRE_NODE_ID_LEN);
        memcpy(p + (size_t)hops * WIRE_NODE_ID_LEN, f->node_id, WIRE_NODE_ID_LEN);
    }
    return 0;
}

/* Parse a trailer frame: 0 and *t filled, or -1 if m is not one. */
static int parse_trailer(zmsg_t *m, trailer_t *t)
{
    const unsigned char *d = Z.msg_data(m);
    size_t len = Z.msg_size(m), off = WIRE_HEAD_LEN;
    if (len < WIRE_HEAD_LEN || memcmp(d, WIRE_MAGIC, 4) != 0 || d[4] != WIRE_VERSION)
        return -1;
    t->flags = d[5];
    if (t->flags & ~(WIRE_STAMP | WIRE_ROUTE))
        return -1;
    if (t->flags & WIRE_STAMP) {
        if (len < off + WIRE_STAMP_LEN)
            return -1;
        t->stamp.epoch = get_u64(d + off);
        t->stamp.stream = get_u64(d + off + 8);
        t->stamp.seq = get_u64(d + off + 16);
        t->stamp.keylen = (uint16_t)(d[off + 24] << 8 | d[off + 25]);
        off += WIRE_STAMP_LEN;
    }
    t->ids = NULL;
    t->hops = 0;
    if (t->flags & WIRE_ROUTE) {
        if (len < off + 1)
            return -1;
        t->hops = d[off++];
        if (t->hops < 1 || t->hops > WIRE_MAX_HOPS || len - off < (size_t)t->hops * WIRE_NODE_ID_LEN)
            return -1;
        t->ids = d + off;
        off += (size_t)t->hops * WIRE_NODE_ID_LEN;
    }
    return off == len ? 0 : -1;
}

/* Send the message with a trailer on the relay output (stamped, with this
 * node added to the route it came with) or the stamped output (stamped). */
static int trailed_out(Forwarder *f, int out, int n, const trailer_t *from, const stamp_t *s)
{
    zmsg_t trailer;
    int route = out == OUT_RELAY;
    if (make_trailer(f, &trailer, s, route, from ? from->ids : NULL, from ? from->hops : 0) < 0)
        return -1;
    if (fan_out(f, out, f->parts, n, &trailer, 0) < 0) {
        Z.msg_close(&trailer);
        return -1;
    }
    f->local[route ? C_RELAYED : C_STAMPED]++;
    return 0;
}

/* On the stamped output, answer a subscription with a control message: its
 * prefix as the first frame and a trailer flagged READY. libzmq applied the
 * subscription before handing it up, so the subscriber that sent it receives
 * this: it now knows messages of that prefix reach it (the readiness a plain
 * SUB can never have). Others matching the prefix skip it as control, and
 * plain publish subscribers never see it. Best effort: a full subscriber
 * refusing it (EAGAIN) only delays the new one's readiness. */
static int answer_subscription(void *sock, zmsg_t *sub)
{
    const unsigned char *d = Z.msg_data(sub);
    size_t len = Z.msg_size(sub);
    if (len < 1 || d[0] != 1)
        return 0;  /* an unsubscription */
    zmsg_t parts[1], trailer;
    if (Z.msg_init_size(&parts[0], len - 1) < 0)
        return -1;
    memcpy(Z.msg_data(&parts[0]), d + 1, len - 1);
    if (!trailer_head(&trailer, WIRE_HEAD_LEN, WIRE_READY)) {
        Z.msg_close(&parts[0]);
        return -1;
    }
    int rc = offer(sock, parts, 1, &trailer, 1);
    if (rc <= 0) {
        Z.msg_close(&parts[0]);
        Z.msg_close(&trailer);
    }
    return rc < 0 && Z.errno_() != EAGAIN ? -1 : 0;
}

/* Read what subscribers send an XPUB (their subscriptions), which would
 * otherwise pile up in it (libzmq has applied them already); on the stamped
 * output, answer each subscription. */
static int read_subscriptions(Forwarder *f, int out)
{
    zmsg_t m;
    for (int i = 0; i < BATCH; i++) {
        if (Z.msg_init(&m) < 0)
            return -1;
        int rc = Z.msg_recv(&m, f->outs[out], Z_DONTWAIT);
        int err = rc < 0 ? Z.errno_() : 0;
        if (rc >= 0 && out == OUT_STAMPED)
            f->stamped_heard = now_ns();
        if (rc >= 0 && out == OUT_STAMPED && answer_subscription(f->outs[out], &m) < 0) {
            Z.msg_close(&m);
            return -1;
        }
        Z.msg_close(&m);
        if (rc < 0)
            return err == EAGAIN ? 0 : -1;
    }
    return 0;
}

/* Whether the stamped output may have a subscriber. With none connected,
 * libzmq would match a message against no subscription and discard it, and
 * that send (a copy of each frame and a trailer, two sends) was a third of
 * the loop's work at 100 B on a broker whose stamped output nobody reads
 * (it is on by default). The hub counts the connections (monitor events,
 * set_stamped_peers); its count lags, so a subscription the loop has itself
 * read within STAMPED_HEARD_NS also counts: a subscriber's subscription
 * reaches libzmq's trie and the loop in the same call (read_subscriptions),
 * so nothing a subscriber could have received is skipped. The stamp itself
 * is still taken for every message, so if the count were ever wrong a
 * stamped subscriber would see the skip as a gap, never silently. */
#define STAMPED_HEARD_NS 2000000000LL
static int stamped_heard_of(Forwarder *f)
{
    return LOAD(f->stamped_peers) > 0 || f->tick_ns - f->stamped_heard < STAMPED_HEARD_NS;
}

/* Whether this node's upstream subscriptions cover the whole stream of a
 * message (one of them is a prefix of its key): only then are its gaps ours to count. */
static int covers(Forwarder *f, zmsg_t *first, size_t keylen)
{
    if (keylen > Z.msg_size(first))
        return 0;
    const char *data = Z.msg_data(first);
    for (int i = 0; i < f->nup_topics; i++)
        if (f->up_topic_len[i] <= keylen && memcmp(data, f->up_topic_data[i], f->up_topic_len[i]) == 0)
            return 1;
    return 0;
}

/* Count what the upstream stamped and this node never received. */
static void track_upstream(Forwarder *f, zmsg_t *first, const stamp_t *s)
{
    if (!covers(f, first, s->keylen)) {
        f->local[C_UPSTREAM_UNTRACKED]++;
        return;
    }
    unsigned char key[16];
    int created;
    put_u64(key, s->epoch);
    put_u64(key + 8, s->stream);
    stream_entry *e = streams_get(&f->seen, key, sizeof key, &created);
    if (!created && s->seq > e->seq + 1)
        f->local[C_UPSTREAM_GAPS] += s->seq - e->seq - 1;
    if (created || s->seq > e->seq)
        e->seq = s->seq;
}

/* The counter a message from the upstream link earns, or -1 when it may pass
 * (its trailer then parsed into t).  It must come from a fanoutd relay (the
 * relay's ZMTP metadata, on every message) and end in a trailer with a
 * route that does not already name this node. */
static int check_upstream(Forwarder *f, int n, trailer_t *t)
{
    const char *relay = Z.msg_gets(&f->parts[0], WIRE_RELAY_PROPERTY);
    if (!relay || strcmp(relay, WIRE_RELAY_PROPERTY_VALUE) != 0)
        return C_REJECT_NOT_RELAY;
    if (n < 2 || parse_trailer(&f->parts[n - 1], t) < 0 || !(t->flags & WIRE_ROUTE))
        return C_REJECT_ROUTE;
    if (t->flags & WIRE_STAMP)
        track_upstream(f, &f->parts[0], &t->stamp);
    for (int i = 0; i < t->hops; i++)
        if (memcmp(t->ids + (size_t)i * WIRE_NODE_ID_LEN, f->node_id, WIRE_NODE_ID_LEN) == 0)
            return C_REJECT_LOOP;
    return -1;
}

/* A relay's hello (its welcome message to a new link): one frame, a trailer without stamp or route. */
static int is_hello(Forwarder *f, int n)
{
    trailer_t t;
    return n == 1 && parse_trailer(&f->parts[0], &t) == 0 && t.flags == 0;
}

/* Forward one message from input (the collector, or the upstream link whose
 * messages end in a route frame): 1 done, 0 input empty, -1 error (errno_). */
static int forward_one(Forwarder *f, void *input, int from_upstream)
{
    zmsg_t *p = f->parts;
    if (Z.msg_init(&p[0]) < 0)
        return -1;
    if (Z.msg_recv(&p[0], input, Z_DONTWAIT) < 0) {
        int err = Z.errno_();
        Z.msg_close(&p[0]);
        return err == EAGAIN ? 0 : -1;
    }
    int n = 1, overflow = 0, max_frames = LOAD(f->max_frames) + from_upstream;
    uint64_t total = Z.msg_size(&p[0]);
    int more = Z.msg_more(&p[0]);
    /* Multipart messages arrive whole: the remaining frames never block. */
    while (more) {
        zmsg_t *dst = n < max_frames ? &p[n] : &f->scratch;
        if (Z.msg_init(dst) < 0) {
            close_parts(f, n);
            return -1;
        }
        if (Z.msg_recv(dst, input, 0) < 0) {
            Z.msg_close(dst);
            close_parts(f, n);
            return -1;
        }
        total += Z.msg_size(dst);
        more = Z.msg_more(dst);
        if (dst == &f->scratch) {
            overflow = 1;
            if (Z.msg_close(dst) < 0) {
                close_parts(f, n);
                return -1;
            }
        } else {
            n++;
        }
    }
    if (from_upstream && !overflow && is_hello(f, n)) {
        f->local[C_UPSTREAM_HELLOS]++;  /* a link's greeting, not a message */
        return close_parts(f, n) < 0 ? -1 : 1;
    }
    f->local[C_RECEIVED]++;
    f->local[C_RECEIVED_BYTES] += total;
    trailer_t from, *route = NULL;
    int verdict = -1, rc = 0, stripped = 0;
    if (from_upstream) {
        f->local[C_RECEIVED_UPSTREAM]++;
        if (!overflow && (verdict = check_upstream(f, n, &from)) < 0) {
            route = &from;
            total -= Z.msg_size(&p[--n]);
            stripped = 1;
        }
    }
    if (f->ntopics)
        count_topic(f, n);
    if (verdict >= 0)
        f->local[verdict]++;
    else if (overflow)
        f->local[C_REJECT_FRAMES]++;
    else if (total > LOAD(f->max_size))
        f->local[C_REJECT_OVERSIZE]++;
    else {
        stamp_t stamp;
        if (f->stamping)
            next_stamp(f, n, &stamp);
        if (f->push)
            rc = push_out(f, n);
        if (rc == 0 && f->relay)
            rc = trailed_out(f, OUT_RELAY, n, route, &stamp);
        if (rc == 0 && f->outs[OUT_STAMPED]) {
            if (stamped_heard_of(f))
                rc = trailed_out(f, OUT_STAMPED, n, NULL, &stamp);
            else
                f->local[C_STAMPED]++;  /* what libzmq does with a message nobody subscribed to, for free */
        }
        if (rc == 0 && f->publish)
            rc = publish_out(f, n);
    }
    if (close_parts(f, n + stripped) < 0)
        rc = -1;
    return rc < 0 ? -1 : 1;
}

/* Forward up to BATCH messages from one input; returns the count, or -1. */
static int drain(Forwarder *f, void *input, int from_upstream)
{
    int handled = 0, rc = 0;
    while (handled < BATCH && (rc = forward_one(f, input, from_upstream)) > 0)
        handled++;
    return rc < 0 ? -1 : handled;
}

static PyObject *Forwarder_run(Forwarder *f, PyObject *Py_UNUSED(ignored))
{
    if (!bound) {
        PyErr_SetString(PyExc_RuntimeError, "bind_libzmq() has not been called");
        return NULL;
    }
    if (f->running) {
        PyErr_SetString(PyExc_RuntimeError, "the forwarder is already running");
        return NULL;
    }
    f->running = 1;
    const char *result = NULL;
    int err = 0, announced = 0, can_wait = 0;
    int64_t drain_start = 0, last_input = 0;
    Py_BEGIN_ALLOW_THREADS
    /* A name operators see in `top -H` and tools can find the loop by;
     * a nicety, so a failure changes nothing. */
    (void)prctl(PR_SET_NAME, "fanoutd-fwd", 0, 0, 0);
    for (;;) {
        int mode = LOAD(f->mode);
        if (mode == MODE_ABORT) {
            result = "aborted";
            break;
        }
        int busy = 0, failed = 0, read = 0;
        f->tick_ns = now_ns();
        if (__atomic_load_n(&f->reconnect_pending, __ATOMIC_ACQUIRE)) {
            void *up = f->inputs[f->ninputs - 1].socket;  /* the upstream link is always the last input */
            /* Disconnect fails (ENOENT) once libzmq has dropped the refused link; connect can only fail
             * as the context terminates (the endpoint was connected at start), which the next socket
             * call reports as ETERM. */
            (void)!Z.disconnect(up, f->reconnect_to);
            (void)!Z.connect(up, f->reconnect_to);
            __atomic_store_n(&f->reconnect_pending, 0, __ATOMIC_RELEASE);
        }
        if (mode == MODE_DRAIN && !announced) {
            announced = 1;
            can_wait = Z.setsockopt(f->inputs[0].socket, Z_SUBSCRIBE, WIRE_DRAIN_TOPIC, sizeof WIRE_DRAIN_TOPIC - 1) == 0;
            drain_start = last_input = now_ns();
        }
        for (int i = 0; i < f->ninputs && !failed; i++) {
            int handled = drain(f, f->inputs[i].socket, f->inputs[i].from_upstream);
            failed = handled < 0;
            busy |= handled == BATCH;
            read |= handled > 0;
        }
        for (int o = 0; o < OUTS && !failed; o++)
            failed = f->outs[o] && read_subscriptions(f, o) < 0;
        f->local[C_TICKS]++;
        publish_counters(f);
        if (failed) {
            err = Z.errno_();
            result = err == Z_ETERM ? "terminated" : NULL;
            break;
        }
        if (busy)
            continue;
        long wait_ms = TICK_MS;
        if (mode == MODE_DRAIN) {
            int64_t now = now_ns();
            if (read)
                last_input = now;
            if (!can_wait || now - last_input >= DRAIN_QUIET_NS || now - drain_start >= DRAIN_GRACE_NS) {
                result = "drained";
                break;
            }
            wait_ms = 5;
        }
        zpollitem_t items[3];
        for (int i = 0; i < f->ninputs; i++)
            items[i] = (zpollitem_t){f->inputs[i].socket, 0, Z_POLLIN, 0};
        if (Z.poll(items, f->ninputs, wait_ms) < 0 && (err = Z.errno_()) != EINTR) {
            result = err == Z_ETERM ? "terminated" : NULL;
            break;
        }
    }
    Py_END_ALLOW_THREADS
    f->running = 0;
    if (!result) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyUnicode_FromString(result);
}

static PyObject *Forwarder_stop(Forwarder *f, PyObject *args)
{
    int abort = 0;
    if (!PyArg_ParseTuple(args, "|p", &abort))
        return NULL;
    int mode = abort ? MODE_ABORT : MODE_DRAIN;
    if (mode > LOAD(f->mode))
        STORE(f->mode, mode);
    Py_RETURN_NONE;
}

static int set_limits(Forwarder *f, unsigned long long max_size, int max_frames, int strip)
{
    if (max_frames < 1 || max_frames > FRAMES_CAP) {
        PyErr_Format(PyExc_ValueError, "max_frames must be between 1 and %d", FRAMES_CAP);
        return -1;
    }
    STORE(f->max_size, (uint64_t)max_size);
    STORE(f->max_frames, max_frames);
    STORE(f->strip_topic, strip);
    return 0;
}

static PyObject *Forwarder_set_limits(Forwarder *f, PyObject *args, PyObject *kw)
{
    static char *names[] = {"max_message_size", "max_frames", "strip_topic", NULL};
    unsigned long long max_size;
    int max_frames, strip;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "$Kip", names, &max_size, &max_frames, &strip))
        return NULL;
    if (set_limits(f, max_size, max_frames, strip) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Store a connection count the hub keeps for the loop (negative as 0). */
static PyObject *set_peers(int *peers, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    STORE(*peers, (int)(n < 0 ? 0 : n));
    Py_RETURN_NONE;
}

static PyObject *Forwarder_set_push_peers(Forwarder *f, PyObject *arg)
{
    return set_peers(&f->push_peers, arg);
}

static PyObject *Forwarder_set_stamped_peers(Forwarder *f, PyObject *arg)
{
    return set_peers(&f->stamped_peers, arg);
}

static PyObject *Forwarder_reconnect(Forwarder *f, PyObject *arg)
{
    const char *endpoint;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(arg, (char **)&endpoint, &len) < 0)
        return NULL;
    if (!f->ninputs || !f->inputs[f->ninputs - 1].from_upstream) {
        PyErr_SetString(PyExc_RuntimeError, "this forwarder has no upstream link");
        return NULL;
    }
    if ((size_t)len >= sizeof f->reconnect_to || memchr(endpoint, 0, (size_t)len)) {
        PyErr_SetString(PyExc_ValueError, "endpoint too long or contains NUL");
        return NULL;
    }
    if (__atomic_load_n(&f->reconnect_pending, __ATOMIC_ACQUIRE))
        Py_RETURN_FALSE;  /* the loop has not taken the previous one yet */
    memcpy(f->reconnect_to, endpoint, (size_t)len);
    f->reconnect_to[len] = 0;
    __atomic_store_n(&f->reconnect_pending, 1, __ATOMIC_RELEASE);
    Py_RETURN_TRUE;
}

/* A per-output value shared with the loop, as a tuple in OUTPUTS order. */
static PyObject *per_output(uint64_t values[OUTS])
{
    return Py_BuildValue("(KKK)", (unsigned long long)LOAD(values[OUT_PUBLISH]),
                         (unsigned long long)LOAD(values[OUT_RELAY]),
                         (unsigned long long)LOAD(values[OUT_STAMPED]));
}

/* An output index given from Python, or -1 with ValueError set if it is out of range. */
static int output_index(int out)
{
    if (out >= 0 && out < OUTS)
        return out;
    PyErr_Format(PyExc_ValueError, "output must be between 0 and %d", OUTS - 1);
    return -1;
}

static PyObject *Forwarder_windows(Forwarder *f, PyObject *Py_UNUSED(ignored))
{
    return per_output(f->window);
}

static PyObject *Forwarder_stalls(Forwarder *f, PyObject *Py_UNUSED(ignored))
{
    return per_output(f->stall);
}

static PyObject *Forwarder_answer_stall(Forwarder *f, PyObject *args)
{
    int out, hold_on;
    unsigned long long number;
    if (!PyArg_ParseTuple(args, "iKp", &out, &number, &hold_on) || output_index(out) < 0)
        return NULL;
    if (!number || number >> 63) {
        PyErr_SetString(PyExc_ValueError, "number must be a hold's number (from stalls())");
        return NULL;
    }
    STORE(f->answer[out], (uint64_t)number << 1 | (uint64_t)(hold_on != 0));
    Py_RETURN_NONE;
}

static PyObject *Forwarder_close_window(Forwarder *f, PyObject *args)
{
    int out;
    unsigned long long seen;
    if (!PyArg_ParseTuple(args, "iK", &out, &seen) || output_index(out) < 0)
        return NULL;
    uint64_t expected = seen;
    int closed = __atomic_compare_exchange_n(&f->window[out], &expected, 0, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return PyBool_FromLong(closed);
}

static PyObject *Forwarder_counters(Forwarder *f, PyObject *Py_UNUSED(ignored))
{
    PyObject *d = PyDict_New();
    for (int i = 0; d && i < C_COUNT; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(LOAD(f->shared[i]));
        if (!v || PyDict_SetItemString(d, COUNTER_NAMES[i], v) < 0) {
            Py_XDECREF(v);
            Py_CLEAR(d);
        } else {
            Py_DECREF(v);
        }
    }
    return d;
}

static PyObject *Forwarder_topic_counters(Forwarder *f, PyObject *Py_UNUSED(ignored))
{
    PyObject *t = PyTuple_New(f->ntopics + 1);
    for (int i = 0; t && i < f->ntopics + 1; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(LOAD(f->topic_shared[i]));
        if (!v) {
            Py_CLEAR(t);
            break;
        }
        PyTuple_SET_ITEM(t, i, v);
    }
    return t;
}

/* Copy a sequence of bytes into data/len (at most TOPICS_CAP); *count grows as they are copied. */
static int copy_topics(PyObject *topics, char **data, size_t *lens, int *count)
{
    PyObject *seq = PySequence_Fast(topics, "topics must be a sequence of bytes");
    if (!seq)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > TOPICS_CAP) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "at most %d topics can be counted", TOPICS_CAP);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        char *bytes;
        Py_ssize_t len;
        if (PyBytes_AsStringAndSize(PySequence_Fast_GET_ITEM(seq, i), &bytes, &len) < 0)
            break;
        data[i] = PyMem_Malloc(len ? (size_t)len : 1);
        if (!data[i]) {
            PyErr_NoMemory();
            break;
        }
        memcpy(data[i], bytes, (size_t)len);
        lens[i] = (size_t)len;
        *count = (int)i + 1;
    }
    Py_DECREF(seq);
    return PyErr_Occurred() ? -1 : 0;
}

static void Forwarder_dealloc(Forwarder *f)
{
    for (int i = 0; i < f->ntopics; i++)
        PyMem_Free(f->topic_data[i]);
    for (int i = 0; i < f->nup_topics; i++)
        PyMem_Free(f->up_topic_data[i]);
    streams_free(&f->stamps);
    streams_free(&f->seen);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static int Forwarder_init(Forwarder *f, PyObject *args, PyObject *kw)
{
    static char *names[] = {"collector", "publish", "push", "max_message_size", "max_frames", "strip_topic",
                            "topics", "upstream", "relay", "node_id", "ingress", "stall_ns", "stall_fd",
                            "stamped", "epoch", "stamp_streams", "upstream_topics", NULL};
    unsigned long long collector, publish, push, max_size = 1 << 20, upstream = 0, relay = 0, ingress = 0;
    unsigned long long stamped = 0, epoch = 0;
    long long stall_ns = 0;
    int max_frames = 16, strip = 1, stall_fd = -1, stamp_streams = 65536;
    PyObject *topics = NULL, *up_topics = NULL;
    const char *node_id = NULL;
    Py_ssize_t node_id_len = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KKK|$KipOKKy#KLiKKiO", names, &collector, &publish, &push,
                                     &max_size, &max_frames, &strip, &topics, &upstream, &relay,
                                     &node_id, &node_id_len, &ingress, &stall_ns, &stall_fd,
                                     &stamped, &epoch, &stamp_streams, &up_topics))
        return -1;
    if (stall_ns < 0) {
        PyErr_SetString(PyExc_ValueError, "stall_ns must not be negative");
        return -1;
    }
    f->stall_ns = stall_ns;
    f->stall_fd = stall_fd;
    if (f->ninputs) {
        PyErr_SetString(PyExc_RuntimeError, "a Forwarder is initialised once");
        return -1;
    }
    if (!collector) {
        PyErr_SetString(PyExc_ValueError, "a collector socket is required");
        return -1;
    }
    if ((upstream || relay) && node_id_len != WIRE_NODE_ID_LEN) {
        PyErr_Format(PyExc_ValueError, "federation needs a node_id of %d bytes", WIRE_NODE_ID_LEN);
        return -1;
    }
    if (node_id && node_id_len == WIRE_NODE_ID_LEN)
        memcpy(f->node_id, node_id, WIRE_NODE_ID_LEN);
    f->relay = (void *)(uintptr_t)relay;
    f->inputs[f->ninputs].socket = (void *)(uintptr_t)collector;
    f->inputs[f->ninputs++].from_upstream = 0;
    if (ingress) {
        f->inputs[f->ninputs].socket = (void *)(uintptr_t)ingress;
        f->inputs[f->ninputs++].from_upstream = 0;
    }
    if (upstream) {
        f->inputs[f->ninputs].socket = (void *)(uintptr_t)upstream;
        f->inputs[f->ninputs++].from_upstream = 1;
    }
    if (topics && copy_topics(topics, f->topic_data, f->topic_len, &f->ntopics) < 0)
        return -1;
    if (up_topics && copy_topics(up_topics, f->up_topic_data, f->up_topic_len, &f->nup_topics) < 0)
        return -1;
    f->stamping = stamped || relay;
    if (f->stamping && !epoch) {
        PyErr_SetString(PyExc_ValueError, "stamping (a stamped or relay output) needs a non-zero epoch");
        return -1;
    }
    if (stamp_streams < 1 || stamp_streams > (1 << 24)) {
        PyErr_SetString(PyExc_ValueError, "stamp_streams must be between 1 and 16777216");
        return -1;
    }
    f->epoch = epoch;
    if ((f->stamping && streams_init(&f->stamps, stamp_streams) < 0) ||
        (upstream && streams_init(&f->seen, stamp_streams) < 0)) {
        PyErr_NoMemory();
        return -1;
    }
    f->publish = f->outs[OUT_PUBLISH] = (void *)(uintptr_t)publish;
    f->outs[OUT_RELAY] = f->relay;
    f->outs[OUT_STAMPED] = (void *)(uintptr_t)stamped;
    f->push = (void *)(uintptr_t)push;
    return set_limits(f, max_size, max_frames, strip);
}

static PyMethodDef Forwarder_methods[] = {
    {"run", (PyCFunction)Forwarder_run, METH_NOARGS,
     "Forward until stopped; releases the GIL. Returns 'drained', 'aborted' or 'terminated'."},
    {"stop", (PyCFunction)Forwarder_stop, METH_VARARGS,
     "stop(abort=False): drain the collector then return, or return at once. Thread-safe."},
    {"set_limits", (PyCFunction)(void (*)(void))Forwarder_set_limits, METH_VARARGS | METH_KEYWORDS,
     "Change max_message_size, max_frames and strip_topic live. Thread-safe."},
    {"set_push_peers", (PyCFunction)Forwarder_set_push_peers, METH_O,
     "Tell the loop how many pullers are connected, to label push drops. Thread-safe."},
    {"set_stamped_peers", (PyCFunction)Forwarder_set_stamped_peers, METH_O,
     "Tell the loop how many connections the stamped output has: with none (and no subscription read "
     "lately) it skips that output's sends. Thread-safe."},
    {"reconnect", (PyCFunction)Forwarder_reconnect, METH_O,
     "reconnect(endpoint: bytes): have the loop connect the upstream link to endpoint afresh (within one "
     "tick); False if the previous request is still pending. Thread-safe."},
    {"windows", (PyCFunction)Forwarder_windows, METH_NOARGS,
     "Per output (OUTPUTS order): the number of the lossy send whose window is open, or 0. Thread-safe."},
    {"stalls", (PyCFunction)Forwarder_stalls, METH_NOARGS,
     "Per output (OUTPUTS order): the number of the hold it is in (a full subscriber queue), or 0. "
     "Thread-safe."},
    {"answer_stall", (PyCFunction)Forwarder_answer_stall, METH_VARARGS,
     "answer_stall(output, number, hold_on): the guard has looked at hold number; hold_on asks the loop "
     "to hold output stall_ns longer (and ask again), False lets it send lossy. Thread-safe."},
    {"close_window", (PyCFunction)Forwarder_close_window, METH_VARARGS,
     "close_window(output, number): close that output's window if no later lossy send reopened it "
     "(the guard has cut the full subscriber); True if closed. Thread-safe."},
    {"counters", (PyCFunction)Forwarder_counters, METH_NOARGS,
     "A snapshot of the counters, at most one batch or one tick stale."},
    {"topic_counters", (PyCFunction)Forwarder_topic_counters, METH_NOARGS,
     "Received messages per counted topic, in the order given, then all others."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ForwarderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fanoutd._forward.Forwarder",
    .tp_basicsize = sizeof(Forwarder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Forwarder(collector, publish, push, *, max_message_size, max_frames, strip_topic, topics=(), "
              "upstream=0, relay=0, node_id=b'', ingress=0, stall_ns=0, stall_fd=-1): socket handles are pyzmq "
              "Socket.underlying addresses (0 disables one); publish and relay are XPUB sockets with "
              "ZMQ_XPUB_NODROP set; topics is an allowlist of topics to count received messages for; upstream "
              "and relay are the federation link in and out, node_id this node's 8-byte id; ingress a PULL "
              "input read like the collector; stall_ns bounds how long output is held when a subscriber is "
              "full, and stall_fd (an eventfd) is written when that starts; stamped an XPUB whose messages end "
              "in a stamp trailer (epoch: this run's, non-zero; stamp_streams: how many topic streams are "
              "kept); upstream_topics the upstream link's subscriptions (gaps are counted for what they cover).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Forwarder_init,
    .tp_dealloc = (destructor)Forwarder_dealloc,
    .tp_methods = Forwarder_methods,
};

#define ZABI_NAME(ret, field, symbol, params) #symbol,
static const char *const ZABI_NAMES[] = {ZABI_FUNCTIONS(ZABI_NAME, zmsg_t, zpollitem_t)};
#define ZABI_COUNT (sizeof ZABI_NAMES / sizeof ZABI_NAMES[0])

/* Resolve every function through the already-loaded object at path (pyzmq's
 * extension).  dlsym on a handle searches that object, then its
 * dependencies, so this reaches the libzmq the extension itself links to
 * (bundled beside it, a system copy, or linked into it) and never another
 * copy that merely happens to be mapped.  Returns the open handle, or NULL
 * with ImportError set. */
static void *resolve(const char *path, void *addr[ZABI_COUNT])
{
    void *handle = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (!handle) {
        PyErr_Format(PyExc_ImportError, "%s is not loaded: %s", path, dlerror());
        return NULL;
    }
    for (size_t i = 0; i < ZABI_COUNT; i++) {
        addr[i] = dlsym(handle, ZABI_NAMES[i]);
        if (!addr[i]) {
            PyErr_Format(PyExc_ImportError, "%s reaches no %s", path, ZABI_NAMES[i]);
            dlclose(handle);
            return NULL;
        }
    }
    return handle;
}

/* The function table for resolved addresses, in ZABI_NAMES order. */
static struct zabi table(void *const addr[ZABI_COUNT])
{
    struct zabi z;
    size_t i = 0;
#define ZABI_SET(ret, field, symbol, params) memcpy(&z.field, &addr[i++], sizeof z.field);
    ZABI_FUNCTIONS(ZABI_SET, zmsg_t, zpollitem_t)
#undef ZABI_SET
    return z;
}

/* (file, load address) of the object that defines addr, or None. */
static PyObject *origin(const void *addr)
{
    Dl_info info;
    if (!addr || !dladdr(addr, &info) || !info.dli_fname)
        Py_RETURN_NONE;
    PyObject *file = PyUnicode_DecodeFSDefault(info.dli_fname);
    if (!file)
        return NULL;
    return Py_BuildValue("(NK)", file, (unsigned long long)(uintptr_t)info.dli_fbase);
}

/* symbol -> (origin through the handle, origin in the global scope).  The
 * global scope (the program, LD_PRELOAD, RTLD_GLOBAL libraries) is searched
 * before the extension's own dependencies when pyzmq's calls are bound, so
 * a hit there is where pyzmq's calls really go. */
static PyObject *origins(void *const addr[ZABI_COUNT])
{
    PyObject *d = PyDict_New();
    for (size_t i = 0; d && i < ZABI_COUNT; i++) {
        PyObject *v = Py_BuildValue("(NN)", origin(addr[i]), origin(dlsym(RTLD_DEFAULT, ZABI_NAMES[i])));
        if (!v || PyDict_SetItemString(d, ZABI_NAMES[i], v) < 0)
            Py_CLEAR(d);
        Py_XDECREF(v);
    }
    return d;
}

static PyObject *inspect_libzmq(PyObject *Py_UNUSED(module), PyObject *args)
{
    const char *path;
    void *addr[ZABI_COUNT];
    if (!PyArg_ParseTuple(args, "s", &path))
        return NULL;
    void *handle = resolve(path, addr);
    if (!handle)
        return NULL;
    int major = 0, minor = 0, patch = 0;
    table(addr).version(&major, &minor, &patch);
    PyObject *result = Py_BuildValue("{s(iii)sN}", "version", major, minor, patch, "functions", origins(addr));
    dlclose(handle);
    return result;
}

static PyObject *bind_libzmq(PyObject *Py_UNUSED(module), PyObject *args)
{
    const char *path;
    void *addr[ZABI_COUNT];
    if (!PyArg_ParseTuple(args, "s", &path))
        return NULL;
    void *handle = resolve(path, addr);
    if (!handle)
        return NULL;
    struct zabi z = table(addr);
    int major = 0, minor = 0, patch = 0;
    z.version(&major, &minor, &patch);
    if (major != ZABI_MAJOR) {
        dlclose(handle);
        PyErr_Format(PyExc_ImportError, "%s reaches libzmq %d.%d.%d, not the %d.x ABI this loop is written for",
                     path, major, minor, patch, ZABI_MAJOR);
        return NULL;
    }
    if (bound) {
        /* The first binding holds its own reference. */
        dlclose(handle);
        if (memcmp(&z, &Z, sizeof z) != 0) {
            PyErr_Format(PyExc_RuntimeError, "the loop is already bound to another libzmq than %s reaches", path);
            return NULL;
        }
        Py_RETURN_NONE;
    }
    /* The handle stays open: the loop calls into it for the life of the process. */
    Z = z;
    bound = 1;
    Py_RETURN_NONE;
}

/* The slow-consumer guard's view of a connection, for many fds at once: a
 * Python loop of ioctl + getsockopt costs about 4 us per connection (40 ms
 * per pass at 10,000 subscribers, which would hold up the hub), this about
 * a tenth of that. Per fd: bytes in the kernel send queue (SIOCOUTQ, -2 if
 * the fd cannot be read), and bytes the peer acknowledged (TCP_INFO
 * tcpi_bytes_acked; -1 where not TCP; 0, unread, when nothing is queued). */
#define TCP_INFO_OPT 11
#define TCP_INFO_LEN 152
#define BYTES_ACKED_AT 120
#define SIOCOUTQ_REQ 0x5411
static long long *scan_fds(PyObject *arg, Py_ssize_t *n_out)
{
    PyObject *seq = PySequence_Fast(arg, "takes a sequence of file descriptors");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int *fds = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *fds);
    long long *out = PyMem_Malloc((size_t)(n ? n : 1) * 2 * sizeof *out);
    if (!fds || !out) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long fd = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (fd == -1 && PyErr_Occurred())
            goto fail;
        fds[i] = (int)fd;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        int queued = 0;
        unsigned char info[TCP_INFO_LEN];
        socklen_t len = sizeof info;
        out[2 * i] = ioctl(fds[i], SIOCOUTQ_REQ, &queued) == 0 ? queued : -2;
        if (queued <= 0) {
            out[2 * i + 1] = 0;  /* nothing waits for it: it cannot be behind, and the guard looks no further */
        } else if (getsockopt(fds[i], IPPROTO_TCP, TCP_INFO_OPT, info, &len) == 0 && len >= BYTES_ACKED_AT + 8) {
            uint64_t acked;
            memcpy(&acked, info + BYTES_ACKED_AT, sizeof acked);
            out[2 * i + 1] = (long long)acked;
        } else {
            out[2 * i + 1] = -1;  /* not TCP (ipc): progress shows in the queue only */
        }
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(fds);
    Py_DECREF(seq);
    *n_out = n;
    return out;
fail:
    PyMem_Free(fds);
    PyMem_Free(out);
    Py_DECREF(seq);
    return NULL;
}

static PyObject *kernel_states(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_ssize_t n;
    long long *out = scan_fds(arg, &n);
    if (!out)
        return NULL;
    PyObject *result = PyList_New(n);
    for (Py_ssize_t i = 0; result && i < n; i++) {
        PyObject *item = out[2 * i] == -2 ? Py_NewRef(Py_None) : Py_BuildValue("(LL)", out[2 * i], out[2 * i + 1]);
        if (!item)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, i, item);
    }
    PyMem_Free(out);
    return result;
}

/* The same scan, answering only for the connections with data waiting in the kernel: at 10,000 idle
 * subscribers the guard's once-a-second pass then builds no Python object per connection. */
static PyObject *kernel_waiting(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_ssize_t n;
    long long *out = scan_fds(arg, &n);
    if (!out)
        return NULL;
    PyObject *result = PyList_New(0);
    for (Py_ssize_t i = 0; result && i < n; i++) {
        if (out[2 * i] <= 0)
            continue;
        PyObject *item = Py_BuildValue("(nLL)", i, out[2 * i], out[2 * i + 1]);
        if (!item || PyList_Append(result, item) < 0)
            Py_CLEAR(result);
        Py_XDECREF(item);
    }
    PyMem_Free(out);
    return result;
}

static PyMethodDef module_methods[] = {
    {"kernel_states", kernel_states, METH_O,
     "kernel_states(fds) -> [(queued bytes, acknowledged bytes or -1) or None]: the kernel's view of each "
     "connection (SIOCOUTQ, TCP_INFO), read without the GIL; None where an fd cannot be read."},
    {"kernel_waiting", kernel_waiting, METH_O,
     "kernel_waiting(fds) -> [(index into fds, queued bytes, acknowledged bytes or -1)]: kernel_states for "
     "only the connections with bytes in their send queue."},
    {"bind_libzmq", bind_libzmq, METH_VARARGS,
     "bind_libzmq(path): make the loop call the libzmq that the loaded object at path (pyzmq's extension) "
     "reaches. Idempotent; refuses a libzmq other than 4.x or a second, different binding."},
    {"inspect_libzmq", inspect_libzmq, METH_VARARGS,
     "inspect_libzmq(path) -> {'version': (major, minor, patch), 'functions': {symbol: (loop, global)}}: "
     "what bind_libzmq(path) would bind, without binding. loop and global are (file, load address) or None: "
     "the object dlsym reaches through path's handle, and the one the global scope resolves the symbol to."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fanoutd._forward",
    .m_doc = "The native forwarding loop of fanoutd.",
    .m_size = -1,
    .m_methods = module_methods,
};

/* COUNTER_NAMES as a tuple of str, or NULL with an exception set. */
static PyObject *counter_names(void)
{
    PyObject *names = PyTuple_New(C_COUNT);
    for (int i = 0; names && i < C_COUNT; i++) {
        PyObject *name = PyUnicode_FromString(COUNTER_NAMES[i]);
        if (!name)
            Py_CLEAR(names);
        else
            PyTuple_SET_ITEM(names, i, name);
    }
    return names;
}

PyMODINIT_FUNC PyInit__forward(void)
{
    if (PyType_Ready(&ForwarderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    PyObject *names = counter_names();
    int rc = names ? PyModule_AddObjectRef(m, "COUNTER_NAMES", names) : -1;
    Py_XDECREF(names);
    PyObject *outputs = rc < 0 ? NULL : Py_BuildValue("(sss)", "publish", "relay", "stamped");
    rc = outputs ? PyModule_AddObjectRef(m, "OUTPUTS", outputs) : -1;
    Py_XDECREF(outputs);
    if (rc < 0 || PyModule_AddObjectRef(m, "Forwarder", (PyObject *)&ForwarderType) < 0 ||
        PyModule_AddIntConstant(m, "ZMQ_ABI_MAJOR", ZABI_MAJOR) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
