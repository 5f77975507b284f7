/*
 * fanoutd/dataplane/history.c: the repair history, a bounded record of what
 * the stamped output sends, kept per stream so a subscriber can get back the
 * messages it missed (repair.c serves it; docs/concepts.md, "History and
 * repair").
 *
 * Every stamped message is recorded as the loop stamps it, also while the
 * stamped output skips its sends because nobody is connected (a lone
 * subscriber's gap after a cut is then still held). An entry holds its
 * stamp and, per frame, a wrapper made by held_wrap (held.c): a reference to
 * the received frame, never a copy, counted in the history's own ledger, so
 * what libzmq holds for readers and what history holds are told apart. The
 * trailer is not stored: make_trailer rebuilds it from the stamp, byte for
 * byte what the stamped output sent.
 *
 * Bounds: bytes held (history_bytes: frame sizes plus each entry's own
 * overhead, what this file allocates for it) and, optionally, age
 * (history_seconds); the oldest entry is evicted first, whatever its
 * stream. Entries are appended in stamp order, so each stream's entries are
 * one run of sequences in a ring indexed by sequence, and the oldest entry
 * overall is always the first of its stream's ring: eviction is O(1).
 *
 * Only the loop's thread touches a history (recording, eviction and repair
 * all run in the loop), so nothing here is shared but the counters the loop
 * publishes and the ledger, whose entries come back from libzmq's threads as
 * held.c's do (the loop takes them back with the outputs': history_reclaim).
 *
 * Part of the _forward.c translation unit (included there, not compiled alone).
 */

typedef struct hentry {
    struct hentry *younger;   /* the next entry in age order (global) */
    uint64_t stream, seq;
    int64_t at_ns;            /* when it was recorded */
    size_t cost;              /* what it counts in the history's bytes */
    uint64_t frame_bytes;     /* its frames' sizes: what a reply of it sends */
    uint16_t keylen;
    uint8_t skip;             /* bytes malloc gave before it, to start a cache line (hentry_new) */
    int nframes;
    int hops;                 /* the route it came with from upstream (0: a producer's): after the frames */
    zmsg_t frames[] ZMSG_LINE;  /* wrappers sharing the received frames (held.c), on cache lines */
} hentry_t;

/* The node ids of the route an entry came with (hops of them), kept so a relay repair replies with the route
 * the relay sent: the edge's loop check then sees it as it saw the live message. */
static const unsigned char *hentry_route(const hentry_t *e)
{
    return (const unsigned char *)&e->frames[e->nframes];
}

/* One stream's entries: ring[(head + i) & (cap - 1)] has sequence first + i; NULL where a message could not be
 * kept. stream 0 marks a free slot of the index. */
typedef struct {
    uint64_t stream, first;
    uint64_t last;            /* the last sequence stamped (kept or not): the stream's head */
    uint32_t head, count, cap;
    hentry_t **ring;
} hstream_t;

struct history {
    ledger_t *ledger;         /* the frame bytes its wrappers pin (and repair replies still in flight) */
    uint64_t bound;           /* history_bytes */
    int64_t max_age_ns;       /* history_seconds; 0: no age bound */
    uint64_t bytes, evicted;  /* held now (frames + overhead), evicted so far */
    hentry_t *oldest, *newest;
    hstream_t *index;         /* open addressing (linear probing) by stream id */
    uint32_t mask, streams;
};

#define HISTORY_INDEX_MIN 64
#define HISTORY_RING_MIN 16

static uint32_t hstream_slot(const history_t *h, uint64_t stream)
{
    return (uint32_t)((stream * 0x9E3779B97F4A7C15ULL) >> 32) & h->mask;
}

static hstream_t *hstream_find(history_t *h, uint64_t stream)
{
    for (uint32_t i = hstream_slot(h, stream);; i = (i + 1) & h->mask) {
        if (h->index[i].stream == stream)
            return &h->index[i];
        if (!h->index[i].stream)
            return NULL;
    }
}

/* Double the index when half full; -1 out of memory (the index is left as it was). */
static int hindex_grow(history_t *h)
{
    uint32_t size = (h->mask + 1) * 2;
    hstream_t *old = h->index, *index = calloc(size, sizeof *index);
    if (!index)
        return -1;
    uint32_t old_size = h->mask + 1;
    h->index = index;
    h->mask = size - 1;
    for (uint32_t i = 0; i < old_size; i++)
        if (old[i].stream) {
            uint32_t j = hstream_slot(h, old[i].stream);
            while (index[j].stream)
                j = (j + 1) & h->mask;
            index[j] = old[i];
        }
    free(old);
    h->bytes += (uint64_t)(size - old_size) * sizeof *index;
    return 0;
}

