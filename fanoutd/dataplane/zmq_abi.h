/*
 * The slice of the libzmq 4.x ABI that fanoutd's forwarding loop uses.
 *
 * Written out by hand so _forward.c builds without libzmq headers and binds
 * at run time to whichever libzmq pyzmq uses.  Being hand-written, every
 * line here is checked against a real zmq.h by tests/abi/probe.c, which
 * includes this very file: sizes, alignments, offsets, constants and the
 * type of each function.
 */
#ifndef FANOUTD_ZMQ_ABI_H
#define FANOUTD_ZMQ_ABI_H

#include <stddef.h>

/* The only major version whose ABI this file describes. */
#define ZABI_MAJOR 4

/* Stand-ins for zmq_msg_t and zmq_pollitem_t (non-Windows layout). */
typedef struct { unsigned char _[64] __attribute__((aligned(sizeof(void *)))); } zmsg_t;
typedef struct { void *socket; int fd; short events; short revents; } zpollitem_t;
/* zmq_free_fn: what zmq_msg_init_data calls once libzmq no longer holds the message (any thread). */
typedef void(zfree_fn)(void *data, void *hint);
/* Where the loop places every message it keeps, on its stack or in its own allocations: at the start of a
 * cache line. libzmq needs only pointer alignment, but zmq_msg_init's 8-byte store at offset 41 straddles
 * two lines for a message 16 bytes past one: one such message on the PUSH path drew 7 % of the loop's
 * profile at 100 B (bench/README.md, "Messages on cache lines"). ZMSG_LINES(n) is the bytes of n of them,
 * as aligned_alloc wants. */
#define ZMSG_LINE __attribute__((aligned(64)))
#define ZMSG_LINES(n) ((size_t)(n) * sizeof(zmsg_t))

#define Z_DONTWAIT 1
#define Z_SNDMORE 2
#define Z_POLLIN 1
#define Z_POLLOUT 2
#define Z_EVENTS 15
#define Z_FD 14
#define Z_ETERM (156384712 + 53)
#define Z_XPUB_NODROP 69
#define Z_SUBSCRIBE 6

/*
 * Every function the loop calls, as X(return type, field, libzmq symbol,
 * parameters).  MSG and POLLITEM name the message and poll-item types, so
 * the loop expands the list with the stand-ins above and the probe with
 * zmq.h's own types: one list, two expansions, no copy to drift.
 */
#define ZABI_FUNCTIONS(X, MSG, POLLITEM)                   \
    X(int, msg_init, zmq_msg_init, (MSG *))                \
    X(int, msg_init_size, zmq_msg_init_size, (MSG *, size_t)) \
    X(void *, msg_data, zmq_msg_data, (MSG *))             \
    X(size_t, msg_size, zmq_msg_size, (const MSG *))       \
    X(int, msg_more, zmq_msg_more, (const MSG *))          \
    X(int, msg_recv, zmq_msg_recv, (MSG *, void *, int))   \
    X(int, msg_send, zmq_msg_send, (MSG *, void *, int))   \
    X(int, msg_close, zmq_msg_close, (MSG *))              \
    X(int, msg_copy, zmq_msg_copy, (MSG *, MSG *))         \
    X(int, msg_move, zmq_msg_move, (MSG *, MSG *))         \
    X(int, msg_init_data, zmq_msg_init_data, (MSG *, void *, size_t, zfree_fn *, void *)) \
    X(const char *, msg_gets, zmq_msg_gets, (const MSG *, const char *)) \
    X(int, poll, zmq_poll, (POLLITEM *, int, long))        \
    X(int, errno_, zmq_errno, (void))                      \
    X(int, setsockopt, zmq_setsockopt, (void *, int, const void *, size_t)) \
    X(int, getsockopt, zmq_getsockopt, (void *, int, void *, size_t *)) \
    X(int, connect, zmq_connect, (void *, const char *))   \
    X(int, disconnect, zmq_disconnect, (void *, const char *)) \
    X(void, version, zmq_version, (int *, int *, int *))

#define ZABI_FIELD(ret, field, symbol, params) ret (*field) params;

/* The loop's table of libzmq functions. */
struct zabi {
    ZABI_FUNCTIONS(ZABI_FIELD, zmsg_t, zpollitem_t)
};

#endif
