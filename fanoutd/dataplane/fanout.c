/*
 * fanoutd/dataplane/fanout.c: sending to the fanning-out outputs without
 * silent loss, and the stall protocol with the slow-consumer guard.
 *
 * The fanning-out outputs are XPUBs with ZMQ_XPUB_NODROP, so libzmq refuses
 * a message for a full subscriber instead of dropping it unseen; the loop
 * then stalls all output until the slow-consumer guard answers, and sends
 * lossy (counted, with a window open until the guard has cut that
 * subscriber) only when the guard answers "no". The protocol is described
 * once, in docs/architecture.md ("The stall"); the fields it uses, and
 * their memory order, are in forwarder.h.
 *
 * Part of the _forward.c translation unit (included there, not compiled alone).
 */

static const int DROPPED[OUTS] = {C_PUBLISH_DROPPED, C_RELAY_DROPPED, C_STAMPED_DROPPED};
static const int STALLS[OUTS] = {C_PUBLISH_STALLS, C_RELAY_STALLS, C_STAMPED_STALLS};
static const int STALLED_NS[OUTS] = {C_PUBLISH_STALLED_NS, C_RELAY_STALLED_NS, C_STAMPED_STALLED_NS};
#define STALL_ASK_MAX_NS 1000000000LL  /* a long stall asks the guard again at least once a second */
#define STALL_RETRY_NS 200000L         /* a stalled message is offered again this often: the guard's cut takes
                                        * libzmq an I/O round */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
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

/* Have a socket process the commands libzmq's I/O threads sent it (asking for ZMQ_EVENTS does), as a send
 * would. Among them is each cut connection's pipe termination: until the socket takes it, libzmq keeps what
 * that pipe holds, so an output stalled on held bytes must take them while it sends nothing. */
static void take_commands(void *sock)
{
    int events = 0;
    size_t len = sizeof events;
    (void)!Z.getsockopt(sock, Z_EVENTS, &events, &len);  /* a failure (ETERM) shows at the next send */
}

/* Offer a message to an XPUB output: msgs[0..n), each consumed as it is queued. Only the first frame can
 * be refused: once it is queued, libzmq keeps the rest on the same pipes. 1 sent, 0 refused (EAGAIN: a
 * matching subscriber is full), -1 error (the frames not queued are still the caller's). */
static int offer(void *sock, zmsg_t *msgs, int n)
{
    for (int i = 0; i < n; i++)
        if (send_now(&msgs[i], sock, Z_DONTWAIT | (i < n - 1 ? Z_SNDMORE : 0)) < 0)
            return i == 0 && Z.errno_() == EAGAIN ? 0 : -1;
    return 1;
}

/* Whether output out holds more bytes for its readers than above (0: no bound), leaving out mine: the
 * message being offered, already counted as it is wrapped. */
static int over_bound(Forwarder *f, int out, uint64_t mine, uint64_t above)
{
    ledger_t *l = f->held[out];
    if (!above || !l || l->held - mine <= above)  /* the count only ever overstates until entries are taken back */
        return 0;
    ledger_reclaim(l);
    return l->held - mine > above;
}

static void history_reclaim(Forwarder *f);  /* history.c */
static int repair_pass(Forwarder *f, int64_t now);  /* repair.c */

/* Where an output held back by its byte bound (stall_above) is offered messages again: resume_below, a
 * low-water mark as libzmq's own queues have. Resuming as soon as one message fits would hold the producers
 * back again at the next, a stall (and a look by the guard) every few messages; resuming lower lets a run of
 * them through between stalls (docs/concepts.md, "Held bytes"). */
static uint64_t resume_mark(Forwarder *f)
{
    uint64_t below = LOAD(f->resume_below), above = LOAD(f->stall_above);
    return below && below < above ? below : above;
}

/* Take back what libzmq released on every output (and from the repair history) and publish the exact held
 * bytes (each batch or tick, and each turn of a stall). */
