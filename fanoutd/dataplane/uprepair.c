/*
 * fanoutd/dataplane/uprepair.c: an edge repairing the gaps of its upstream
 * link from its hub's relay_repair endpoint (docs/concepts.md, "Federation:
 * past one machine").
 *
 * The upstream link is read by the loop, so the loop owns the DEALER that asks
 * for what the link missed (upstream_repair): track_upstream (stamps.c) queues
 * each gap it counts, and once a pass the loop sends what it may, reads the
 * answers and hands each repaired message to forward_parts (loop.c) like one
 * read from the link, where it is stamped afresh in this node's own sequence
 * space: the edge's subscribers see it as a new message after the gap. Nothing
 * here blocks the loop: every send is ZMQ_DONTWAIT (a request the socket
 * refuses waits for a later pass), at most UPREPAIR_IN_FLIGHT requests await
 * an answer at once, at most UPREPAIR_QUEUE gaps wait to be asked for, and at
 * most BATCH answers are read a pass. What cannot be repaired is counted
 * exactly (upstream_unrepaired_messages): a gap past the queue, a range the
 * hub names as gone (evicted, another epoch, unknown), or one it did not
 * answer within UPREPAIR_TIMEOUT_NS. A range past the hub's bound per reply
 * (LIMIT) is asked for again from where the reply stopped.
 *
 * A gap at the end of a stream (the link cut, nothing more sent on that stream) shows in no later message, so
 * at each (re)connect of the link (the relay's hello) the loop asks the hub for the heads of the streams its
 * upstream subscriptions (collector_topics) cover, one prefix at a time, and queues the range from the last
 * sequence it saw of each stream to the head the hub names. Only streams it has seen (of that epoch): a stream
 * it never saw is one its subscribers never saw either, as on the link itself, where a stream's first sighting
 * starts its count. The head may name messages still on their way over the new link (the answer comes over
 * another connection): the range is claimed (track_upstream, stamps.c), and a claimed message arriving live
 * is refused as a duplicate (upstream_duplicates), so each is delivered once, by the repair.
 *
 * Part of the _forward.c translation unit (included there, not compiled alone).
 */

#define UPREPAIR_IN_FLIGHT 4                    /* requests awaiting an answer (the hub answers 4 a pass, 100/s) */
#define UPREPAIR_QUEUE 256                      /* gaps waiting to be asked for; a gap past them is not repaired */
#define UPREPAIR_TIMEOUT_NS 10000000000LL       /* a gap not answered (or not sendable) this long is not repaired */

typedef struct {
    uint64_t epoch, stream, first, last;
    int64_t at;           /* queued, or sent */
    uint64_t delivered;   /* messages of it the hub has supplied */
    uint32_t tag;         /* in flight: its request's tag; 0: a free slot */
} upgap_t;

struct uprepair {
    void *sock;
    char endpoint[512];   /* the hub's relay_repair, connected afresh when the link is (take_reconnect) */
    uint32_t last_tag;
    upgap_t flight[UPREPAIR_IN_FLIGHT];
    upgap_t queue[UPREPAIR_QUEUE];  /* a ring: queue[(head + i) % UPREPAIR_QUEUE], i < count */
    uint32_t head, count;
    /* The heads asked for at a (re)connect of the link: one HEADS request per upstream subscription, in turn. */
    int heads_next;       /* the subscription to ask for next (up_topic_data); -1: no round under way */
    uint32_t heads_tag;   /* the request awaiting its answer; 0: none */
    int64_t heads_at;     /* when it was sent, or when the subscription became the next one to ask for */
};

static uprepair_t *uprepair_new(void *sock, const char *endpoint)
{
    uprepair_t *u = calloc(1, sizeof *u);
    if (u) {
        u->sock = sock;
        u->heads_next = -1;
        snprintf(u->endpoint, sizeof u->endpoint, "%s", endpoint ? endpoint : "");
    }
    return u;
}

/* Connect the repair socket afresh, as the hub's guard of the link asks for the link itself: libzmq never
 * retries a connection the hub's ZAP handler refused, and the link and this socket are refused together
 * (relay_repair has the relay's access control). Requests in flight on the old connection time out. */
static void uprepair_reconnect(Forwarder *f)
{
    uprepair_t *u = f->uprepair;
    if (!u->endpoint[0])
        return;
    /* as take_reconnect: a refused connection may be gone already (ENOENT), and connect fails only as the
     * context terminates, which the next socket call reports */
    (void)!Z.disconnect(u->sock, u->endpoint);
    (void)!Z.connect(u->sock, u->endpoint);
}

