/*
 * fanoutd/dataplane/stamps.c: stamp streams, giving each message the next
 * stamp of its stream and counting the gaps in the upstream's stamps (the
 * tables themselves are _streams.h).
 *
 * Part of the _forward.c translation unit (included there, not compiled alone).
 */

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

/* Whether the stamped output may have a subscriber. With none connected,
 * libzmq would match a message against no subscription and discard it, and
 * that send (a copy of each frame and a trailer, two sends) is much of the
 * loop's work on a broker whose stamped output nobody reads (it is on by
 * default; see bench/README.md, Levers, "The stamped output with no
 * reader"). The hub counts the connections (monitor events,
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

/* Count what the upstream stamped and this node never received: 1 when the message is one a repair already
 * claimed (a tail gap the hub's heads named while it was still on its way over the link, uprepair.c), which the
 * repair delivers instead, else 0. The link is in order, so only a claimed range can come again: the claim ends
 * at the first sequence past it. */
static int track_upstream(Forwarder *f, zmsg_t *first, const stamp_t *s)
{
    if (!covers(f, first, s->keylen)) {
        f->local[C_UPSTREAM_UNTRACKED]++;
        return 0;
    }
    unsigned char key[16];
    int created;
    put_u64(key, s->epoch);
    put_u64(key + 8, s->stream);
    stream_entry *e = streams_get(&f->seen, key, sizeof key, &created);
    if (!created && e->stream && s->seq <= e->seq)
        return 1;
    if (!created && s->seq > e->seq + 1) {
        f->local[C_UPSTREAM_GAPS] += s->seq - e->seq - 1;
        uprepair_gap(f, s->epoch, s->stream, e->seq + 1, s->seq - 1, 0);  /* asked of the hub when it can be */
    }
    if (created || s->seq > e->seq) {
        e->seq = s->seq;
        e->stream = 0;
    }
    return 0;
}
