/*
 * msink: many subscribers in one process, for the bench.  It holds K
 * connections to one broker on 127.0.0.1 over raw TCP (epoll, non-blocking
 * sockets, one fd each, no libzmq: a libzmq socket costs two fds), so a
 * broker can be measured with up to ~10,000 subscribers, and it counts and
 * checks every message each connection gets.
 *
 * Protocols (-m):
 *   zmtp   ZMTP 3.0 with the NULL mechanism, as a SUB socket: greeting and
 *          READY (Socket-Type SUB), then, once the peer's READY is read, a
 *          subscription to everything (the message frame "\x01").  PING
 *          commands are answered with PONG (libzmq drops a silent peer); an
 *          ERROR command ends the connection (counted as closed).  A
 *          connection is ready on its first warm-up message (seq WARM_SEQ),
 *          which proves connection and subscription work end to end.
 *          Measured messages are single frames of LEN bytes; another size
 *          or a MORE flag counts as bad (framing is intact: it reads on).
 *          With -T (fanoutd's stamped output) a message is its first frame
 *          of LEN bytes followed by a trailer frame, which is skipped, as
 *          is a message whose first frame is not LEN bytes and has MORE
 *          set (the READY answer to the subscription).
 *   zmtp-pull  the same as a PULL socket (Socket-Type PULL, no
 *          subscription): a puller on a PUSH output.
 *   redis  "SUBSCRIBE c", "PING"; deliveries are RESP2 "message" arrays.
 *   nats   CONNECT, "SUB c 1", "PING"; deliveries are "MSG c 1 LEN"; a
 *          server PING between frames is answered with PONG.
 *          For both, the handshake ends at the reply to the PING (so the
 *          subscription is in place) and the connection is ready at once.
 *          A frame with a wrong prefix or trailer counts as bad and closes
 *          that connection (its framing is lost).
 *
 * Connections are opened BATCH at a time (those not through their handshake
 * yet), so the server's listen backlog does not overflow.  It prints
 * "connected" once every handshake is done (start the producer after that:
 * warm-ups fanned out to the subscribers already there slow the connecting
 * of thousands more down many times), and "ready" once every connection is
 * ready (or gone).  Then it counts until every connection has COUNT
 * measured messages, IDLE ms pass without one (after the first), or WAIT ms
 * pass with none at all (from "ready"; before it, from the last time a
 * connection got further, so a slow start is not cut short, a stuck one
 * is).  The payload header (seq, send time) sits at OFFSET in the message
 * body (default 2 for zmtp, the "t " topic; 0 for redis and nats).  With -l
 * it records each message's latency (receive time - send time) in 1 us
 * buckets up to 1 s plus an overflow bucket, so memory does not grow with
 * the message count; quantiles are bucket midpoints, max is exact.
 *
 * Odd readers, for the slow-consumer cells (bench/overload.py):
 *   -S     every connection stops reading once it is ready (subscribed and
 *          proven), the way a frozen client does: the kernel's receive
 *          buffer fills and the broker holds the rest.  A server's close
 *          that reaches it (RDHUP; a FIN queued behind a zero window may
 *          never) counts as closed; ask the broker what it cut.  Stalled
 *          connections are never waited for: the process ends when all are
 *          gone or WAIT ms after "ready" (or when it is stopped).
 *   -b BPS every connection reads at most BPS bytes a second (a token
 *          bucket refilled on each 20 ms turn of the loop): a reader that
 *          keeps reading, slower than the rest.
 *
 * Bytes are parsed as they stream in: each read() lands in one shared
 * buffer, and a connection keeps only its parser state, a partial frame
 * head and the 16 header bytes of the message being read, whatever LEN is.
 *
 * Usage: msink -m zmtp|zmtp-pull|redis|nats -p PORT -k K -L LEN -n COUNT [-o OFFSET]
 *              [-l] [-i IDLE_MS] [-w WAIT_MS] [-c CONNECT_BATCH] [-S | -b BPS] [-T]
 * Prints "connected", "ready", then one JSON line: conns, ready_conns,
 * received (total), received_min, received_max (over connections), bad,
 * t_first, t_last (ns, any connection), connect_ms (start until every
 * handshake is done), ready_ms (start until "ready"; both -1 if never
 * reached), closed (connections the server closed, refused or reset)
 * [, p50, p99, p999, max (ns)].  Exits 1 if no connection completes its
 * handshake, 2 on bad usage.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include "common.h"

#define READ_BUF (256u << 10)   /* one read() at most, shared by all connections */
#define HEAD_MAX 64             /* greeting, frame or command head, marker tail */
#define MAX_EVENTS 1024
#define HIST_BUCKETS 1000000u   /* 1 us each up to 1 s; one more for overflow */
#define NOTE_LIMIT 5            /* stderr lines about single connections */
#define GREETING_LEN 64
#define MIN(a, b) ((a) < (b) ? (a) : (b))

