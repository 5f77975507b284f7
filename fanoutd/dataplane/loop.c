/*
 * fanoutd/dataplane/loop.c: the forwarding loop itself, reading the inputs
 * and handing each message to the outputs (push, relay, stamped, publish),
 * until the hub asks it to drain or abort.
 *
 * Part of the _forward.c translation unit (included there, not compiled alone).
 */

/* Draining: the collector subscribes to WIRE_DRAIN_TOPIC, which tells fanoutd's
 * producers (they see subscriptions) to hold their messages until this node
 * is gone and another has subscribed; the loop reads until its inputs have
 * been quiet for DRAIN_QUIET_NS (what producers sent before they paused) or
 * DRAIN_GRACE_NS passed (producers that cannot pause, raw PUBs, never go
 * quiet), so nothing is in flight to a closing collector from those that can. */
#define DRAIN_QUIET_NS 50000000LL
#define DRAIN_GRACE_NS 1000000000LL
#define BATCH 512   /* messages read from one input before the next is served and the counters published */
#define TICK_MS 100 /* the longest wait for input, so a stop or a reconnect is seen within it */

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

/* Whether the PUSH output holds more bytes for its pullers than push_above (0: no bound). */
static int push_over_bound(ledger_t *l, uint64_t above)
{
    if (!l || l->held <= above)  /* the count only ever overstates until entries are taken back */
        return 0;
    ledger_reclaim(l);
    return l->held > above;
}

/* Hand the payload to one puller without blocking; count a drop otherwise. With a byte bound (push_above)
 * each frame goes as a wrapper counted in the output's ledger while libzmq holds it (held.c), and a message
 * finding the output over the bound is dropped: a PUSH never holds anything back, so its pullers' queues,
 * push_hwm messages each, must not hold gigabytes of large messages either. */