static void *uprepair_socket(const uprepair_t *u)
{
    return u->sock;
}

static uint32_t next_tag(uprepair_t *u)
{
    return ++u->last_tag ? u->last_tag : ++u->last_tag;  /* 0 marks a free slot */
}

/* The link is (re)connected (its relay's hello): a round of HEADS requests starts, a round under way over. */
static void uprepair_linked(Forwarder *f)
{
    uprepair_t *u = f->uprepair;
    u->heads_next = 0;
    u->heads_tag = 0;  /* an answer to the old round is read and dropped */
    u->heads_at = f->tick_ns;
}

/* On to the next subscription of the round (the last one answered, unsendable or unanswered too long). */
static void heads_next(Forwarder *f, uprepair_t *u)
{
    u->heads_tag = 0;
    u->heads_next++;
    u->heads_at = f->tick_ns;
}

/* Send the round's next HEADS request unless one awaits its answer: 0, or -1 when libzmq failed (errno_). */
static int uprepair_ask_heads(Forwarder *f, uprepair_t *u)
{
    if (u->heads_tag && f->tick_ns - u->heads_at > UPREPAIR_TIMEOUT_NS)
        heads_next(f, u);  /* unanswered: that subscription's tails are found at their next message, as before */
    while (!u->heads_tag && u->heads_next >= 0) {
        if (u->heads_next >= f->nup_topics) {
            u->heads_next = -1;
            return 0;
        }
        size_t len = f->up_topic_len[u->heads_next];
        if (len > WIRE_STREAM_KEY_CAP || f->tick_ns - u->heads_at > UPREPAIR_TIMEOUT_NS) {
            heads_next(f, u);  /* longer than any stream key (it covers none), or unsendable all that time */
            continue;
        }
        uint32_t tag = next_tag(u);
        zmsg_t m ZMSG_LINE;
        unsigned char *p = trailer_head(&m, WIRE_HEAD_LEN + WIRE_REPAIR_TAG_LEN + len, WIRE_REPAIR_HEADS);
        if (!p)
            return -1;
        put_u32(p, tag);
        memcpy(p + WIRE_REPAIR_TAG_LEN, f->up_topic_data[u->heads_next], len);
        if (send_now(&m, u->sock, Z_DONTWAIT) < 0) {
            int err = Z.errno_();
            Z.msg_close(&m);
            return err == EAGAIN ? 0 : -1;  /* a later pass tries again */
        }
        u->heads_tag = tag;
        u->heads_at = f->tick_ns;
    }
    return 0;
}

/* A HEADS answer (its body after the head): queue, for each stream of it this node has seen, the range from the
 * last sequence seen to the hub's head, counted as a gap and claimed (track_upstream). A stream the answer
 * leaves out (MORE: past the hub's bound per answer) is found at its next message, as before. */
static void uprepair_heads(Forwarder *f, uprepair_t *u, const unsigned char *b, size_t len)
{
    heads_next(f, u);
    if (len < WIRE_REPAIR_TAG_LEN + 10)
        return;
    uint64_t epoch = get_u64(b + WIRE_REPAIR_TAG_LEN);
    size_t count = (size_t)(b[WIRE_REPAIR_TAG_LEN + 8] << 8 | b[WIRE_REPAIR_TAG_LEN + 9]);
    size_t at = WIRE_REPAIR_TAG_LEN + 10;
    for (size_t i = 0; i < count && at + 17 <= len; i++) {
        uint64_t stream = get_u64(b + at), seq = get_u64(b + at + 8);
        at += 17 + (size_t)b[at + 16];  /* stream, sequence, key length, key */
        unsigned char key[16];
        put_u64(key, epoch);
        put_u64(key + 8, stream);
        stream_entry *e = at <= len ? streams_find(&f->seen, key, sizeof key) : NULL;
        if (!e || seq <= e->seq)
            continue;
        f->local[C_UPSTREAM_GAPS] += seq - e->seq;
        uprepair_gap(f, epoch, stream, e->seq + 1, seq, 0);
        e->seq = seq;
        e->stream = 1;  /* claimed: what of it still comes over the link is refused, the repair delivers it */
    }
}

static void unrepaired(Forwarder *f, uint64_t first, uint64_t last)
{
    f->local[C_UPSTREAM_UNREPAIRED] += last - first + 1;
}