/* The stream's entry in the index, made (empty) if new; NULL out of memory. */
static hstream_t *hstream_get(history_t *h, uint64_t stream)
{
    hstream_t *s = hstream_find(h, stream);
    if (s)
        return s;
    if ((h->streams + 1) * 2 > h->mask + 1 && hindex_grow(h) < 0)
        return NULL;
    uint32_t i = hstream_slot(h, stream);
    while (h->index[i].stream)
        i = (i + 1) & h->mask;
    h->index[i] = (hstream_t){.stream = stream};
    h->streams++;
    return &h->index[i];
}

/* Take an emptied stream out of the index (backward-shift deletion keeps every probe chain whole). */
static void hstream_remove(history_t *h, hstream_t *s)
{
    h->bytes -= (uint64_t)s->cap * sizeof *s->ring;
    free(s->ring);
    uint32_t hole = (uint32_t)(s - h->index);
    for (uint32_t i = (hole + 1) & h->mask; h->index[i].stream; i = (i + 1) & h->mask) {
        uint32_t home = hstream_slot(h, h->index[i].stream);
        /* move i into the hole unless its home lies cyclically in (hole, i] */
        if ((i > hole && (home <= hole || home > i)) || (i < hole && home <= hole && home > i)) {
            h->index[hole] = h->index[i];
            hole = i;
        }
    }
    h->index[hole] = (hstream_t){0};
    h->streams--;
}

/* Append one slot (an entry, or NULL for a message that could not be kept); -1 out of memory. */
static int hstream_push(history_t *h, hstream_t *s, hentry_t *e)
{
    if (s->count == s->cap) {
        uint32_t cap = s->cap ? s->cap * 2 : HISTORY_RING_MIN;
        hentry_t **ring = malloc(cap * sizeof *ring);
        if (!ring)
            return -1;
        for (uint32_t i = 0; i < s->count; i++)
            ring[i] = s->ring[(s->head + i) & (s->cap - 1)];
        free(s->ring);
        h->bytes += (uint64_t)(cap - s->cap) * sizeof *ring;
        s->ring = ring;
        s->head = 0;
        s->cap = cap;
    }
    s->ring[(s->head + s->count++) & (s->cap - 1)] = e;
    return 0;
}

/* The held entry of (stream, seq), NULL if not held; *s the stream's ring (NULL: nothing of it held). */
static hentry_t *history_at(hstream_t *s, uint64_t seq)
{
    if (!s || seq < s->first || seq - s->first >= s->count)
        return NULL;
    return s->ring[(s->head + (uint32_t)(seq - s->first)) & (s->cap - 1)];
}

#define HENTRY_SLACK 63  /* what hentry_new asks for beyond the entry, counted in its cost */

/* What hentry_new allocates for n frames and a route of route bytes: the part of an entry's cost that is not
 * its frames' bytes. */
static size_t hentry_size(int n, size_t route)
{
    return sizeof(hentry_t) + ZMSG_LINES(n) + route + HENTRY_SLACK;
}

/* An entry of n frames and a route of route bytes, starting a cache line as its frames must (ZMSG_LINE):
 * malloc's own alignment plus a skip, which aligned_alloc would cost in splitting the heap (bench/README.md,
 * "Messages on cache lines"). NULL when out of memory. */
static hentry_t *hentry_new(int n, size_t route)
{
    unsigned char *raw = malloc(hentry_size(n, route));
    if (!raw)
        return NULL;
    hentry_t *e = (hentry_t *)(((uintptr_t)raw + HENTRY_SLACK) & ~(uintptr_t)63);
    e->skip = (uint8_t)((unsigned char *)e - raw);
    return e;
}

static void hentry_release(hentry_t *e)
{
    free((unsigned char *)e - e->skip);
}

static void hentry_free(history_t *h, hentry_t *e)
{
    for (int i = 0; i < e->nframes; i++)
        (void)Z.msg_close(&e->frames[i]);  /* a wrapper or a small copy: closing cannot fail */
    h->bytes -= e->cost;
    hentry_release(e);
}

