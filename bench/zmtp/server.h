/*
 * zmtpd's state: the connections of subscribers and what the loop shares
 * with them. One thread owns all of it (zmtpd.c runs the loop, conn.c is one
 * connection's protocol and output).
 */
#ifndef ZMTPD_SERVER_H
#define ZMTPD_SERVER_H

#include <stdint.h>

#include "zmtp.h"

struct sub {
    uint32_t len;
    unsigned char *bytes;
};

enum conn_state { S_GREETING, S_READY, S_ACTIVE };

struct conn {
    int fd;
    enum conn_state state;
    uint8_t dead, blocked, dirty, in_more, paced;
    uint32_t idx;                /* position in srv.all */
    unsigned char *in;           /* bytes read and not yet parsed */
    uint32_t in_len, in_cap;
    struct msg **q;              /* the output: references to shared buffers, a ring */
    uint32_t qhead, qcount, qcap;
    uint32_t off;                /* bytes of q[qhead] already written */
    uint64_t pending;            /* exact bytes queued here and not yet written to the kernel */
    struct sub *subs;            /* prefixes; duplicates counted as libzmq does */
    uint32_t nsubs, subs_cap;
    int64_t created_ms, last_ping_ms, ping_at_ms; /* ping_at: the oldest unanswered PING, 0 if none */
    int64_t paced_ms;            /* since when pending has been over pace_bytes */
};

struct stats {
    uint64_t accepted, closed_by_peer, cut_pending, cut_stalled, cut_heartbeat, cut_handshake, protocol_errors;
    uint64_t paces;              /* times the collector was held back for a connection over pace_bytes */
    uint64_t messages_in, deliveries, bytes_out, writev_calls, subscribes, cancels, pings_answered;
};

struct connlist {
    struct conn **v;
    uint32_t n, cap;
};

struct server {
    int epfd;
    struct conn **byfd;
    uint32_t byfd_cap;
    struct connlist all, dirty, dead;
    uint64_t max_pending, pace_bytes, batch_bytes;
    uint32_t paced;              /* connections over pace_bytes: while any is, the collector is not read */
    int64_t hb_ivl_ms, hb_timeout_ms, handshake_ms, stall_ms;
    int64_t now_ms;              /* this turn's clock, for pacing's timestamps */
    struct stats st;
};

extern struct server srv;

void list_push(struct connlist *l, struct conn *c);
struct conn *conn_new(int fd, int64_t now);
/* Reads what the peer sent and acts on it (handshake, subscriptions, PING). */
void conn_readable(struct conn *c);
/* Queues a reference to m; cuts the connection if that would pass max_pending. */
void conn_enqueue(struct conn *c, struct msg *m);
/* Queues a command of our own (takes m's reference); pending bytes count it too. */
void conn_control(struct conn *c, struct msg *m);
/* Writes what is queued with writev; arms EPOLLOUT if the kernel took less. */
void conn_write(struct conn *c);
/* Does the connection subscribe to m's topic? */
int conn_wants(const struct conn *c, const struct msg *m);
/* Marks it for closing (counter: which stats field counts why). */
void conn_kill(struct conn *c, uint64_t *counter);
/* Closes and frees every connection marked dead. */
void conn_reap(void);

#endif
