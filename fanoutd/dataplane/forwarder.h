/*
 * fanoutd/dataplane/forwarder.h: the Forwarder (the forwarding loop's state)
 * and the contract between the two threads that touch it.
 *
 * The hub is the Python main thread (gevent): it constructs the Forwarder,
 * changes its limits, runs the slow-consumer guard and reads the counters.
 * The loop is the engine's worker thread inside Forwarder.run(), with the GIL
 * released. Every field below says who writes it, who reads it and how the
 * two are ordered. Fields set at construction are written before the loop
 * thread is started (starting the thread orders them) and never again.
 *
 * Included by _forward.c only, after <Python.h>, zmq_abi.h, wire.h,
 * _streams.h and senders.h.
 */
#ifndef FANOUTD_FORWARDER_H
#define FANOUTD_FORWARDER_H

#include <stdint.h>

/* Counter slots, in the order of COUNTER_NAMES (the names metrics are built from; the time outputs spent
 * stalled is counted under *_held_ns). */
enum {
    C_RECEIVED, C_RECEIVED_BYTES, C_PUBLISHED, C_PUBLISH_DROPPED,
    C_PUSHED, C_PUSH_NO_PULLER, C_PUSH_HWM,
    C_REJECT_OVERSIZE, C_REJECT_FRAMES, C_TICKS,
    C_RECEIVED_UPSTREAM, C_RELAYED, C_REJECT_LOOP, C_REJECT_ROUTE,
    C_RELAY_DROPPED, C_PUBLISH_STALLS, C_RELAY_STALLS,
    C_STAMPED, C_STAMPED_DROPPED, C_STAMPED_STALLS, C_STREAM_EVICTIONS,
    C_UPSTREAM_GAPS, C_UPSTREAM_UNTRACKED, C_UPSTREAM_HELLOS, C_REJECT_NOT_RELAY,
    C_PUBLISH_STALLED_NS, C_RELAY_STALLED_NS, C_STAMPED_STALLED_NS,
    C_HISTORY_BYTES, C_HISTORY_EVICTED, C_REPAIRED,  /* history.c, repair.c (C_HISTORY_BYTES: a gauge) */
    C_REPAIR_RANGE, C_REPAIR_HEADS, C_REPAIR_UNSENT, C_REPAIR_MALFORMED, C_REPAIR_OVERSIZE, C_REPAIR_FLOOD,
    C_PUSH_MAX_PENDING,
    C_UPSTREAM_REPAIRED, C_UPSTREAM_UNREPAIRED, C_UPSTREAM_DUPLICATES,  /* uprepair.c */
    /* subs.c: subscriptions refused, per output (OUT_* order) and bound (connection, address, socket); then the
     * subscriptions each output holds (gauges) */
    C_SUBS_REFUSED, C_SUBSCRIPTIONS = C_SUBS_REFUSED + 9,
    C_COUNT = C_SUBSCRIPTIONS + 3
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
    "history_bytes", "history_evicted", "repaired_messages",
    "repair_range", "repair_heads", "repair_unsent", "repair_malformed", "repair_oversize", "repair_flood",
    "push_dropped_max_pending",
    "upstream_repaired_messages", "upstream_unrepaired_messages", "upstream_duplicates",
    "publish_subs_refused_connection", "publish_subs_refused_address", "publish_subs_refused_socket",
    "relay_subs_refused_connection", "relay_subs_refused_address", "relay_subs_refused_socket",
    "stamped_subs_refused_connection", "stamped_subs_refused_address", "stamped_subs_refused_socket",
    "publish_subscriptions", "relay_subscriptions", "stamped_subscriptions",
};

/* The fanning-out outputs (XPUB sockets with ZMQ_XPUB_NODROP), in the order of the module's OUTPUTS. */
enum { OUT_PUBLISH = 0, OUT_RELAY = 1, OUT_STAMPED = 2, OUTS = 3 };

