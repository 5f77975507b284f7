/*
 * One subscriber connection: its ZMTP handshake, what it sends (subscriptions
 * in both forms, PING, ERROR), and its output, a ring of references to shared
 * message buffers written with writev, with the exact bytes pending counted.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/uio.h>
#include <unistd.h>

#include "server.h"

#define IOV_BATCH 1024  /* IOV_MAX on Linux */
#define IN_FIRST 256    /* a connection's first input buffer: greeting + READY fit */

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (!p)
        abort();
    return p;
}

void list_push(struct connlist *l, struct conn *c)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->v = xrealloc(l->v, l->cap * sizeof *l->v);
    }
    l->v[l->n++] = c;
}

static void push_raw(struct conn *c, struct msg *m) /* takes a reference that the caller holds */
{
    if (c->qcount == c->qcap) {
        uint32_t cap = c->qcap ? c->qcap * 2 : 8;
        struct msg **q = xrealloc(NULL, cap * sizeof *q);
        for (uint32_t i = 0; i < c->qcount; i++)
            q[i] = c->q[(c->qhead + i) % c->qcap];
        free(c->q);
        c->q = q, c->qcap = cap, c->qhead = 0;
    }
    c->q[(c->qhead + c->qcount++) % c->qcap] = m;
    c->pending += m->len;
    if (!c->paced && c->pending > srv.pace_bytes) {
        c->paced = 1, c->paced_ms = srv.now_ms;
        srv.paced++, srv.st.paces++;
    }
    if (!c->dirty && !c->blocked) {
        c->dirty = 1;
        list_push(&srv.dirty, c);
    }
}

struct conn *conn_new(int fd, int64_t now)
{
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        abort();
    c->fd = fd;
    c->state = S_GREETING;
    c->created_ms = c->last_ping_ms = now;
    c->idx = srv.all.n;
    list_push(&srv.all, c);
    struct msg *g = msg_new(ZMTP_GREETING_LEN);
    zmtp_greeting(g->data);
    push_raw(c, g);
    push_raw(c, zmtp_ready("PUB")); /* NULL: both sides send READY at once, no waiting */
    return c;
}

static void unpace(struct conn *c)
{
    if (c->paced)
        c->paced = 0, srv.paced--;
}

void conn_kill(struct conn *c, uint64_t *counter)
{
    if (c->dead)
        return;
    c->dead = 1;
    unpace(c);
    (*counter)++;
    list_push(&srv.dead, c);
}

void conn_enqueue(struct conn *c, struct msg *m)
{
    if (c->pending + m->len > srv.max_pending && !c->blocked)
        conn_write(c); /* batches are written at their end; a full one first tries the kernel */
    if (c->dead)
        return;
    if (c->pending + m->len > srv.max_pending) {
        conn_kill(c, &srv.st.cut_pending);
        return;
    }
    push_raw(c, msg_ref(m));
    srv.st.deliveries++;
}

void conn_control(struct conn *c, struct msg *m)
{
    push_raw(c, m);
}

int conn_wants(const struct conn *c, const struct msg *m)
{
    const unsigned char *topic = m->data + m->topic_off;
    for (uint32_t i = 0; i < c->nsubs; i++)
        if (c->subs[i].len <= m->topic_len && memcmp(c->subs[i].bytes, topic, c->subs[i].len) == 0)
            return 1;
    return 0;
}

static void subscribe(struct conn *c, const unsigned char *p, size_t n)
{
    if (c->nsubs == c->subs_cap) {
        c->subs_cap = c->subs_cap ? c->subs_cap * 2 : 2;
        c->subs = xrealloc(c->subs, c->subs_cap * sizeof *c->subs);
    }
    unsigned char *copy = xrealloc(NULL, n ? n : 1);
    memcpy(copy, p, n);
    c->subs[c->nsubs++] = (struct sub){(uint32_t)n, copy};
    srv.st.subscribes++;
}

static void cancel(struct conn *c, const unsigned char *p, size_t n)
{
    for (uint32_t i = 0; i < c->nsubs; i++)
        if (c->subs[i].len == n && memcmp(c->subs[i].bytes, p, n) == 0) {
            free(c->subs[i].bytes);
            c->subs[i] = c->subs[--c->nsubs];
            srv.st.cancels++;
            return;
        }
}

static int name_is(const unsigned char *name, size_t nlen, const char *want)
{
    return nlen == strlen(want) && memcmp(name, want, nlen) == 0;
}

static void refuse(struct conn *c, const char *why)
{
    push_raw(c, zmtp_error(why)); /* best effort: written now if the kernel takes it */
    conn_write(c);
    conn_kill(c, &srv.st.protocol_errors);
}