static void publish_held(Forwarder *f)
{
    for (int o = 0; o < OUTS; o++)
        ledger_reclaim(f->held[o]);
    ledger_reclaim(f->push_held);
    history_reclaim(f);
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

/* Stall all output while the guard looks and answers "stall on": offer the
 * message again every STALL_RETRY_NS, serving the repair endpoint within its
 * budget each time (repair.c: a subscriber cut off while the producers are
 * held back gets its gap meanwhile; the history is this thread's, so nothing
 * evicts what a reply is built from), and ask again after stall_ns, then
 * after twice as long each time up to STALL_ASK_MAX_NS (a long stall is the
 * broker catching up, and each look scans every connection). Each "stall on"
 * taken is a turn of the loop: it counts a tick and publishes the counters
 * with the time held so far, so the watchdog is fed and /metrics moves while
 * the guard keeps answering (at least once a second). A guard that stops
 * answering stops the ticks, and so the watchdog's pings: the loop waits for
 * an answer. The message is offered again only while the output's held bytes
 * are within stall_above, or (by_bytes: the bound held it back) within the
 * low-water mark; both read live, as a reload may change them. 1 sent, 0 the
 * guard answered "no" (the caller sends lossy), -1 error; an abort ends it too. */
static int stall_output(Forwarder *f, int out, zmsg_t *msgs, int n, uint64_t mine, int by_bytes)
{
    struct timespec pause = {0, STALL_RETRY_NS};
    uint64_t number = ++f->stalls_begun;
    STORE(f->stall[out], number);
    wake_guard(f);  /* after the number: the guard reads stalls() once woken, and answers only what it read */
    int64_t start = now_ns(), period = f->stall_ns, deadline = start + period;
    int rc = 0;
    while (LOAD(f->mode) != MODE_ABORT) {
        int64_t now = now_ns();
        if (now >= deadline) {
            uint64_t answer = LOAD(f->answer[out]);
            if (answer == (number << 1 | 1)) {
                f->local[STALLED_NS[out]] += (uint64_t)(now - start);  /* held so far, measured afresh from here */
                start = now;
                f->local[C_TICKS]++;
                publish_counters(f);
                publish_held(f);
                number = ++f->stalls_begun;  /* "stall on": a fresh look later */
                STORE(f->stall[out], number);
                wake_guard(f);
                period = period * 2 < STALL_ASK_MAX_NS ? period * 2 : STALL_ASK_MAX_NS;
                deadline = now + period;
            } else if (answer == number << 1) {
                break;  /* "no": a full subscriber the guard could not cut; the lossy send names it */
            } else {
                deadline = now + 1000000;  /* still looking: wait for the answer */
            }
        }
        nanosleep(&pause, NULL);
        if (repair_pass(f, now_ns()) < 0) {
            rc = -1;
            break;
        }
        if (over_bound(f, out, mine, by_bytes ? resume_mark(f) : LOAD(f->stall_above)))
            take_commands(f->outs[out]);
        else if ((rc = offer(f->outs[out], msgs, n)) != 0)
            break;
    }
    STORE(f->stall[out], 0);
    f->local[STALLED_NS[out]] += (uint64_t)(now_ns() - start);
    return rc;
}

/* Deliver a wrapped message to a fanning-out output, stalling within the bound for the guard to cut a
 * slow consumer, or while the output holds more bytes than stall_above (the guard paces or cuts); a message
 * sent lossy, or while a window is open, is counted. 0 done, -1 error. */
static int deliver(Forwarder *f, int out, zmsg_t *msgs, int n, uint64_t mine)
{
    void *sock = f->outs[out];
    int window = LOAD(f->window[out]) != 0;
    int held_back = !window && f->stall_ns > 0 && over_bound(f, out, mine, LOAD(f->stall_above));
    int rc = held_back ? 0 : offer(sock, msgs, n);
    if (rc != 0) {
        if (rc > 0 && window)
            f->local[DROPPED[out]]++;  /* the full subscriber, out of libzmq's distribution, missed it */
        return rc < 0 ? -1 : 0;
    }
    if (!window && f->stall_ns > 0) {
        f->local[STALLS[out]]++;
        publish_counters(f);
        rc = stall_output(f, out, msgs, n, mine, held_back);
        /* "no" lets a message held back by the byte bound alone go to everyone: nobody misses it */
        if (rc == 0)
            rc = offer(sock, msgs, n);
        if (rc != 0)
            return rc < 0 ? -1 : 0;
    }
    /* Each lossy send takes one more subscriber out of the distribution: (re)open the window with its number. */
    STORE(f->window[out], ++f->lossy_sends);
    wake_guard(f);
    if (set_nodrop(sock, 0) < 0)
        return -1;
    rc = offer(sock, msgs, n);
    if (set_nodrop(sock, 1) < 0 || rc < 0)
        return -1;
    f->local[DROPPED[out]]++;  /* at least one subscriber missed this message */
    return 0;
}

/* Send frames[0..n) (moved when consume, else shared) and then tail if given (consumed) to a fanning-out
 * output, each frame as a wrapper counted in the output's ledger while libzmq holds it (held.c) if there is
 * a byte bound (stall_above). 0 done, -1 error. */
static int fan_out(Forwarder *f, int out, zmsg_t *frames, int n, zmsg_t *tail, int consume)
{
    zmsg_t msgs[FRAMES_CAP + 2] ZMSG_LINE;
    uint64_t mine = 0;
    int count = 0, rc = 0;
    /* Without a byte bound nothing reads the ledger: frames go unwrapped, at no cost (held.c says what it is). */
    ledger_t *ledger = LOAD(f->stall_above) ? f->held[out] : NULL;
    for (; rc == 0 && count < n + (tail != NULL); count++)
        rc = held_wrap(ledger, &msgs[count], count < n ? &frames[count] : tail, count < n ? consume : 1, &mine);
    if (rc == 0)
        rc = deliver(f, out, msgs, count, mine);
    else
        count--;  /* the one that failed is not a message */
    for (int i = 0; i < count; i++)
        Z.msg_close(&msgs[i]);  /* the queued ones are empty now; one not queued gives its bytes back */
    return rc;
}
