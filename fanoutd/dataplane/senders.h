/*
 * fanoutd/dataplane/senders.h: the senders' box, where the forwarding loop
 * reports which kind of socket each producer connection is (its ZMTP
 * Socket-Type: PUB, XPUB, PUSH) to the hub. senders.c fills it; the hub
 * reads it through Forwarder.senders() and fanoutd/senders.py.
 *
 * Why the loop: libzmq gives a peer's Socket-Type only as metadata of the
 * messages it sends (zmq_msg_gets), never in a socket-monitor event. Why
 * cheap: every message of one connection points at the same metadata
 * object (made once, at its handshake), so the string zmq_msg_gets returns
 * is the same pointer for every message of a connection. The loop compares
 * it with the last one, then with a set of those it has reported, and does
 * work only for a pointer it has not reported: a sighting.
 *
 * Included by _forward.c only, before forwarder.h (the Forwarder holds one).
 */
#ifndef FANOUTD_SENDERS_H
#define FANOUTD_SENDERS_H

#include <stdint.h>

#define SENDERS_RING 256   /* sightings the hub has not read yet; a power of two */
#define SENDERS_SET 4096   /* the reported set, open addressing; a power of two */
#define SENDERS_FULL 2048  /* the set is emptied past this (its connections are reported again) */
#define SENDERS_TYPE 16    /* a Socket-Type with its NUL; ZMTP's longest is 7 characters */

/* One connection seen: its fd as libzmq has it (-1: unknown), that fd's inode when seen (so the hub ties
 * the sighting to the connection, not to a later one that reuses the fd), and its Socket-Type. */
typedef struct {
    int32_t fd;
    uint64_t inode;
    char type[SENDERS_TYPE];
} sighting_t;

typedef struct {
    /* --- The mailbox: a single-producer, single-consumer ring. --- */
    /* The loop writes ring[head % SENDERS_RING] only after loading tail (acquire) and finding room, then
     * stores head + 1 (release); the hub loads head (acquire), reads the slots from tail to head, then
     * stores tail (release). A sighting that finds the ring full is not remembered as reported: the
     * connection's next message tries again, so a slow hub delays a sighting and loses none. */
    sighting_t ring[SENDERS_RING];
    uint32_t head, tail;

    /* --- Hub writes, loop reads (relaxed): producer connections closed so far (monitor events). --- */
    /* A connection's metadata is freed when it closes, and the next connection's may get its address: on a
     * change the loop empties its set, so each open connection is reported again at its next message. */
    uint64_t closed;

    /* --- The loop's alone. --- */
    uint64_t forgot;                    /* the value of closed when the set was last emptied */
    const char *last;                   /* the Socket-Type pointer of the last message read */
    uint32_t used;                      /* entries in set */
    const char *set[SENDERS_SET];       /* Socket-Type pointers reported; NULL: empty slot */
} senders_box;

#endif