enum mode { M_ZMTP, M_REDIS, M_NATS };

static const char crlf[] = "\r\n", nats_ping[] = "PING\r\n";

enum phase {
    P_MARKER,   /* redis/nats handshake: skip up to and including the marker */
    P_GREETING, /* zmtp: the peer's greeting */
    P_FRAME,    /* zmtp: flags and size */
    P_COMMAND,  /* zmtp: a command body (its first HEAD_MAX bytes kept) */
    P_SKIP,     /* zmtp: a frame body that is not looked at */
    P_BODY,     /* a message body: keep its payload header */
    P_PREFIX,   /* redis/nats: the delivery prefix */
    P_TRAILER,  /* redis/nats: "\r\n" after the body */
    P_PING,     /* nats: "PING\r\n" */
    P_LINE,     /* redis/nats: a line that is not a delivery (-ERR, INFO) */
};

enum state { C_NEW, C_CONNECTING, C_OPEN, C_GONE };

struct conn {
    int fd;
    uint8_t state, phase;
    uint8_t shook;      /* handshake done */
    uint8_t ready;
    uint8_t more;       /* zmtp: the last message frame had MORE set */
    uint8_t paused;     /* -S: stopped reading for good; -b: out of tokens until the next refill */
    uint16_t hlen;      /* bytes in head[] / matched so far */
    uint64_t need;      /* body bytes still to come */
    uint64_t received;  /* measured messages */
    unsigned char head[HEAD_MAX];
    unsigned char hdr[HDR_LEN];
    unsigned char *out; /* bytes send() did not take yet */
    size_t out_len, out_cap;
    double tokens;      /* -b: bytes it may still read */
};

/* Settings. */
static enum mode mode;
static int pull;   /* zmtp-pull: Socket-Type PULL, no subscription */
static uint64_t len, offset, count;
static struct sockaddr_in addr;
static unsigned char hello[256];
static size_t hello_len;
static const char *marker;
static size_t marker_len;
static char prefix[64];
static size_t prefix_len;
static int stall;          /* -S */
static double read_bps;    /* -b, 0: no limit */

/* State. */
static int ep;
static struct conn *conns;
static unsigned char *rbuf;
static uint64_t *hist;          /* NULL without -l */
static uint64_t lat_n, lat_max;
static uint64_t total, bad, t_first, t_last;
static int trailed;  /* -T: each message ends in a trailer frame (fanoutd's stamped output) */
static unsigned long n_shook, n_shake_failed, n_ready, n_unready_gone, n_gone, n_closed, pending;
static unsigned long n_failed;  /* connections that never got through their handshake */
static char first_fail[160];
static int notes;