static void on_command(struct conn *c, const struct zmtp_frame *f)
{
    const unsigned char *name, *data;
    size_t nlen, dlen;
    if (zmtp_command_split(f, &name, &nlen, &data, &dlen) != 0)
        return refuse(c, "malformed command");
    if (c->state == S_READY) {
        size_t tlen = 0;
        const unsigned char *type = name_is(name, nlen, "READY") ? zmtp_property(data, dlen, "Socket-Type", &tlen)
                                                                   : NULL;
        if (!type || !((tlen == 3 && memcmp(type, "SUB", 3) == 0) || (tlen == 4 && memcmp(type, "XSUB", 4) == 0)))
            return refuse(c, "expected READY from a SUB or XSUB");
        c->state = S_ACTIVE;
        return;
    }
    if (name_is(name, nlen, "SUBSCRIBE"))
        subscribe(c, data, dlen);
    else if (name_is(name, nlen, "CANCEL"))
        cancel(c, data, dlen);
    else if (name_is(name, nlen, "PING")) {
        if (dlen < 2 || dlen > 18)
            return refuse(c, "malformed PING");
        push_raw(c, zmtp_command("PONG", data + 2, dlen - 2)); /* echo its context */
        srv.st.pings_answered++;
    } else if (name_is(name, nlen, "ERROR"))
        conn_kill(c, &srv.st.closed_by_peer);
    /* PONG: liveness only (any byte counts); unknown commands are ignored, as RFC 37 allows */
}

static void on_frame(struct conn *c, const struct zmtp_frame *f)
{
    if (f->flags & ZMTP_COMMAND)
        return on_command(c, f);
    if (c->state != S_ACTIVE)
        return refuse(c, "message before READY");
    int first = !c->in_more;
    c->in_more = f->flags & ZMTP_MORE;
    if (!first || f->size == 0)
        return; /* an XSUB's other messages: nothing for a publisher */
    if (f->body[0] == 1)
        subscribe(c, f->body + 1, f->size - 1);
    else if (f->body[0] == 0)
        cancel(c, f->body + 1, f->size - 1);
}

void conn_readable(struct conn *c)
{
    if (c->in_len == c->in_cap) { /* level-triggered: one read per wake-up, growing only for a big frame */
        uint32_t cap = c->in_cap ? c->in_cap * 2 : IN_FIRST;
        if (cap > ZMTP_MAX_IN_FRAME * 2 + 64)
            return refuse(c, "input too large");
        c->in = xrealloc(c->in, cap), c->in_cap = cap;
    }
    ssize_t n = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        conn_kill(c, &srv.st.closed_by_peer);
        return;
    }
    if (n < 0)
        return;
    c->in_len += (uint32_t)n;
    c->ping_at_ms = 0; /* anything from the peer proves it alive */
    size_t at = 0;
    while (!c->dead) {
        if (c->state == S_GREETING) {
            if (c->in_len - at < ZMTP_GREETING_LEN)
                break;
            if (zmtp_greeting_ok(c->in + at) != 0)
                return refuse(c, "not a ZMTP 3 NULL greeting");
            at += ZMTP_GREETING_LEN;
            c->state = S_READY;
            continue;
        }
        struct zmtp_frame f;
        long used = zmtp_parse_frame(c->in + at, c->in_len - at, &f);
        if (used < 0)
            return refuse(c, "frame too large");
        if (used == 0)
            break;
        on_frame(c, &f);
        at += (size_t)used;
    }
    memmove(c->in, c->in + at, c->in_len - at);
    c->in_len -= (uint32_t)at;
    if (c->in_cap > IN_FIRST * 4 && c->in_len < IN_FIRST) { /* a big subscription was read: give it back */
        c->in = xrealloc(c->in, IN_FIRST), c->in_cap = IN_FIRST;
    }
}

static void arm(struct conn *c, int out)
{
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.fd = c->fd};
    epoll_ctl(srv.epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->blocked = (uint8_t)out;
}

void conn_write(struct conn *c)
{
    while (c->qcount && !c->dead) {
        struct iovec iov[IOV_BATCH];
        int n = 0;
        for (uint32_t i = 0; i < c->qcount && n < IOV_BATCH; i++, n++) {
            struct msg *m = c->q[(c->qhead + i) % c->qcap];
            uint32_t skip = i == 0 ? c->off : 0;
            iov[n] = (struct iovec){m->data + skip, m->len - skip};
        }
        ssize_t w = writev(c->fd, iov, n);
        srv.st.writev_calls++;
        if (w < 0) {
            if (errno == EAGAIN) {
                if (!c->blocked)
                    arm(c, 1);
                return;
            }
            if (errno != EINTR)
                conn_kill(c, &srv.st.closed_by_peer);
            continue;
        }
        srv.st.bytes_out += (uint64_t)w;
        c->pending -= (uint64_t)w;
        while (w > 0) {
            struct msg *m = c->q[c->qhead];
            uint32_t left = m->len - c->off;
            if ((size_t)w < left) {
                c->off += (uint32_t)w;
                break;
            }
            w -= left;
            c->off = 0;
            msg_unref(m);
            c->qhead = (c->qhead + 1) % c->qcap;
            c->qcount--;
        }
    }
    if (c->pending <= srv.pace_bytes)
        unpace(c);
    if (c->blocked && !c->qcount)
        arm(c, 0);
}

void conn_reap(void)
{
    for (uint32_t i = 0; i < srv.dead.n; i++) {
        struct conn *c = srv.dead.v[i];
        struct conn *last = srv.all.v[--srv.all.n];
        srv.all.v[c->idx] = last, last->idx = c->idx;
        srv.byfd[c->fd] = NULL;
        close(c->fd);
        for (uint32_t k = 0; k < c->qcount; k++)
            msg_unref(c->q[(c->qhead + k) % c->qcap]);
        for (uint32_t k = 0; k < c->nsubs; k++)
            free(c->subs[k].bytes);
        free(c->q), free(c->subs), free(c->in), free(c);
    }
    srv.dead.n = 0;
}
