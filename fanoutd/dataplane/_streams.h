/*
 * fanoutd/dataplane/_streams.h: a bounded table of sequence streams keyed by bytes,
 * least recently used evicted first; included by _forward.c only (the stamp
 * streams of stamps.c).
 *
 * Why a table of its own: the sequence stamp must stay contiguous for a
 * subscriber that filters by topic prefix, so the broker keeps one counter
 * per topic key (see docs/concepts.md, "Sequence stamps"), and an edge keeps one
 * last-seen sequence per upstream stream to count gaps.  Both are bounded:
 * when the table is full the least recently used entry is evicted, and a
 * key that comes back gets a new stream id, which is how an eviction is told
 * from a gap (a gap keeps the stream id).
 *
 * Layout: a pool of `cap` entries, chained buckets (a power of two, at least
 * twice cap), a doubly linked recency list through the pool.  Lookups cost a
 * hash of the key and a short chain walk; nothing is allocated per message
 * once an entry exists.
 */
#ifndef FANOUTD_STREAMS_H
#define FANOUTD_STREAMS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

typedef struct {
    uint64_t hash;
    uint64_t stream;     /* the stamper: this key's stream id; the tracker: 1 while a tail repair claims up to seq */
    uint64_t seq;        /* the stamper: last sequence given; the tracker: last seen */
    int32_t chain;       /* next entry in the bucket, -1 ends */
    int32_t newer, older;
    uint16_t len;
    unsigned char key[WIRE_STREAM_KEY_CAP];
} stream_entry;

typedef struct {
    stream_entry *pool;
    int32_t *buckets;
    uint32_t mask;
    int32_t cap, used, newest, oldest;
    uint64_t evictions;
} stream_table;

static uint64_t stream_hash(const unsigned char *key, size_t len)
{
    uint64_t h = 1469598103934665603ULL;  /* FNV-1a, 64-bit */
    for (size_t i = 0; i < len; i++)
        h = (h ^ key[i]) * 1099511628211ULL;
    return h;
}

/* 0 ok, -1 out of memory (the table is left empty and unusable). */
static int streams_init(stream_table *t, int32_t cap)
{
    uint32_t n = 2;
    while (n < (uint32_t)cap * 2u)
        n <<= 1;
    memset(t, 0, sizeof *t);
    t->pool = calloc((size_t)cap, sizeof *t->pool);
    t->buckets = malloc(n * sizeof *t->buckets);
    if (!t->pool || !t->buckets) {
        free(t->pool);
        free(t->buckets);
        t->pool = NULL;
        t->buckets = NULL;
        return -1;
    }
    memset(t->buckets, 0xff, n * sizeof *t->buckets);
    t->mask = n - 1;
    t->cap = cap;
    t->newest = t->oldest = -1;
    return 0;
}

static void streams_free(stream_table *t)
{
    free(t->pool);
    free(t->buckets);
    t->pool = NULL;
    t->buckets = NULL;
}

static void streams_unlink(stream_table *t, int32_t i)
{
    stream_entry *e = &t->pool[i];
    if (e->newer >= 0)
        t->pool[e->newer].older = e->older;
    else
        t->newest = e->older;
    if (e->older >= 0)
        t->pool[e->older].newer = e->newer;
    else
        t->oldest = e->newer;
}

static void streams_push_newest(stream_table *t, int32_t i)
{
    stream_entry *e = &t->pool[i];
    e->newer = -1;
    e->older = t->newest;
    if (t->newest >= 0)
        t->pool[t->newest].newer = i;
    t->newest = i;
    if (t->oldest < 0)
        t->oldest = i;
}

/* Remove entry i from its bucket's chain. */
static void streams_unchain(stream_table *t, int32_t i)
{
    int32_t *link = &t->buckets[t->pool[i].hash & t->mask];
    while (*link != i)
        link = &t->pool[*link].chain;
    *link = t->pool[i].chain;
}

/* The entry for key, or NULL: a lookup that neither creates nor reorders (an edge checking the heads its hub
 * names against what it has seen, uprepair.c). */
static stream_entry *streams_find(stream_table *t, const void *key, size_t len)
{
    if (len > WIRE_STREAM_KEY_CAP)
        len = WIRE_STREAM_KEY_CAP;
    uint64_t h = stream_hash(key, len);
    for (int32_t i = t->buckets[h & t->mask]; i >= 0; i = t->pool[i].chain) {
        stream_entry *e = &t->pool[i];
        if (e->hash == h && e->len == len && memcmp(e->key, key, len) == 0)
            return e;
    }
    return NULL;
}

/* The entry for key, made most recently used; *created says whether it is
 * new (its stream and seq then zero; the oldest entry was evicted if full). */
static stream_entry *streams_get(stream_table *t, const void *key, size_t len, int *created)
{
    if (len > WIRE_STREAM_KEY_CAP)
        len = WIRE_STREAM_KEY_CAP;
    uint64_t h = stream_hash(key, len);
    int32_t *bucket = &t->buckets[h & t->mask];
    for (int32_t i = *bucket; i >= 0; i = t->pool[i].chain) {
        stream_entry *e = &t->pool[i];
        if (e->hash == h && e->len == len && memcmp(e->key, key, len) == 0) {
            if (t->newest != i) {
                streams_unlink(t, i);
                streams_push_newest(t, i);
            }
            *created = 0;
            return e;
        }
    }
    int32_t i;
    if (t->used < t->cap) {
        i = t->used++;
    } else {
        i = t->oldest;
        streams_unlink(t, i);
        streams_unchain(t, i);
        t->evictions++;
    }
    stream_entry *e = &t->pool[i];
    e->hash = h;
    e->len = (uint16_t)len;
    memcpy(e->key, key, len);
    e->stream = e->seq = 0;
    e->chain = *bucket;
    *bucket = i;
    streams_push_newest(t, i);
    *created = 1;
    return e;
}

#endif
