/*
 * fanoutd/dataplane/senders.h: the senders' box, where the forwarding loop
 * reports which kind of socket each producer connection is (its ZMTP
 * Socket-Type: PUB, XPUB, PUSH) to the hub. senders.c fills it; the hub
 * reads it through Forwarder.senders() and fanoutd/senders.py.
 *
 * Why the loop: libzmq gives a peer's Socket-Type only as metadata of the
 * messages it sends (zmq_msg_gets), never in a socket-monitor event. Why
 * cheap: every message of one connection points at the same metadata
 * object, made once at its handshake. zmq_msg_gets itself (a std::string
 * and a std::map lookup) costs about a fifth of the loop's own time per
 * message at 100 B, so the loop identifies a connection by the message's
 * first word instead, which in libzmq 4.1 to 4.3 is the metadata's address
 * for every kind of message: the same word as the last message's is the
 * same connection, another word is looked up in a set of those reported,
 * and only a word not in it costs zmq_msg_gets and a report: a sighting.
 *
 * That word is a hint, never dereferenced. Every SENDERS_CHECK_EVERY
 * messages the loop calls zmq_msg_gets anyway and compares the Socket-Type
 * pointer (which points into the same metadata object) with the one the
 * word was reported with; a difference is reported as a new connection. So
 * a new connection whose metadata got a closed one's address (the hub's
 * `closed` count usually empties the set first), or a libzmq laid out
 * otherwise, is still reported, late rather than never.
 *
 * Included by _forward.c only, before forwarder.h (the Forwarder holds one).
 */
#ifndef FANOUTD_SENDERS_H
#define FANOUTD_SENDERS_H

#include <stdint.h>

#define SENDERS_RING 256   /* sightings the hub has not read yet; a power of two */
#define SENDERS_SET 2048   /* the reported set, open addressing; a power of two */
#define SENDERS_FULL 1024  /* the set is emptied past this (its connections are reported again) */
#define SENDERS_TYPE 16    /* a Socket-Type with its NUL; ZMTP's longest is 7 characters */
#define SENDERS_CHECK_EVERY 1021  /* messages between calls of zmq_msg_gets on an unchanged hint (a prime:
                                    * connections taking turns are each checked in time) */

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
    const void *hint;                   /* the last message's first word, once its connection is reported */
    uint32_t until_check;               /* messages left before zmq_msg_gets checks a known word again */
    uint32_t used;                      /* entries in the set */
    const void *keys[SENDERS_SET];      /* first words whose connection is reported; NULL: an empty slot */
    const char *types[SENDERS_SET];     /* the Socket-Type pointer each was reported with */
} senders_box;

#endif
