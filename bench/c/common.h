/* Shared bits of the bench's C programs: the clock and the payload header. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Every measured payload starts with: uint64 seq, uint64 send time (ns). */
#define HDR_LEN 16
/* Warm-up messages carry this seq; sinks report "ready" on them and skip them. */
#define WARM_SEQ UINT64_MAX

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void put_u64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }
static inline uint64_t get_u64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static inline int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The q-quantile (0..1) of sorted values v[0..n), nearest rank. */
static inline uint64_t quantile(const uint64_t *v, size_t n, double q)
{
    return n ? v[(size_t)(q * (double)(n - 1) + 0.5)] : 0;
}

#endif
