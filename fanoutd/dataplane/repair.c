/*
 * fanoutd/dataplane/repair.c: the repair endpoint, a ROUTER the loop serves
 * from the history (history.c) between passes over its inputs, and at each
 * retry while a stall holds its output (fanout.c), so paced producers never
 * keep a cut-off subscriber from its repair.
 *
 * Served in the loop, which owns the socket, the history and the stamper's
 * table: a request is answered from a history that nothing can evict while
 * the answer is built (eviction runs in this thread too), and no lock is
 * taken on the per-message path. The loop is never held up by it: each pass
 * reads at most REPAIR_READ_PER_PASS requests and answers at most
 * REPAIR_SERVED_PER_PASS, each reply at most REPAIR_MAX_MESSAGES messages
 * and REPAIR_MAX_BYTES bytes; every send is ZMQ_DONTWAIT, and the ROUTER has
 * ZMQ_ROUTER_MANDATORY, so a reply to a peer that is gone or full is
 * abandoned and counted (result "unsent"), never waited for. Requests per
 * peer (by routing id) are bounded by a token bucket; a request past it, or
 * one that is malformed or too large, gets no answer at all, only a count.
 * The format is wire.h's, specified in clients/README.md ("Repair").
 *
 * Part of the _forward.c translation unit (included there, not compiled alone).
 */

#define REPAIR_SERVED_PER_PASS 4     /* requests answered per pass of the loop */
#define REPAIR_READ_PER_PASS 64      /* requests read per pass (refusing one costs little) */
#define REPAIR_MAX_MESSAGES 1000     /* messages per RANGE reply; the rest is named LIMIT */
#define REPAIR_MAX_BYTES (4u << 20)  /* frame bytes per RANGE reply (the first message always goes) */
#define REPAIR_RUNS_MAX 64           /* runs an END names; past them, LIMIT */
#define HEADS_MAX_STREAMS 1000       /* streams per HEADS answer; past them, MORE */
#define HEADS_MAX_BYTES 65536        /* bytes per HEADS answer; likewise */
#define REPAIR_RATE 100              /* requests per second per peer, and the burst */
#define REPAIR_RATE_SLOTS 1024       /* peers hash into this many buckets (colliding peers share one) */

struct repair {
    void *sock;
    int fd;     /* ZMQ_FD: readable when the socket has commands to take, among them "a request arrived" */
    int route;  /* the relay's repair endpoint (relay_repair): replies carry the route, as the relay sent them */
    struct { double tokens; int64_t at; } rate[REPAIR_RATE_SLOTS];
    unsigned char heads[HEADS_MAX_BYTES];
};

typedef struct { uint64_t first, last; int reason; } run_t;