static void note(const char *fmt, ...)
{
    if (notes++ >= NOTE_LIMIT) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("msink: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* At most n bytes of p, printable, for a message. */
static const char *printable(const unsigned char *p, size_t n)
{
    static char s[48];
    size_t i;
    for (i = 0; i < n && i < sizeof s - 1; i++) s[i] = isprint(p[i]) ? (char)p[i] : '.';
    s[i] = 0;
    return s;
}

static void watch(struct conn *c, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.u32 = (uint32_t)(c - conns) };
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* The connection ends: by the server (refused, closed, reset) or by us (bad framing). */
static void gone(struct conn *c, int by_server, const char *why)
{
    const unsigned long i = (unsigned long)(c - conns);
    close(c->fd);
    c->state = C_GONE;
    n_gone++;
    if (by_server) n_closed++;
    if (!c->shook) {
        n_shake_failed++;
        n_failed++;
        if (!first_fail[0]) snprintf(first_fail, sizeof first_fail, "%s", why);
    } else if (by_server) {
        note("connection %lu closed by the server after %llu messages: %s", i,
             (unsigned long long)c->received, why);
    }
    if (!c->ready) n_unready_gone++;
    if (c->received < count) pending--;
    free(c->out);
    c->out = NULL;
}

static void send_bytes(struct conn *c, const void *data, size_t n)
{
    const unsigned char *p = data;
    if (c->out_len == 0) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w == (ssize_t)n) return;
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                gone(c, 1, strerror(errno));
                return;
            }
            w = 0;
        }
        p += w;
        n -= (size_t)w;
        watch(c, EPOLLIN | EPOLLOUT);
    }
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 256;
        while (cap < c->out_len + n) cap *= 2;
        unsigned char *out = realloc(c->out, cap);
        if (!out) { perror("msink: realloc"); exit(1); }
        c->out = out;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
}

static void flush_out(struct conn *c)
{
    if (!c->out_len) return;
    ssize_t w = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) gone(c, 1, strerror(errno));
        return;
    }
    memmove(c->out, c->out + w, c->out_len - (size_t)w);
    c->out_len -= (size_t)w;
    if (!c->out_len) watch(c, EPOLLIN);
}

static void make_ready(struct conn *c)
{
    c->ready = 1;
    n_ready++;
    if (stall) {  /* from now on it reads nothing; only the server's close is watched for */
        c->paused = 1;
        watch(c, EPOLLRDHUP);
    }
}

static void handshake_done(struct conn *c)
{
    c->shook = 1;
    n_shook++;
    if (mode == M_ZMTP && !pull) {
        static const unsigned char subscribe_all[] = { 0x00, 0x01, 0x01 };
        send_bytes(c, subscribe_all, sizeof subscribe_all);
    } else if (mode != M_ZMTP) {
        make_ready(c);  /* redis and nats publishers send no warm-up */
    }
}

/* A whole message body has arrived (and, for redis/nats, its trailer) at time t. */
static void deliver(struct conn *c, uint64_t t)
{
    if (get_u64(c->hdr) == WARM_SEQ) {
        if (!c->ready) make_ready(c);
        return;
    }
    if (++c->received == count) pending--;
    total++;
    if (!t_first) t_first = t;
    t_last = t;
    if (hist) {
        const uint64_t sent = get_u64(c->hdr + 8), d = t > sent ? t - sent : 0;
        const uint64_t b = d / 1000;
        hist[b < HIST_BUCKETS ? b : HIST_BUCKETS]++;
        lat_n++;
        if (d > lat_max) lat_max = d;
    }
}

static void bad_frame(struct conn *c, const unsigned char *p, size_t n)
{
    bad++;
    note("connection %lu: bad frame after %llu messages: %s", (unsigned long)(c - conns),
         (unsigned long long)c->received, printable(p, n));
    gone(c, 0, "bad frame");
}

static int zmtp_greeting_ok(const unsigned char *g)
{
    return g[0] == 0xFF && (g[9] & 1) && g[10] >= 3 && memcmp(g + 12, "NULL", 5) == 0;
}

