/*
 * fanoutd/dataplane/subs.h: the state behind the subscription bounds (subs.c has the why): per output, the
 * connections by fd and the peer addresses counted, and the rings and fields the hub and the loop share,
 * each with its contract.
 *
 * Included by _forward.c only, after forwarder.h (OUTS).
 */
#ifndef FANOUTD_SUBS_H
#define FANOUTD_SUBS_H

#include <stdint.h>

#define SUBS_FD_PROPERTY "__fd"
#define SUBS_ADDR_PROPERTY "Peer-Address"
#define SUBS_CLOSES 1024   /* closed connections the loop has not taken yet; a power of two */
#define SUBS_REFUSALS 256  /* refusals the hub has not read yet; a power of two */
#define SUBS_ADDR 64       /* a peer address with its NUL (an IPv6 address with a scope fits) */

enum { BOUND_CONNECTION, BOUND_ADDRESS, BOUND_SOCKET, BOUNDS };
static const char *const BOUND_NAMES[BOUNDS] = {"connection", "address", "socket"};

typedef struct {
    uint64_t hash, count;  /* subscriptions of its connections on this output */
    uint32_t conns;        /* its connections counted here; the record goes with the last */
    char name[SUBS_ADDR];
} subs_addr;

typedef struct {
    uint64_t inode;        /* the fd's inode when first seen: another one is another connection */
    subs_addr *addr;
    uint32_t count, cap;   /* distinct prefixes held; slots in set (a power of two, at most half full) */
    int cut;               /* refused: its subscriptions are no longer read until its close is heard */
    uint64_t *set;         /* prefix hashes; 0: an empty slot */
} subs_conn;

typedef struct {
    subs_conn **by_fd;     /* indexed by fd; NULL: nothing counted for that fd */
    uint32_t nfd;
    subs_addr **addrs;     /* open addressing by hash; NULL: empty */
    uint32_t addr_cap, addr_used;
    uint64_t total;
} subs_out;

typedef struct { int32_t out, bound, fd; uint64_t inode, limit; char addr[SUBS_ADDR]; } subs_refusal;

struct subs {
    /* --- The loop's alone. --- */
    subs_out outs[OUTS];
    uint64_t seed;
    /* --- Hub writes, loop reads (relaxed): the bounds, by BOUND_*, 0 none. --- */
    uint64_t max[BOUNDS];
    /* --- Closes: hub -> loop, single producer and consumer. The hub fills closes[head % SUBS_CLOSES]
     * after loading tail (acquire) and finding room, then stores head (release); the loop loads head
     * (acquire), takes the slots and stores tail (release). A full ring: the hub keeps it and retries. --- */
    struct { int32_t fd; uint64_t inode; } closes[SUBS_CLOSES];
    uint32_t closes_head, closes_tail;
    /* --- Refusals: loop -> hub, the same way round. A full ring loses the report (the counter counts it). */
    subs_refusal refusals[SUBS_REFUSALS];
    uint32_t refusals_head, refusals_tail;
    /* --- Loop writes, hub reads (relaxed): each output's count per connection, by fd, for /peers. --- */
    /* Sized once, by the fd limit at construction (calloc: pages never written cost nothing); an fd past it
     * is shown no count. A count may be stale for a moment: until the loop has heard its connection close. */
    uint32_t *shown[OUTS];
    uint32_t nshown;
};

#endif