/* Evict the oldest entry: the first of its stream's ring (entries are appended in stamp order). */
static void history_evict_oldest(history_t *h)
{
    hentry_t *e = h->oldest;
    hstream_t *s = hstream_find(h, e->stream);
    h->oldest = e->younger;
    if (!h->oldest)
        h->newest = NULL;
    do {  /* the entry, then the slots of messages that could not be kept behind it */
        s->head = (s->head + 1) & (s->cap - 1);
        s->first++;
        s->count--;
    } while (s->count && !s->ring[s->head]);
    if (!s->count)
        hstream_remove(h, s);
    hentry_free(h, e);
    h->evicted++;
}

/* Evict the oldest entries until `room` more bytes fit and none is older than the age bound. */
static void history_trim(history_t *h, uint64_t room, int64_t now)
{
    while (h->oldest && (h->bytes + room > h->bound ||
                         (h->max_age_ns && now - h->oldest->at_ns > h->max_age_ns)))
        history_evict_oldest(h);
}

static history_t *history_new(uint64_t bound, int64_t max_age_ns)
{
    history_t *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->index = calloc(HISTORY_INDEX_MIN, sizeof *h->index);
    h->ledger = ledger_new();
    if (!h->index || !h->ledger) {
        free(h->index);
        ledger_drop(h->ledger);
        free(h);
        return NULL;
    }
    h->mask = HISTORY_INDEX_MIN - 1;
    h->bound = bound;
    h->max_age_ns = max_age_ns;
    h->bytes = sizeof *h + HISTORY_INDEX_MIN * sizeof *h->index;
    return h;
}

static void history_free(history_t *h)
{
    if (!h)
        return;
    while (h->oldest)
        history_evict_oldest(h);
    free(h->index);
    ledger_drop(h->ledger);  /* freed now, or when the last repair reply in flight lets go */
    free(h);
}

/* Record the message in f->parts[0..n) under its stamp (and the route it came with: ids[0..hops)). A message the history cannot keep (larger than the
 * bound, or out of memory) counts as evicted; if its stream goes on, it is a NULL slot in the ring, so the
 * stream's sequences stay one run. Never fails the loop. */
static void history_record(Forwarder *f, int n, const stamp_t *stamp, const unsigned char *ids, int hops)
{
    history_t *h = f->history;
    size_t route = (size_t)hops * WIRE_NODE_ID_LEN;
    size_t cost = hentry_size(n, route);  /* the allocation, then the frames' bytes */
    uint64_t frame_bytes = 0;
    for (int i = 0; i < n; i++) {
        size_t size = Z.msg_size(&f->parts[i]);
        frame_bytes += size;
        cost += size + (size > HELD_WRAP_MIN ? sizeof(held_t) : 0);
    }
    history_trim(h, cost <= h->bound ? cost : 0, f->tick_ns);
    hentry_t *e = cost <= h->bound ? hentry_new(n, route) : NULL;
    uint64_t counted = 0;
    int wrapped = 0;
    while (e && wrapped < n && held_wrap(h->ledger, &e->frames[wrapped], &f->parts[wrapped], 0, &counted) == 0)
        wrapped++;
    hstream_t *s = hstream_get(h, stamp->stream);
    int kept = e && wrapped == n && s;
    while (kept && s->count && s->first + s->count < stamp->seq)  /* messages an earlier failure could not keep */
        kept = hstream_push(h, s, NULL) == 0;
    if (kept)
        kept = hstream_push(h, s, e) == 0;
    if (!kept) {
        if (e) {
            for (int i = 0; i < wrapped; i++)
                (void)Z.msg_close(&e->frames[i]);
            hentry_release(e);
        }
        if (s && !s->count)
            hstream_remove(h, s);  /* made for this message: its stream starts at the next one kept */
        else if (s)
            s->last = stamp->seq;
        h->evicted++;
    } else {
        if (s->count == 1)
            s->first = stamp->seq;
        s->last = stamp->seq;
        *e = (hentry_t){.stream = stamp->stream, .seq = stamp->seq, .at_ns = f->tick_ns, .cost = cost,
                        .frame_bytes = frame_bytes, .keylen = stamp->keylen, .skip = e->skip, .nframes = n, .hops = hops};
        if (route)
            memcpy(&e->frames[n], ids, route);
        h->bytes += cost;
        if (h->newest)
            h->newest->younger = e;
        else
            h->oldest = e;
        h->newest = e;
    }
    f->local[C_HISTORY_BYTES] = h->bytes;
    f->local[C_HISTORY_EVICTED] = h->evicted;
}

/* Take back the history ledger's released entries (publish_held, each batch or tick). */
static void history_reclaim(Forwarder *f)
{
    if (f->history)
        ledger_reclaim(f->history->ledger);
}