/* A complete zmtp command; head[] holds its first hlen bytes. */
static void zmtp_command(struct conn *c)
{
    const unsigned char *b = c->head;
    const size_t n = c->hlen, name_len = n ? b[0] : 0;
    if (n < 1 + name_len) return;
    if (name_len == 5 && memcmp(b + 1, "READY", 5) == 0) {
        if (!c->shook) handshake_done(c);
    } else if (name_len == 4 && memcmp(b + 1, "PING", 4) == 0) {
        /* PING: TTL (2 bytes), context (<= 16 bytes); PONG echoes the context. */
        const size_t ctx = n > 7 ? n - 7 : 0;
        unsigned char pong[2 + 5 + HEAD_MAX] = { 0x04, (unsigned char)(5 + ctx), 4, 'P', 'O', 'N', 'G' };
        memcpy(pong + 7, b + 7, ctx);
        send_bytes(c, pong, 7 + ctx);
    } else if (name_len == 5 && memcmp(b + 1, "ERROR", 5) == 0) {
        const size_t r = n > 6 ? MIN((size_t)b[6], n - 7) : 0;
        char why[HEAD_MAX + 16];
        snprintf(why, sizeof why, "ERROR %s", printable(b + 7, r));
        gone(c, 1, why);  /* which reports why, once (rate-limited, or at the end) */
    }
    /* Any other command is skipped. */
}