static int push_out(Forwarder *f, int n)
{
    int strip = LOAD(f->strip_topic), flags, rc = 0;
    uint64_t above = LOAD(f->push_above), counted = 0;
    ledger_t *ledger = above ? f->push_held : NULL;
    zmsg_t out ZMSG_LINE;
    if (push_over_bound(ledger, above)) {
        f->local[C_PUSH_MAX_PENDING]++;
        return 0;
    }
    if (n == 1) {
        const char *data = Z.msg_data(&f->parts[0]);
        size_t len = Z.msg_size(&f->parts[0]);
        size_t topic = strip ? wire_topic_len(data, len) : len;
        if (topic < len) {
            zmsg_t payload ZMSG_LINE;
            size_t off = topic + 1;
            if (Z.msg_init_size(&payload, len - off) < 0)
                return -1;
            memcpy(Z.msg_data(&payload), data + off, len - off);
            if (held_wrap(ledger, &out, &payload, 1, &counted) < 0) {
                Z.msg_close(&payload);
                return -1;
            }
        } else if (held_wrap(ledger, &out, &f->parts[0], 0, &counted) < 0) {
            return -1;
        }
        rc = send_now(&out, f->push, Z_DONTWAIT);
        if (rc < 0)
            Z.msg_close(&out);
    } else {
        /* Once the first frame is queued, libzmq keeps the rest of the
         * message on the same pipe, so only the first send can be refused. */
        for (int i = strip ? 1 : 0; i < n; i++) {
            if (held_wrap(ledger, &out, &f->parts[i], 0, &counted) < 0)
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

/* Re-emit the message unchanged; consumes the parts. */
static int publish_out(Forwarder *f, int n)
{
    if (fan_out(f, OUT_PUBLISH, f->parts, n, NULL, 1) < 0)
        return -1;
    f->local[C_PUBLISHED]++;
    return 0;
}

/* Send the message with a trailer on the relay output (stamped, with this
 * node added to the route it came with) or the stamped output (stamped). */
static int trailed_out(Forwarder *f, int out, int n, const trailer_t *from, const stamp_t *s)
{
    zmsg_t trailer ZMSG_LINE;
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

/* Read what subscribers send an XPUB (their subscriptions and, with
 * XPUB_VERBOSER, unsubscriptions), which would otherwise pile up in it
 * (libzmq has applied them already): count and bound each (subs.c); on the
 * stamped output, answer each subscription. */
static int read_subscriptions(Forwarder *f, int out)
{
    zmsg_t m ZMSG_LINE;
    for (int i = 0; i < BATCH; i++) {
        if (Z.msg_init(&m) < 0)
            return -1;
        int rc = Z.msg_recv(&m, f->outs[out], Z_DONTWAIT);
        int err = rc < 0 ? Z.errno_() : 0;
        if (rc >= 0 && subs_note(f, out, &m) < 0) {
            Z.msg_close(&m);
            errno = ENOMEM;
            return -1;
        }
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

/* What a message is, by where it came from: the loop's inputs, and repaired messages the hub supplied for a gap
 * on the upstream link (uprepair.c). */
enum { FROM_PRODUCER = 0, FROM_UPSTREAM = 1, FROM_REPAIR = 2 };

/* The counter a message from the upstream link earns, or -1 when it may pass
 * (its trailer then parsed into t).  It must come from a fanoutd relay (the
 * relay's ZMTP metadata, on every message) and end in a trailer with a
 * route that does not already name this node: a message can never
 * circulate, whatever the topology. A repaired message passes the same
 * checks (the hub's relay_repair endpoint announces itself as its relay
 * does) but is no sighting of the link: its stamp is not tracked again. A
 * live message a repair of the link's tail already claimed is refused and
 * counted as a duplicate (stamps.c, track_upstream): the repair delivers it. */
static int check_upstream(Forwarder *f, int n, trailer_t *t, int from)
{
    const char *relay = Z.msg_gets(&f->parts[0], WIRE_RELAY_PROPERTY);
    if (!relay || strcmp(relay, WIRE_RELAY_PROPERTY_VALUE) != 0)
        return C_REJECT_NOT_RELAY;
    if (n < 2 || parse_trailer(&f->parts[n - 1], t) < 0 || !(t->flags & WIRE_ROUTE))
        return C_REJECT_ROUTE;
    if ((t->flags & WIRE_STAMP) && from == FROM_UPSTREAM && track_upstream(f, &f->parts[0], &t->stamp))
        return C_UPSTREAM_DUPLICATES;
    for (int i = 0; i < t->hops; i++)
        if (memcmp(t->ids + (size_t)i * WIRE_NODE_ID_LEN, f->node_id, WIRE_NODE_ID_LEN) == 0)
            return C_REJECT_LOOP;
    return -1;
}

/* Read the rest of a message whose first frame is in parts[0] (multipart messages arrive whole: the remaining
 * frames never block); frames past max_frames are read and dropped (*overflow). 0, or -1 (parts closed). */
static int read_rest(Forwarder *f, void *input, int max_frames, int *n, uint64_t *total, int *overflow)
{
    zmsg_t *p = f->parts;
    *n = 1;
    *overflow = 0;
    *total = Z.msg_size(&p[0]);
    int more = Z.msg_more(&p[0]);
    while (more) {
        zmsg_t *dst = *n < max_frames ? &p[*n] : f->scratch;
        if (Z.msg_init(dst) < 0) {
            close_parts(f, *n);
            return -1;
        }
        if (Z.msg_recv(dst, input, 0) < 0) {
            Z.msg_close(dst);
            close_parts(f, *n);
            return -1;
        }
        *total += Z.msg_size(dst);
        more = Z.msg_more(dst);
        if (dst == f->scratch) {
            *overflow = 1;
            if (Z.msg_close(dst) < 0) {
                close_parts(f, *n);
                return -1;
            }
        } else {
            (*n)++;
        }
    }
    return 0;
}

/* Check, count, stamp and hand to the outputs the message in parts[0..n) (n read, overflow if frames were
 * dropped), then close its parts: 0, or -1 (errno_). */
static int forward_parts(Forwarder *f, int n, uint64_t total, int overflow, int from)
{
    zmsg_t *p = f->parts;
    if (from == FROM_UPSTREAM && !overflow && is_hello(f, n)) {
        f->local[C_UPSTREAM_HELLOS]++;  /* a link's greeting, not a message: the link is (re)connected */
        if (f->uprepair)
            uprepair_linked(f);  /* a gap at the end of a stream is found through the hub's heads */
        return close_parts(f, n);
    }
    f->local[C_RECEIVED]++;
    f->local[C_RECEIVED_BYTES] += total;
    trailer_t trailer, *route = NULL;
    int verdict = -1, rc = 0, stripped = 0;
    if (from != FROM_PRODUCER) {
        f->local[C_RECEIVED_UPSTREAM]++;
        if (!overflow && (verdict = check_upstream(f, n, &trailer, from)) < 0) {
            route = &trailer;
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
        if (f->history)  /* also when the stamped output below skips its send */
            history_record(f, n, &stamp, route ? route->ids : NULL, route ? route->hops : 0);
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
    return rc;
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
    if (!from_upstream)
        note_sender(f, &p[0]);  /* which kind of producer sent it (senders.c) */
    int n, overflow;
    uint64_t total;
    if (read_rest(f, input, LOAD(f->max_frames) + from_upstream, &n, &total, &overflow) < 0)
        return -1;
    return forward_parts(f, n, total, overflow, from_upstream ? FROM_UPSTREAM : FROM_PRODUCER) < 0 ? -1 : 1;
}

/* Forward up to BATCH messages from one input; returns the count, or -1. */
static int drain(Forwarder *f, void *input, int from_upstream)
{
    int handled = 0, rc = 0;
    while (handled < BATCH && (rc = forward_one(f, input, from_upstream)) > 0)
        handled++;
    return rc < 0 ? -1 : handled;
}

/* Connect the upstream link afresh if the hub has posted an endpoint in the mailbox (forwarder.h). */
static void take_reconnect(Forwarder *f)
{
    if (!__atomic_load_n(&f->reconnect_pending, __ATOMIC_ACQUIRE))
        return;
    void *up = f->inputs[f->ninputs - 1].socket;  /* the upstream link is always the last input */
    /* Disconnect fails (ENOENT) once libzmq has dropped the refused link; connect can only fail as the
     * context terminates (the endpoint was connected at start), which the next socket call reports as ETERM. */
    (void)!Z.disconnect(up, f->reconnect_to);
    (void)!Z.connect(up, f->reconnect_to);
    if (f->uprepair)  /* refused with the link (the relay's policy), so healed with it */
        uprepair_reconnect(f);
    __atomic_store_n(&f->reconnect_pending, 0, __ATOMIC_RELEASE);
}

/* Forward until the hub stops the loop, without the GIL: "drained", "aborted" or "terminated" (the
 * context ended); NULL with *err set (an errno) when libzmq failed. */
static const char *forward_until_stopped(Forwarder *f, int *err)
{
    int announced = 0, can_wait = 0;
    int64_t drain_start = 0, last_input = 0;
    for (;;) {
        int mode = LOAD(f->mode);
        if (mode == MODE_ABORT)
            return "aborted";
        int busy = 0, failed = 0, read = 0, repair = 0;
        f->tick_ns = now_ns();
        take_reconnect(f);
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
        subs_take_closes(f);
        for (int o = 0; o < OUTS && !failed; o++)
            failed = f->outs[o] && read_subscriptions(f, o) < 0;
        if (!failed)
            failed = (repair = repair_pass(f, f->tick_ns)) < 0;  /* repair.c: within its budget per pass */
        if (!failed && f->uprepair)
            failed = uprepair_pass(f) < 0;  /* uprepair.c: the link's gaps asked of the hub, its answers delivered */
        f->local[C_TICKS]++;
        publish_counters(f);
        publish_held(f);
        if (failed) {
            *err = Z.errno_();
            return *err == Z_ETERM ? "terminated" : NULL;
        }
        if (busy || repair)  /* an input or a repair endpoint left waiting by its budget */
            continue;
        long wait_ms = TICK_MS;
        if (mode == MODE_DRAIN) {
            int64_t now = now_ns();
            if (read)
                last_input = now;
            if (!can_wait || now - last_input >= DRAIN_QUIET_NS || now - drain_start >= DRAIN_GRACE_NS)
                return "drained";
            wait_ms = 5;
        }
        zpollitem_t items[INPUTS_CAP + 3];
        int nitems = f->ninputs, repair_at = -1, relay_at = -1;
        for (int i = 0; i < f->ninputs; i++)
            items[i] = (zpollitem_t){f->inputs[i].socket, 0, Z_POLLIN, 0};
        if (f->repair)  /* a request wakes the loop too (repair.c: by the endpoint's fd) */
            items[repair_at = nitems++] = repair_item(f->repair);
        if (f->relay_repair)
            items[relay_at = nitems++] = repair_item(f->relay_repair);
        if (f->uprepair)  /* and the hub's answers to this node's repair requests */
            items[nitems++] = (zpollitem_t){uprepair_socket(f->uprepair), 0, Z_POLLIN, 0};
        /* Not the outputs: every reader's progress report wakes their sockets, and waking on those cost a
         * subscriber half its flat-out rate at 100 B. Their subscriptions are read each pass, at least every
         * tick (docs/concepts.md, "What remains unbounded"). */
        if (Z.poll(items, nitems, wait_ms) < 0 && (*err = Z.errno_()) != EINTR)
            return *err == Z_ETERM ? "terminated" : NULL;
        if (repair_at >= 0)
            repair_woken(f->repair, &items[repair_at]);
        if (relay_at >= 0)
            repair_woken(f->relay_repair, &items[relay_at]);
    }
}