/* Queue a gap of the upstream link, sequences first..last of (epoch, stream), to be asked for; at the front for
 * the rest of a range a reply left out. One continuing the last queued gap of its stream joins it. */
static void uprepair_gap(Forwarder *f, uint64_t epoch, uint64_t stream, uint64_t first, uint64_t last, int front)
{
    uprepair_t *u = f->uprepair;
    if (!u)
        return;
    if (!front && u->count) {
        upgap_t *tail = &u->queue[(u->head + u->count - 1) % UPREPAIR_QUEUE];
        if (tail->epoch == epoch && tail->stream == stream && tail->last + 1 == first) {
            tail->last = last;
            return;
        }
    }
    if (u->count == UPREPAIR_QUEUE) {
        unrepaired(f, first, last);
        return;
    }
    uint32_t at = front ? (u->head + UPREPAIR_QUEUE - 1) % UPREPAIR_QUEUE : (u->head + u->count) % UPREPAIR_QUEUE;
    if (front)
        u->head = at;
    u->count++;
    u->queue[at] = (upgap_t){.epoch = epoch, .stream = stream, .first = first, .last = last, .at = f->tick_ns};
}

/* Send queued gaps while slots are free and the socket takes them: 0, or -1 when libzmq failed (errno_). */
static int uprepair_send(Forwarder *f, uprepair_t *u)
{
    while (u->count) {
        upgap_t *g = &u->queue[u->head];
        if (f->tick_ns - g->at > UPREPAIR_TIMEOUT_NS) {  /* the hub's endpoint unreachable all that time */
            unrepaired(f, g->first, g->last);
            u->head = (u->head + 1) % UPREPAIR_QUEUE;
            u->count--;
            continue;
        }
        int slot = 0;
        while (slot < UPREPAIR_IN_FLIGHT && u->flight[slot].tag)
            slot++;
        if (slot == UPREPAIR_IN_FLIGHT)
            return 0;
        uint32_t tag = next_tag(u);
        zmsg_t m ZMSG_LINE;
        unsigned char *p = trailer_head(&m, WIRE_HEAD_LEN + WIRE_REPAIR_RANGE_LEN, WIRE_REPAIR_RANGE);
        if (!p)
            return -1;
        put_u32(p, tag);
        put_u64(p + 4, g->epoch);
        put_u64(p + 12, g->stream);
        put_u64(p + 20, g->first);
        put_u64(p + 28, g->last);
        if (send_now(&m, u->sock, Z_DONTWAIT) < 0) {
            int err = Z.errno_();
            Z.msg_close(&m);
            return err == EAGAIN ? 0 : -1;  /* no hub connected, or its queue full: a later pass tries again */
        }
        u->flight[slot] = *g;
        u->flight[slot].tag = tag;
        u->flight[slot].at = f->tick_ns;
        u->head = (u->head + 1) % UPREPAIR_QUEUE;
        u->count--;
    }
    return 0;
}

/* Settle an END answer: each run it names gone is counted, a run past the reply's bound asked for again. */
static void uprepair_end(Forwarder *f, upgap_t *g, const unsigned char *d, size_t len)
{
    const unsigned char *runs = d + WIRE_HEAD_LEN + WIRE_REPAIR_RANGE_LEN;
    size_t n = len >= WIRE_HEAD_LEN + WIRE_REPAIR_RANGE_LEN + 2 ? (size_t)(runs[0] << 8 | runs[1]) : 0;
    int whole = n && len == WIRE_HEAD_LEN + WIRE_REPAIR_RANGE_LEN + 2 + n * WIRE_REPAIR_RUN_LEN;
    uint64_t named = 0;
    for (size_t i = 0; whole && i < n; i++) {
        const unsigned char *r = runs + 2 + i * WIRE_REPAIR_RUN_LEN;
        uint64_t first = get_u64(r), last = get_u64(r + 8);
        if (first < g->first || last > g->last || first > last)
            break;  /* not of this request: counted below as not supplied */
        named += last - first + 1;
        if (r[16] == WIRE_GONE_LIMIT)
            uprepair_gap(f, g->epoch, g->stream, first, last, 1);
        else
            unrepaired(f, first, last);
    }
    uint64_t size = g->last - g->first + 1;
    if (named + g->delivered < size)  /* neither supplied nor named: a malformed END, or a reply cut short */
        f->local[C_UPSTREAM_UNREPAIRED] += size - named - g->delivered;
    g->tag = 0;
}