/* Feed n bytes that one read() returned at time t to c's parser. */
static void consume(struct conn *c, const unsigned char *p, size_t n, uint64_t t)
{
    size_t k;
    while (c->state == C_OPEN) {
        switch (c->phase) {
        case P_BODY: {
            k = (size_t)MIN(c->need, (uint64_t)n);
            const uint64_t pos = len - c->need;
            if (pos < offset + HDR_LEN && pos + k > offset) {
                const uint64_t lo = pos > offset ? pos : offset, hi = MIN(pos + k, offset + HDR_LEN);
                memcpy(c->hdr + (lo - offset), p + (lo - pos), (size_t)(hi - lo));
            }
            p += k;
            n -= k;
            if ((c->need -= k)) return;
            if (mode == M_ZMTP) {
                c->phase = P_FRAME;
                deliver(c, t);
            } else {
                c->phase = P_TRAILER;
            }
            break;
        }
        case P_SKIP:
            k = (size_t)MIN(c->need, (uint64_t)n);
            p += k;
            n -= k;
            if ((c->need -= k)) return;
            c->phase = P_FRAME;
            break;
        case P_COMMAND:
            k = (size_t)MIN(c->need, (uint64_t)n);
            if (c->hlen < HEAD_MAX) {
                const size_t keep = MIN(k, (size_t)(HEAD_MAX - c->hlen));
                memcpy(c->head + c->hlen, p, keep);
                c->hlen += keep;
            }
            p += k;
            n -= k;
            if ((c->need -= k)) return;
            c->phase = P_FRAME;
            zmtp_command(c);
            c->hlen = 0;
            break;
        case P_FRAME: {
            if (!n) return;
            uint64_t size;
            int flags;
            if (c->hlen == 0 && n >= 2 && !(p[0] & 2)) {  /* the usual short frame, in one piece */
                flags = p[0];
                size = p[1];
                p += 2;
                n -= 2;
            } else {
                if (c->hlen == 0) {
                    c->head[c->hlen++] = *p++;
                    n--;
                }
                const size_t want = (c->head[0] & 2) ? 9 : 2;
                k = MIN(want - c->hlen, n);
                memcpy(c->head + c->hlen, p, k);
                c->hlen += k;
                p += k;
                n -= k;
                if (c->hlen < want) return;
                flags = c->head[0];
                size = c->head[1];
                for (size_t i = 2; i < want; i++) size = size << 8 | c->head[i];
                c->hlen = 0;
            }
            c->need = size;
            if (flags & 4) {
                c->phase = P_COMMAND;
            } else {
                const int first = !c->more;
                c->more = flags & 1;
                if (first && size == len && (trailed || !(flags & 1))) {
                    c->phase = P_BODY;
                } else {
                    if (first && !(trailed && (flags & 1))) bad++;
                    c->phase = P_SKIP;
                }
            }
            break;
        }
        case P_GREETING:
            if (!n) return;
            k = MIN((size_t)(GREETING_LEN - c->hlen), n);
            memcpy(c->head + c->hlen, p, k);
            c->hlen += k;
            p += k;
            n -= k;
            if (c->hlen < GREETING_LEN) return;
            if (!zmtp_greeting_ok(c->head)) {
                char why[80];
                snprintf(why, sizeof why, "not a ZMTP 3 NULL greeting: %s", printable(c->head, 16));
                gone(c, 1, why);
                return;
            }
            c->hlen = 0;
            c->phase = P_FRAME;
            break;
        case P_MARKER: {
            /* head[] keeps the last marker_len - 1 bytes seen, for a marker split across reads. */
            if (!n) return;
            size_t at = 0;  /* bytes of p up to the marker's end, 0: not found */
            const unsigned char *f;
            if (c->hlen) {
                unsigned char joined[2 * HEAD_MAX];
                const size_t take = MIN(n, marker_len - 1);
                memcpy(joined, c->head, c->hlen);
                memcpy(joined + c->hlen, p, take);
                if ((f = memmem(joined, c->hlen + take, marker, marker_len)))
                    at = (size_t)(f - joined) + marker_len - c->hlen;
            }
            if (!at && (f = memmem(p, n, marker, marker_len))) at = (size_t)(f - p) + marker_len;
            if (at) {
                p += at;
                n -= at;
                c->hlen = 0;
                c->phase = P_PREFIX;
                handshake_done(c);
                break;
            }
            const size_t keep = marker_len - 1;
            if (n >= keep) {
                memcpy(c->head, p + n - keep, keep);
                c->hlen = (uint16_t)keep;
            } else {
                const size_t drop = c->hlen + n > keep ? c->hlen + n - keep : 0;
                memmove(c->head, c->head + drop, c->hlen - drop);
                memcpy(c->head + c->hlen - drop, p, n);
                c->hlen = (uint16_t)(c->hlen - drop + n);
            }
            return;
        }
        case P_PREFIX:
            if (!n) return;
            if (c->hlen == 0 && p[0] != prefix[0]) {
                if (mode == M_NATS && p[0] == 'P') { c->phase = P_PING; break; }
                if (p[0] == '-' || (mode == M_NATS && (p[0] == 'I' || p[0] == '+'))) {
                    c->phase = P_LINE;
                    break;
                }
            }
            k = MIN(prefix_len - c->hlen, n);
            if (memcmp(p, prefix + c->hlen, k) != 0) { bad_frame(c, p, n); return; }
            c->hlen += k;
            p += k;
            n -= k;
            if (c->hlen < prefix_len) return;
            c->hlen = 0;
            c->need = len;
            c->phase = P_BODY;
            break;
        case P_TRAILER:
            if (!n) return;
            k = MIN((size_t)(2 - c->hlen), n);
            if (memcmp(p, crlf + c->hlen, k) != 0) { bad_frame(c, p, n); return; }
            c->hlen += k;
            p += k;
            n -= k;
            if (c->hlen < 2) return;
            c->hlen = 0;
            c->phase = P_PREFIX;
            deliver(c, t);
            break;
        case P_PING:
            if (!n) return;
            k = MIN((size_t)(6 - c->hlen), n);
            if (memcmp(p, nats_ping + c->hlen, k) != 0) { bad_frame(c, p, n); return; }
            c->hlen += k;
            p += k;
            n -= k;
            if (c->hlen < 6) return;
            c->hlen = 0;
            c->phase = P_PREFIX;
            send_bytes(c, "PONG\r\n", 6);
            break;
        case P_LINE: {
            if (!n) return;
            const unsigned char *nl = memchr(p, '\n', n);
            k = nl ? (size_t)(nl - p) + 1 : n;
            const size_t keep = MIN(k, (size_t)(HEAD_MAX - c->hlen));
            memcpy(c->head + c->hlen, p, keep);
            c->hlen += keep;
            p += k;
            n -= k;
            if (!nl) return;
            if (c->head[0] == '-') {
                size_t shown = c->hlen;
                while (shown && (c->head[shown - 1] == '\n' || c->head[shown - 1] == '\r')) shown--;
                note("connection %lu: the server said %s", (unsigned long)(c - conns), printable(c->head, shown));
            }
            c->hlen = 0;
            c->phase = P_PREFIX;
            break;
        }
        }
    }
}