static repair_t *repair_new(void *sock, int route)
{
    repair_t *r = calloc(1, sizeof *r);
    size_t len = sizeof r->fd;
    if (!r)
        return NULL;
    if (Z.getsockopt(sock, Z_FD, &r->fd, &len) < 0) {
        free(r);
        return NULL;
    }
    r->sock = sock;
    r->route = route;
    return r;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Whether the peer (routing id) may have another request answered now: a token bucket per hash slot. */
static int repair_allowed(repair_t *r, zmsg_t *id, int64_t now)
{
    uint64_t key = stream_hash(Z.msg_data(id), Z.msg_size(id));
    __typeof__(r->rate[0]) *b = &r->rate[key & (REPAIR_RATE_SLOTS - 1)];
    if (!b->at)
        b->tokens = REPAIR_RATE;
    else
        b->tokens += (double)(now - b->at) * 1e-9 * REPAIR_RATE;
    if (b->tokens > REPAIR_RATE)
        b->tokens = REPAIR_RATE;
    b->at = now;
    if (b->tokens < 1)
        return 0;
    b->tokens -= 1;
    return 1;
}

/* Send one frame (consumed when queued, closed otherwise); -1 if refused: a peer gone (EHOSTUNREACH) or full
 * (EAGAIN), which only the routing id's frame can be, the rest of a message then follows it. */
static int repair_send(repair_t *r, zmsg_t *m, int more)
{
    if (send_now(m, r->sock, Z_DONTWAIT | (more ? Z_SNDMORE : 0)) < 0) {
        Z.msg_close(m);
        return -1;
    }
    return 0;
}

static int send_routing_id(repair_t *r, zmsg_t *id)
{
    zmsg_t m ZMSG_LINE;
    return copy_part(&m, id) < 0 ? -1 : repair_send(r, &m, 1);
}

/* Send one held message, as the stamped output (or, on relay_repair, the relay) sent it, behind an answer head
 * (kind: RANGE, or LAST for a last value); -1 if it could not go. */
static int send_repaired(Forwarder *f, repair_t *r, zmsg_t *id, uint32_t tag, hentry_t *e, int kind)
{
    zmsg_t m ZMSG_LINE;
    unsigned char *p;
    if (send_routing_id(r, id) < 0 || !(p = trailer_head(&m, WIRE_HEAD_LEN + WIRE_REPAIR_TAG_LEN,
                                                          WIRE_REPAIR_ANSWER | kind)))
        return -1;
    put_u32(p, tag);
    if (repair_send(r, &m, 1) < 0)
        return -1;
    for (int i = 0; i < e->nframes; i++)
        if (copy_part(&m, &e->frames[i]) < 0 || repair_send(r, &m, 1) < 0)
            return -1;
    stamp_t s = {f->epoch, e->stream, e->seq, e->keylen};
    return make_trailer(f, &m, &s, r->route, hentry_route(e), e->hops) < 0 ? -1 : repair_send(r, &m, 0);
}

/* Name sequences first..last as gone for reason, joined to the run before when it continues it. */
static void add_run(run_t *runs, int *n, uint64_t first, uint64_t last, int reason)
{
    if (*n && runs[*n - 1].reason == reason && runs[*n - 1].last + 1 == first)
        runs[*n - 1].last = last;
    else
        runs[(*n)++] = (run_t){first, last, reason};
}

/* The last sequence the stamper gave a stream, from its table (a stream of which history holds nothing);
 * UINT64_MAX for one it has forgotten (it gets no more messages: nothing of it is "not stamped yet"). */
static uint64_t stamped_head(Forwarder *f, uint64_t stream)
{
    for (int32_t i = 0; i < f->stamps.used; i++)
        if (f->stamps.pool[i].stream == stream)
            return f->stamps.pool[i].seq;
    return UINT64_MAX;
}

/* RANGE: every held message of stream in first..last, then an END naming each sequence not supplied. */
static int serve_range(Forwarder *f, repair_t *r, zmsg_t *id, const unsigned char *b)
{
    uint32_t tag = (uint32_t)(get_u64(b) >> 32);
    uint64_t epoch = get_u64(b + 4), stream = get_u64(b + 12), first = get_u64(b + 20), last = get_u64(b + 28);
    if (!first || first > last)
        return C_REPAIR_MALFORMED;
    run_t runs[REPAIR_RUNS_MAX];
    int nruns = 0, sent = 0;
    if (epoch != f->epoch) {
        add_run(runs, &nruns, first, last, WIRE_GONE_EPOCH);
    } else if (!stream || stream > f->last_stream) {
        add_run(runs, &nruns, first, last, WIRE_GONE_UNKNOWN);
    } else {
        hstream_t *s = f->history ? hstream_find(f->history, stream) : NULL;
        uint64_t head = s ? s->last : stamped_head(f, stream), seq = first, bytes = 0;
        for (;;) {
            uint64_t upto = seq;
            int reason = 0;
            hentry_t *e = NULL;
            if (nruns >= REPAIR_RUNS_MAX - 1)
                upto = last, reason = WIRE_GONE_LIMIT;
            else if (seq > head)
                upto = last, reason = WIRE_GONE_FUTURE;
            else if (!s || seq < s->first)
                upto = s ? s->first - 1 : head, reason = WIRE_GONE_EVICTED;
            else if (seq - s->first >= s->count)
                upto = head, reason = WIRE_GONE_EVICTED;  /* stamped after the last it could keep */
            else if (!(e = history_at(s, seq)))
                reason = WIRE_GONE_EVICTED;
            else if (sent == REPAIR_MAX_MESSAGES || (sent && bytes + e->frame_bytes > REPAIR_MAX_BYTES))
                upto = last, reason = WIRE_GONE_LIMIT;
            else if (send_repaired(f, r, id, tag, e, WIRE_REPAIR_RANGE) < 0)
                return C_REPAIR_UNSENT;
            else
                sent++, bytes += e->frame_bytes, f->local[C_REPAIRED]++;
            if (upto > last)
                upto = last;
            if (upto < seq)
                upto = seq;  /* each turn moves on, whatever the cases above say */
            if (reason)
                add_run(runs, &nruns, seq, upto, reason);
            if (upto == last)
                break;
            seq = upto + 1;
        }
    }
    zmsg_t m ZMSG_LINE;
    size_t len = WIRE_HEAD_LEN + WIRE_REPAIR_RANGE_LEN + 2 + (size_t)nruns * WIRE_REPAIR_RUN_LEN;
    unsigned char *p;
    if (send_routing_id(r, id) < 0 ||
        !(p = trailer_head(&m, len, WIRE_REPAIR_ANSWER | WIRE_REPAIR_RANGE | WIRE_REPAIR_END)))
        return C_REPAIR_UNSENT;
    memcpy(p, b, WIRE_REPAIR_RANGE_LEN);  /* the request's tag, epoch, stream, first and last */
    p += WIRE_REPAIR_RANGE_LEN;
    *p++ = (unsigned char)(nruns >> 8);
    *p++ = (unsigned char)nruns;
    for (int i = 0; i < nruns; i++, p += WIRE_REPAIR_RUN_LEN) {
        put_u64(p, runs[i].first);
        put_u64(p + 8, runs[i].last);
        p[16] = (unsigned char)runs[i].reason;
    }
    return repair_send(r, &m, 0) < 0 ? C_REPAIR_UNSENT : C_REPAIR_RANGE;
}

/* HEADS: the last (stream, sequence, key) the stamper gave each stream whose key starts with the prefix.
 * LAST (last): first, for each such stream, its message at that sequence if history holds it (the last value),
 * within a RANGE reply's bounds; past them MORE, and the HEADS answer lists only the streams before. */
static int serve_heads(Forwarder *f, repair_t *r, zmsg_t *id, const unsigned char *b, size_t prefix_len, int last)
{
    const unsigned char *prefix = b + WIRE_REPAIR_TAG_LEN;
    uint32_t tag = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    size_t at = WIRE_REPAIR_TAG_LEN + 8 + 2;
    uint64_t bytes = 0;
    int count = 0, more = 0;
    for (int32_t i = 0; i < f->stamps.used && !more; i++) {
        const stream_entry *e = &f->stamps.pool[i];
        if (e->len < prefix_len || memcmp(e->key, prefix, prefix_len) != 0)
            continue;
        if (count == HEADS_MAX_STREAMS || WIRE_HEAD_LEN + at + 17 + e->len > HEADS_MAX_BYTES) {
            more = 1;
            break;
        }
        hentry_t *h = last && f->history ? history_at(hstream_find(f->history, e->stream), e->seq) : NULL;
        if (h && count && bytes + h->frame_bytes > REPAIR_MAX_BYTES) {
            more = 1;
            break;
        }
        if (h && send_repaired(f, r, id, tag, h, WIRE_REPAIR_LAST) < 0)
            return C_REPAIR_UNSENT;
        if (h)
            bytes += h->frame_bytes, f->local[C_REPAIRED]++;
        put_u64(r->heads + at, e->stream);
        put_u64(r->heads + at + 8, e->seq);
        r->heads[at + 16] = (unsigned char)e->len;
        memcpy(r->heads + at + 17, e->key, e->len);
        at += 17 + (size_t)e->len;
        count++;
    }
    memcpy(r->heads, b, WIRE_REPAIR_TAG_LEN);
    put_u64(r->heads + WIRE_REPAIR_TAG_LEN, f->epoch);
    r->heads[WIRE_REPAIR_TAG_LEN + 8] = (unsigned char)(count >> 8);
    r->heads[WIRE_REPAIR_TAG_LEN + 9] = (unsigned char)count;
    zmsg_t m ZMSG_LINE;
    unsigned char *p;
    if (send_routing_id(r, id) < 0 ||
        !(p = trailer_head(&m, WIRE_HEAD_LEN + at, WIRE_REPAIR_ANSWER | WIRE_REPAIR_HEADS | (more ? WIRE_REPAIR_MORE : 0))))
        return C_REPAIR_UNSENT;
    memcpy(p, r->heads, at);
    return repair_send(r, &m, 0) < 0 ? C_REPAIR_UNSENT : C_REPAIR_HEADS;
}

/* The counter a request earns, answering it if it is one to answer. */
static int repair_request(Forwarder *f, repair_t *r, zmsg_t *id, zmsg_t *req, int frames, int64_t now)
{
    const unsigned char *d = Z.msg_data(req);
    size_t len = Z.msg_size(req);
    if (!repair_allowed(r, id, now))
        return C_REPAIR_FLOOD;
    if (frames != 1)
        return C_REPAIR_MALFORMED;
    if (len > WIRE_REPAIR_REQUEST_MAX)
        return C_REPAIR_OVERSIZE;
    if (len < WIRE_HEAD_LEN + WIRE_REPAIR_TAG_LEN || memcmp(d, WIRE_MAGIC, WIRE_MAGIC_LEN) != 0 ||
        d[4] != WIRE_VERSION)
        return C_REPAIR_MALFORMED;
    if (d[5] == WIRE_REPAIR_RANGE && len == WIRE_HEAD_LEN + WIRE_REPAIR_RANGE_LEN)
        return serve_range(f, r, id, d + WIRE_HEAD_LEN);
    if (d[5] == WIRE_REPAIR_HEADS || d[5] == WIRE_REPAIR_LAST)
        return serve_heads(f, r, id, d + WIRE_HEAD_LEN, len - WIRE_HEAD_LEN - WIRE_REPAIR_TAG_LEN,
                           d[5] == WIRE_REPAIR_LAST);
    return C_REPAIR_MALFORMED;
}

/* Read and answer one endpoint's requests within the budget of a pass: 0 all read, 1 the budget ran out first
 * (more may be waiting), -1 when libzmq failed (errno_). */
static int repair_serve(Forwarder *f, repair_t *r, int64_t now)
{
    void *sock = r->sock;
    for (int read = 0, served = 0; read < REPAIR_READ_PER_PASS && served < REPAIR_SERVED_PER_PASS; read++) {
        zmsg_t id ZMSG_LINE, req ZMSG_LINE, part ZMSG_LINE;
        if (Z.msg_init(&id) < 0 || Z.msg_init(&req) < 0)
            return -1;
        if (Z.msg_recv(&id, sock, Z_DONTWAIT) < 0) {
            int err = Z.errno_();
            Z.msg_close(&id);
            Z.msg_close(&req);
            return err == EAGAIN ? 0 : -1;
        }
        int frames = 0, failed = 0;
        for (int more = Z.msg_more(&id); more && !failed; frames++) {  /* the rest of a message never blocks */
            zmsg_t *dst = frames ? &part : &req;  /* the first is the request; more are read and dropped */
            if (frames && Z.msg_init(&part) < 0)
                return -1;
            failed = Z.msg_recv(dst, sock, 0) < 0;
            more = !failed && Z.msg_more(dst);
            if (frames)
                Z.msg_close(&part);
        }
        int result = failed ? -1 : repair_request(f, r, &id, &req, frames, now);
        Z.msg_close(&id);
        Z.msg_close(&req);
        if (result < 0)
            return -1;
        f->local[result]++;
        served += result == C_REPAIR_RANGE || result == C_REPAIR_HEADS || result == C_REPAIR_UNSENT;
    }
    return 1;
}

/* One pass's share of repair: age the history out, then serve the repair endpoint and the relay's, each within
 * its budget. Run by the loop once per pass (now: the pass's tick_ns) and at each retry of a stall (fanout.c:
 * stall_output), in this thread either way. 0, 1 when a budget ran out with requests perhaps still waiting (the
 * loop then does not sleep), or -1 when libzmq failed (errno_). */
static int repair_pass(Forwarder *f, int64_t now)
{
    if (f->history) {
        history_trim(f->history, 0, now);
        f->local[C_HISTORY_BYTES] = f->history->bytes;
        f->local[C_HISTORY_EVICTED] = f->history->evicted;
    }
    int mine = f->repair ? repair_serve(f, f->repair, now) : 0;
    int relay = mine >= 0 && f->relay_repair ? repair_serve(f, f->relay_repair, now) : 0;
    return mine < 0 || relay < 0 ? -1 : mine | relay;
}

/* The idle wait's poll item for a repair endpoint: its ZMQ_FD as a plain fd, not the socket. Polled as a socket,
 * zmq_poll asks for its ZMQ_EVENTS before and after every wait, two system calls each (libzmq's fork check and a
 * poll of its mailbox), at every pass of an idle loop (what that cost: docs/architecture.md, "History and
 * repair"). The fd is readable once the socket has commands to take (a request's arrival is one), and
 * stays readable until they are taken; repair_woken takes them when it woke the loop, and every pass reads the
 * endpoint until it is empty or its budget runs out (then the loop does not sleep), so nothing waits unseen. */
static zpollitem_t repair_item(const repair_t *r)
{
    return (zpollitem_t){NULL, r->fd, Z_POLLIN, 0};
}

/* After the idle wait: have an endpoint whose fd woke the loop take its commands (requests are then read). */
static void repair_woken(const repair_t *r, const zpollitem_t *item)
{
    if (item->revents & Z_POLLIN)
        take_commands(r->sock);
}