/* Read (and drop) what is left of a message after its first frame: 0, or -1 when libzmq failed. */
static int drain_rest(void *sock, zmsg_t *first)
{
    int more = Z.msg_more(first);
    while (more) {
        zmsg_t m ZMSG_LINE;
        if (Z.msg_init(&m) < 0 || Z.msg_recv(&m, sock, 0) < 0)
            return -1;
        more = Z.msg_more(&m);
        Z.msg_close(&m);
    }
    return 0;
}

/* Read one answer: 1 read, 0 none waiting, -1 when libzmq failed (errno_). */
static int uprepair_read(Forwarder *f, uprepair_t *u)
{
    zmsg_t head ZMSG_LINE;
    if (Z.msg_init(&head) < 0)
        return -1;
    if (Z.msg_recv(&head, u->sock, Z_DONTWAIT) < 0) {
        int err = Z.errno_();
        Z.msg_close(&head);
        return err == EAGAIN ? 0 : -1;
    }
    const unsigned char *d = Z.msg_data(&head);
    size_t len = Z.msg_size(&head);
    upgap_t *g = NULL;
    int ours = len >= WIRE_HEAD_LEN + WIRE_REPAIR_TAG_LEN && memcmp(d, WIRE_MAGIC, WIRE_MAGIC_LEN) == 0 &&
               d[4] == WIRE_VERSION;
    const unsigned char *t = d + WIRE_HEAD_LEN;
    uint32_t tag = ours ? (uint32_t)t[0] << 24 | (uint32_t)t[1] << 16 | (uint32_t)t[2] << 8 | t[3] : 0;
    int heads = ours && tag && tag == u->heads_tag && !Z.msg_more(&head) &&
                (d[5] & ~WIRE_REPAIR_MORE) == (WIRE_REPAIR_ANSWER | WIRE_REPAIR_HEADS);
    if (ours && (d[5] & ~WIRE_REPAIR_END) == (WIRE_REPAIR_ANSWER | WIRE_REPAIR_RANGE))
        for (int i = 0; i < UPREPAIR_IN_FLIGHT && !g; i++)
            g = u->flight[i].tag == tag ? &u->flight[i] : NULL;
    if (!g || (d[5] & WIRE_REPAIR_END) || !Z.msg_more(&head)) {
        if (g && (d[5] & WIRE_REPAIR_END))
            uprepair_end(f, g, d, len);
        if (heads)
            uprepair_heads(f, u, t, len - WIRE_HEAD_LEN);
        /* anything else (an answer to a request given up on, already counted) is read and dropped */
        int rc = drain_rest(u->sock, &head);
        Z.msg_close(&head);
        return rc < 0 ? -1 : 1;
    }
    Z.msg_close(&head);
    zmsg_t *p = f->parts;  /* the message, as the hub's relay sent it: delivered like one read from the link */
    if (Z.msg_init(&p[0]) < 0 || Z.msg_recv(&p[0], u->sock, 0) < 0)
        return -1;
    int n, overflow;
    uint64_t total;
    if (read_rest(f, u->sock, LOAD(f->max_frames) + 1, &n, &total, &overflow) < 0)
        return -1;
    g->delivered++;
    f->local[C_UPSTREAM_REPAIRED]++;
    return forward_parts(f, n, total, overflow, FROM_REPAIR) < 0 ? -1 : 1;
}

/* One pass's share: read up to BATCH answers, give up on requests unanswered too long, ask for the heads after a
 * (re)connect, send queued gaps. 0, or -1 when libzmq failed (errno_). */
static int uprepair_pass(Forwarder *f)
{
    uprepair_t *u = f->uprepair;
    for (int i = 0; i < BATCH; i++) {
        int rc = uprepair_read(f, u);
        if (rc <= 0) {
            if (rc < 0)
                return -1;
            break;
        }
    }
    for (int i = 0; i < UPREPAIR_IN_FLIGHT; i++) {
        upgap_t *g = &u->flight[i];
        if (g->tag && f->tick_ns - g->at > UPREPAIR_TIMEOUT_NS) {
            uint64_t size = g->last - g->first + 1;
            f->local[C_UPSTREAM_UNREPAIRED] += size > g->delivered ? size - g->delivered : 0;
            g->tag = 0;
        }
    }
    if (uprepair_ask_heads(f, u) < 0)
        return -1;
    return uprepair_send(f, u);
}