/* How the hub asks the loop to end (mode only ever grows). */
enum { MODE_RUN = 0, MODE_DRAIN = 1, MODE_ABORT = 2 };

/* The loop's inputs, read in this order: the collector, the PULL ingress, the upstream link. */
#define INPUTS_CAP 3

/* Relaxed atomic access: the memory order of every shared field that is not said otherwise. */
#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)

typedef struct { uint64_t epoch, stream, seq; uint16_t keylen; } stamp_t;
typedef struct ledger ledger_t;  /* bytes libzmq holds for one output's readers (held.c) */
typedef struct history history_t;  /* the repair history (history.c) */
typedef struct repair repair_t;    /* the repair endpoint's state (repair.c) */
typedef struct uprepair uprepair_t;  /* an edge asking its hub for what its upstream link missed (uprepair.c) */
typedef struct subs subs_t;        /* the outputs' subscriptions, counted and bounded (subs.c) */

typedef struct {
    PyObject_HEAD

    /* --- Set at construction, read-only afterwards (by both threads). --- */
    void *publish, *push, *relay;  /* socket handles; NULL: no such output */
    void *outs[OUTS];              /* publish, relay, stamped: the fanning-out outputs */
    struct { void *socket; int from_upstream; } inputs[INPUTS_CAP];
    int ninputs;                   /* the upstream link, when there is one, is the last input */
    char node_id[WIRE_NODE_ID_LEN];
    int stamping;                  /* a stamped or relay output: each message gets a stamp */
    uint64_t epoch;
    int stall_fd;                  /* the eventfd the loop writes when a stall begins; -1: none */
    /* One ledger per fanning-out output (NULL: no such output). Its own allocation, outliving the
     * Forwarder while libzmq holds wrapped frames: their free callbacks (any thread, even inside
     * zmq_ctx_term) update it with atomics (held.c). */
    ledger_t *held[OUTS];
    ledger_t *push_held;           /* likewise for the PUSH output (NULL: none) */
    /* The repair history and endpoint (NULL: none), the loop's alone once it runs: it records, evicts and
     * serves in its own thread, so nothing of them is shared but the counters (history.c, repair.c). */
    history_t *history;
    repair_t *repair;
    repair_t *relay_repair;        /* the relay's repair endpoint: the same history, replies with their route */
    uprepair_t *uprepair;          /* the edge's side: the upstream link's gaps asked of the hub (NULL: not asked) */
    /* The outputs' subscriptions per connection, address and output (never NULL once constructed): the loop's
     * alone but for the bounds (hub writes, relaxed) and two rings, closed connections in and refusals out,
     * each single-producer single-consumer with acquire/release (subs.c has the contract). */
    subs_t *subs;
    int64_t stall_ns;              /* how long a stall lasts before the loop asks the guard again; 0: lossy at once */
    int ntopics;                   /* per-topic counting (off when 0): the allowlist */
    char *topic_data[TOPICS_CAP];
    size_t topic_len[TOPICS_CAP];
    int nup_topics;                /* the upstream link's subscriptions: its gaps count only under them */
    char *up_topic_data[TOPICS_CAP];
    size_t up_topic_len[TOPICS_CAP];

    /* --- Hub writes, loop reads: relaxed atomics, each field on its own. --- */
    int mode;                      /* MODE_*: stop() raises it, the loop checks it each pass and while stalled */
    uint64_t max_size;             /* set_limits(): a message sees each limit old or new, never torn */
    int max_frames, strip_topic;
    int push_peers;                /* set_push_peers(): labels a refused push (no puller, or high-water mark) */
    int stamped_peers;             /* set_stamped_peers(): with none, the stamped output's sends are skipped */
    uint64_t stall_above;          /* set_limits(): an output holding more bytes than this stalls; 0: no bound */
    uint64_t resume_below;         /* set_limits(): held back by stall_above, it is offered again at this; 0: at
                                    * stall_above */
    uint64_t push_above;           /* set_limits(): a message finding PUSH holding more bytes is dropped; 0: none */
    /* The guard's answer to stall number n: n << 1 | 1 "stall on", n << 1 "no" (send lossy). The number
     * ties the answer to the stall it was given for; the loop ignores an answer to an earlier one. */
    uint64_t answer[OUTS];

    /* --- Loop writes, hub reads: relaxed atomics. --- */
    uint64_t shared[C_COUNT];              /* the counters, published once per batch, tick or "stall on" */
    uint64_t topic_shared[TOPICS_CAP + 1]; /* received per counted topic, then "other"; likewise */
    uint64_t stall[OUTS];                  /* the number of the stall the output is in; 0: none (stalls()) */
    /* And the stall_fd eventfd: written (a wake-up, value 1) by the loop when a stall begins or a window
     * opens, read by the guard in the hub; a full eventfd already says it. The hub closes it only once the
     * loop has returned. */

    /* --- Both write: the loop opens, the hub closes. --- */
    /* The number of the lossy send that opened the output's window; 0: closed. The loop stores a fresh
     * number (relaxed); the hub's close_window() compares-and-swaps the number it handled for 0 (relaxed),
     * so it never closes a window a later lossy send reopened. */
    uint64_t window[OUTS];

    /* --- The reconnect mailbox: one slot, acquire/release. --- */
    /* The hub writes reconnect_to only after loading reconnect_pending == 0 (acquire), then stores 1
     * (release); the loop loads 1 (acquire), reads reconnect_to, connects, and stores 0 (release). */
    char reconnect_to[512];
    int reconnect_pending;

    /* --- The senders' box: producer connections by Socket-Type; each field's contract is in senders.h. --- */
    senders_box senders;

    /* --- Under the GIL: run() sets and clears it while holding the GIL, never inside the loop. --- */
    int running;                   /* run() refuses to start twice */

    /* --- The loop's alone (no other thread reads them). --- */
    uint64_t local[C_COUNT];               /* counted per message, published to shared */
    uint64_t topic_local[TOPICS_CAP + 1];  /* likewise to topic_shared */
    uint64_t lossy_sends;    /* numbers lossy sends, so the guard closes only the window it handled */
    uint64_t stalls_begun;   /* numbers stalls, so an answer is to the stall it was given for */
    int64_t tick_ns;         /* the time at the start of this pass over the inputs */
    int64_t stamped_heard;   /* when the stamped output last had a subscription from a subscriber */
    uint64_t last_stream;    /* the last stream id given */
    stream_table stamps;     /* topic key -> stream id, last sequence given */
    stream_table seen;       /* upstream (epoch, stream) -> last sequence seen */
    zmsg_t *parts;           /* FRAMES_CAP + 1 of them on cache lines (ZMSG_LINE), its own allocation */
    zmsg_t *scratch;         /* where a frame past max_frames is read and dropped: after the parts */
} Forwarder;

/* Publish the loop's counters to the hub: relaxed stores, once per batch or tick, when a stall begins and at
 * each "stall on" the loop takes (a turn of the loop too: ticks and the time held move while the guard keeps
 * answering), so counting costs no locked instruction per message (the hub's view is at most that stale). */
static void publish_counters(Forwarder *f)
{
    for (int i = 0; i < C_COUNT; i++)
        STORE(f->shared[i], f->local[i]);
    for (int i = 0; i < f->ntopics + 1; i++)
        STORE(f->topic_shared[i], f->topic_local[i]);
}

/* The upstream link's gaps, asked of the hub (uprepair.c, included after the loop that calls it). */
static void uprepair_gap(Forwarder *f, uint64_t epoch, uint64_t stream, uint64_t first, uint64_t last, int front);
static int uprepair_pass(Forwarder *f);
static void *uprepair_socket(const uprepair_t *u);
static void uprepair_reconnect(Forwarder *f);
static void uprepair_linked(Forwarder *f);

/* The libzmq functions, set once by bind_libzmq before any loop runs (libzmq.c). */
static struct zabi Z;
static int bound;

#endif