static void start(struct conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) { perror("msink: socket"); exit(1); }
    c->state = C_CONNECTING;
    struct epoll_event ev = { .events = EPOLLOUT, .data.u32 = (uint32_t)(c - conns) };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) { perror("msink: epoll_ctl"); exit(1); }
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) != 0 && errno != EINPROGRESS)
        gone(c, 1, strerror(errno));
}

static void connected(struct conn *c)
{
    int err = 0, one = 1;
    socklen_t sl = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &sl) != 0) err = errno;
    if (err) { gone(c, 1, strerror(err)); return; }
    c->state = C_OPEN;
    c->phase = mode == M_ZMTP ? P_GREETING : P_MARKER;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    watch(c, EPOLLIN);
    send_bytes(c, hello, hello_len);
}

static void on_event(struct conn *c, uint32_t events)
{
    if (c->state == C_CONNECTING) {
        connected(c);
        return;
    }
    if (c->state != C_OPEN) return;
    if (stall && c->paused) {
        if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) gone(c, 1, "closed while stalled");
        else watch(c, EPOLLRDHUP);  /* a PONG queued in its last read re-armed EPOLLIN: disarm it */
        return;
    }
    if (events & EPOLLOUT) flush_out(c);
    if (c->state != C_OPEN || !(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
    size_t want = READ_BUF;
    if (read_bps > 0 && c->shook) {
        if (c->tokens < 1) {  /* wait for the refill: no events but a hang-up meanwhile */
            c->paused = 1;
            watch(c, c->out_len ? EPOLLOUT : 0);
            return;
        }
        want = MIN(want, (size_t)c->tokens);
    }
    ssize_t r = read(c->fd, rbuf, want);
    if (r > 0 && read_bps > 0 && c->shook) c->tokens -= (double)r;
    if (r > 0) consume(c, rbuf, (size_t)r, now_ns());
    else if (r == 0) gone(c, 1, "end of stream");
    else if (errno != EAGAIN && errno != EINTR) gone(c, 1, strerror(errno));
}

/* Latency quantiles from the histogram: bucket midpoints, never above the exact max. */
static uint64_t hist_quantile(double q)
{
    if (!lat_n) return 0;
    const uint64_t rank = (uint64_t)(q * (double)(lat_n - 1) + 0.5);
    uint64_t seen = 0;
    for (uint64_t b = 0; b <= HIST_BUCKETS; b++) {
        seen += hist[b];
        if (seen > rank) return b == HIST_BUCKETS ? lat_max : MIN(b * 1000 + 500, lat_max);
    }
    return lat_max;
}

static void setup_protocol(void)
{
    if (mode == M_ZMTP) {
        /* Greeting: signature, version 3.0, mechanism NULL, as-server 0, filler. */
        memset(hello, 0, GREETING_LEN);
        hello[0] = 0xFF;
        hello[9] = 0x7F;
        hello[10] = 3;
        memcpy(hello + 12, "NULL", 4);
        /* READY command with one property, Socket-Type = SUB (or PULL). */
        size_t i = GREETING_LEN + 2;
        hello[i++] = 5;
        memcpy(hello + i, "READY", 5), i += 5;
        hello[i++] = 11;
        memcpy(hello + i, "Socket-Type", 11), i += 11;
        if (pull)
            memcpy(hello + i, "\0\0\0\4PULL", 8), i += 8;
        else
            memcpy(hello + i, "\0\0\0\3SUB", 7), i += 7;
        hello[GREETING_LEN] = 0x04;
        hello[GREETING_LEN + 1] = (unsigned char)(i - GREETING_LEN - 2);
        hello_len = i;
        return;
    }
    const char *h = mode == M_REDIS ? "SUBSCRIBE c\r\nPING\r\n"
                                    : "CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB c 1\r\nPING\r\n";
    hello_len = strlen(h);
    memcpy(hello, h, hello_len);
    marker = mode == M_REDIS ? "$4\r\npong\r\n$0\r\n\r\n" : "PONG\r\n";
    marker_len = strlen(marker);
    prefix_len = (size_t)snprintf(prefix, sizeof prefix,
                                  mode == M_REDIS ? "*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$%llu\r\n" : "MSG c 1 %llu\r\n",
                                  (unsigned long long)len);
}

static int usage(void)
{
    fprintf(stderr, "usage: msink -m zmtp|zmtp-pull|redis|nats -p PORT -k K -L LEN -n COUNT [-o OFFSET] [-l] "
                    "[-i IDLE_MS] [-w WAIT_MS] [-c CONNECT_BATCH] [-S | -b BPS] [-T]\n");
    return 2;
}

int main(int argc, char **argv)
{
    const char *m = NULL;
    long port = 0, k = 0, batch = 200, idle_ms = 1000, wait_ms = 30000, off = -1;
    int latency = 0, opt;
    while ((opt = getopt(argc, argv, "m:p:k:L:n:o:li:w:c:Sb:T")) != -1) {
        switch (opt) {
        case 'm': m = optarg; break;
        case 'p': port = atol(optarg); break;
        case 'k': k = atol(optarg); break;
        case 'L': len = strtoull(optarg, NULL, 10); break;
        case 'n': count = strtoull(optarg, NULL, 10); break;
        case 'o': off = atol(optarg); break;
        case 'l': latency = 1; break;
        case 'i': idle_ms = atol(optarg); break;
        case 'w': wait_ms = atol(optarg); break;
        case 'c': batch = atol(optarg); break;
        case 'S': stall = 1; break;
        case 'b': read_bps = atof(optarg); break;
        case 'T': trailed = 1; break;
        default: return usage();
        }
    }
    if (!m) return usage();
    if (strcmp(m, "zmtp") == 0) mode = M_ZMTP;
    else if (strcmp(m, "zmtp-pull") == 0) mode = M_ZMTP, pull = 1;
    else if (strcmp(m, "redis") == 0) mode = M_REDIS;
    else if (strcmp(m, "nats") == 0) mode = M_NATS;
    else return usage();
    offset = off >= 0 ? (uint64_t)off : mode == M_ZMTP ? 2 : 0;
    if (optind != argc || port <= 0 || port > 65535 || k <= 0 || count == 0 || len < offset + HDR_LEN
        || len > (1ull << 40) || batch <= 0 || idle_ms <= 0 || wait_ms <= 0 || read_bps < 0
        || (stall && read_bps > 0))
        return usage();

    /* One fd per connection: raise the soft limit as far as allowed. */
    struct rlimit rl = { 0, 0 };
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if ((rlim_t)k + 16 > rl.rlim_cur) {
        fprintf(stderr, "msink: %ld connections need more fds than the limit (%llu)\n", k,
                (unsigned long long)rl.rlim_cur);
        return 2;
    }

    setup_protocol();
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const unsigned long nconn = (unsigned long)k;
    conns = calloc(nconn, sizeof *conns);
    rbuf = malloc(READ_BUF);
    if (latency) hist = calloc(HIST_BUCKETS + 1, sizeof *hist);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (!conns || !rbuf || (latency && !hist) || ep < 0) { perror("msink: setup"); return 1; }
    pending = nconn;

    struct epoll_event evs[MAX_EVENTS];
    const uint64_t t_start = now_ns(), idle_ns = (uint64_t)idle_ms * 1000000ull,
                   wait_ns = (uint64_t)wait_ms * 1000000ull;
    uint64_t t_connected = 0, t_ready = 0, t_moved = t_start, t_refill = t_start;
    unsigned long next = 0, moves = 0;
    for (;;) {
        /* Keep at most BATCH connections between connect() and the end of their handshake. */
        while (next < nconn && next - n_shook - n_shake_failed < (unsigned long)batch) start(&conns[next++]);
        const int ne = epoll_wait(ep, evs, MAX_EVENTS, 20);
        if (ne < 0 && errno != EINTR) { perror("msink: epoll_wait"); return 1; }
        for (int i = 0; i < ne; i++) on_event(&conns[evs[i].data.u32], evs[i].events);
        const uint64_t now = now_ns();
        if (read_bps > 0) {  /* refill every bucket, up to 50 ms worth; wake the readers that ran dry */
            const double add = read_bps * (double)(now - t_refill) / 1e9, cap = read_bps / 20 + 1;
            t_refill = now;
            for (unsigned long i = 0; i < next; i++) {
                struct conn *c = &conns[i];
                c->tokens = c->tokens + add < cap ? c->tokens + add : cap;
                if (c->paused && c->state == C_OPEN && c->tokens >= 1) {
                    c->paused = 0;
                    watch(c, c->out_len ? EPOLLIN | EPOLLOUT : EPOLLIN);
                }
            }
        }
        if (n_shook + n_ready + n_gone != moves) {  /* some connection got further */
            moves = n_shook + n_ready + n_gone;
            t_moved = now;
        }
        if (!t_connected && n_shook + n_shake_failed == nconn) {
            t_connected = now;
            if (!n_shook) break;
            printf("connected\n");
            fflush(stdout);
        }
        if (!t_ready && n_ready && n_ready + n_unready_gone == nconn) {
            t_ready = now;
            printf("ready\n");
            fflush(stdout);
        }
        if ((!pending && !stall) || n_gone == nconn) break;
        if (stall ? t_ready && now - t_ready >= wait_ns
                  : total ? now - t_last >= idle_ns : now - (t_ready ? t_ready : t_moved) >= wait_ns) break;
    }
    if (!n_shook) {
        fprintf(stderr, "msink: no connection to 127.0.0.1:%ld completed its handshake%s%s\n", port,
                first_fail[0] ? ": " : "", first_fail);
        return 1;
    }
    if (notes > NOTE_LIMIT) fprintf(stderr, "msink: %d more such notes not shown\n", notes - NOTE_LIMIT);
    if (n_failed)
        fprintf(stderr, "msink: %lu of %lu connections failed before their handshake ended (first: %s)\n",
                n_failed, nconn, first_fail);

    uint64_t rmin = UINT64_MAX, rmax = 0;
    for (unsigned long i = 0; i < nconn; i++) {
        rmin = MIN(rmin, conns[i].received);
        if (conns[i].received > rmax) rmax = conns[i].received;
    }
    printf("{\"conns\": %lu, \"ready_conns\": %lu, \"received\": %llu, \"received_min\": %llu, "
           "\"received_max\": %llu, \"bad\": %llu, \"t_first\": %llu, \"t_last\": %llu, "
           "\"connect_ms\": %.3f, \"ready_ms\": %.3f, \"closed\": %lu",
           nconn, n_ready, (unsigned long long)total, (unsigned long long)rmin, (unsigned long long)rmax,
           (unsigned long long)bad, (unsigned long long)t_first, (unsigned long long)t_last,
           t_connected ? (double)(t_connected - t_start) / 1e6 : -1.0,
           t_ready ? (double)(t_ready - t_start) / 1e6 : -1.0, n_closed);
    if (hist)
        printf(", \"p50\": %llu, \"p99\": %llu, \"p999\": %llu, \"max\": %llu",
               (unsigned long long)hist_quantile(0.50), (unsigned long long)hist_quantile(0.99),
               (unsigned long long)hist_quantile(0.999), (unsigned long long)lat_max);
    printf("}\n");
    fflush(stdout);
    return 0;
}
