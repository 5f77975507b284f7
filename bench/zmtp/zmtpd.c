/*
 * zmtpd: a prototype ZeroMQ publisher without libzmq on the subscriber side
 * (issue #28; bench only, not the product). Messages come in on a bound
 * libzmq SUB collector (producers unchanged) and go out to ZeroMQ
 * subscribers over TCP through its own ZMTP 3.1 (conn.c, zmtp.c): one
 * thread, epoll, one output ring per connection of shared message buffers,
 * writev, exact bytes pending per connection, PING/PONG both ways, prefix
 * filtering. Collector messages are taken in batches (up to -b bytes, 256 KiB:
 * measured, batches of MiBs made the producer, this loop and the readers on
 * two cores take turns instead of overlapping) and every connection written
 * once per batch, so many messages go per writev.
 *
 * Slow readers are paced, as fanoutd's default policy does: while any
 * connection holds more than PACE bytes the collector is not read (its
 * high-water mark then holds the producers back over TCP); a connection that
 * stays over PACE for STALL ms, or passes MAX_PENDING, is cut.
 *
 * Usage: zmtpd [-b BATCH_BYTES] [-m MAX_PENDING_BYTES] [-p PACE_BYTES] [-S STALL_MS] [-H HEARTBEAT_IVL_MS]
 *              [-T HEARTBEAT_TIMEOUT_MS] [-s HANDSHAKE_MS] COLLECTOR_ENDPOINT tcp://HOST:PORT
 * Prints "ready" once bound; on SIGUSR1 and at exit (SIGTERM, SIGINT) a "stats ..." line.
 * HEARTBEAT_IVL_MS 0: no PINGs of its own (it still answers the peers').
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "server.h"

#define COLLECT_BATCH 4096 /* collector messages per turn at most before every connection is written */
#define MAX_PARTS 64

struct server srv;
static int listen_fd, sig_fd, zmq_fd;
static void *collector;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void print_stats(void)
{
    struct stats *s = &srv.st;
    printf("stats connections=%u accepted=%llu closed_by_peer=%llu cut_pending=%llu cut_stalled=%llu "
           "cut_heartbeat=%llu cut_handshake=%llu protocol_errors=%llu messages_in=%llu deliveries=%llu "
           "bytes_out=%llu writev_calls=%llu subscribes=%llu cancels=%llu pings_answered=%llu paces=%llu\n",
           srv.all.n, (unsigned long long)s->accepted, (unsigned long long)s->closed_by_peer,
           (unsigned long long)s->cut_pending, (unsigned long long)s->cut_stalled,
           (unsigned long long)s->cut_heartbeat,
           (unsigned long long)s->cut_handshake, (unsigned long long)s->protocol_errors,
           (unsigned long long)s->messages_in, (unsigned long long)s->deliveries,
           (unsigned long long)s->bytes_out, (unsigned long long)s->writev_calls,
           (unsigned long long)s->subscribes, (unsigned long long)s->cancels,
           (unsigned long long)s->pings_answered, (unsigned long long)s->paces);
    fflush(stdout);
}

static void watch(int fd)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    if (epoll_ctl(srv.epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        perror("zmtpd: epoll_ctl");
        exit(1);
    }
}

static int listen_on(const char *endpoint)
{
    char host[64];
    int port;
    if (sscanf(endpoint, "tcp://%63[^:]:%d", host, &port) != 2) {
        fprintf(stderr, "zmtpd: %s: expected tcp://IPV4:PORT\n", endpoint);
        exit(2);
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        listen(fd, 4096) != 0) {
        fprintf(stderr, "zmtpd: listen %s: %s\n", endpoint, strerror(errno));
        exit(1);
    }
    return fd;
}

static void accept_all(int64_t now)
{
    for (;;) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                fprintf(stderr, "zmtpd: accept: %s\n", strerror(errno)); /* EMFILE: retried next wake-up */
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if ((uint32_t)fd >= srv.byfd_cap) {
            uint32_t cap = (uint32_t)fd * 2 + 64;
            srv.byfd = realloc(srv.byfd, cap * sizeof *srv.byfd);
            if (!srv.byfd)
                abort();
            memset(srv.byfd + srv.byfd_cap, 0, (cap - srv.byfd_cap) * sizeof *srv.byfd);
            srv.byfd_cap = cap;
        }
        srv.byfd[fd] = conn_new(fd, now);
        srv.st.accepted++;
        watch(fd);
    }
}

/* One collector message, all its parts, framed once into a shared buffer; NULL when none is waiting. */
static struct msg *collect_one(void)
{
    zmq_msg_t parts[MAX_PARTS];
    int n = 0, more = 1;
    size_t total = 0;
    while (more) {
        zmq_msg_t *p = &parts[n < MAX_PARTS ? n : MAX_PARTS - 1];
        if (n >= MAX_PARTS) /* past MAX_PARTS the last slot is reused: the message is refused below */
            zmq_msg_close(p);
        zmq_msg_init(p);
        if (zmq_msg_recv(p, collector, n ? 0 : ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(p);
            return NULL; /* EAGAIN on a first part only: the rest of a message is always there */
        }
        more = zmq_msg_more(p);
        total += (zmq_msg_size(p) > 255 ? 9 : 2) + zmq_msg_size(p);
        n++;
    }
    if (n > MAX_PARTS) {
        for (int i = 0; i < MAX_PARTS; i++)
            zmq_msg_close(&parts[i]);
        srv.st.protocol_errors++;
        return collect_one();
    }
    struct msg *m = msg_new(total);
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        size_t size = zmq_msg_size(&parts[i]);
        at += zmtp_frame_header(m->data + at, i + 1 < n ? ZMTP_MORE : 0, size);
        if (i == 0)
            m->topic_off = (uint32_t)at, m->topic_len = (uint32_t)size;
        memcpy(m->data + at, zmq_msg_data(&parts[i]), size);
        at += size;
        zmq_msg_close(&parts[i]);
    }
    return m;
}

static int held; /* the collector was left unread for a paced connection: read it again once none is */

/* Takes up to COLLECT_BATCH messages and queues each for every subscriber that wants it; 1 if more wait. */
static int collect(void)
{
    uint64_t bytes = 0;
    for (int k = 0; k < COLLECT_BATCH && bytes < srv.batch_bytes; k++) {
        if (srv.paced) {
            held = 1;
            return 0;
        }
        struct msg *m = collect_one();
        if (!m)
            return 0;
        srv.st.messages_in++;
        bytes += m->len;
        for (uint32_t i = 0; i < srv.all.n; i++) {
            struct conn *c = srv.all.v[i];
            if (c->state == S_ACTIVE && !c->dead && conn_wants(c, m))
                conn_enqueue(c, m);
        }
        msg_unref(m);
    }
    return 1;
}

/* Heartbeats and handshake deadlines: one pass over the connections, no per-connection timer. */
static void sweep(int64_t now)
{
    for (uint32_t i = 0; i < srv.all.n; i++) {
        struct conn *c = srv.all.v[i];
        if (c->dead)
            continue;
        if (c->state != S_ACTIVE) {
            if (now - c->created_ms > srv.handshake_ms)
                conn_kill(c, &srv.st.cut_handshake);
            continue;
        }
        if (c->paced && now - c->paced_ms > srv.stall_ms) {
            conn_kill(c, &srv.st.cut_stalled);
            continue;
        }
        if (srv.hb_ivl_ms <= 0)
            continue;
        if (c->ping_at_ms && now - c->ping_at_ms > srv.hb_timeout_ms) {
            conn_kill(c, &srv.st.cut_heartbeat);
            continue;
        }
        if (now - c->last_ping_ms >= srv.hb_ivl_ms) {
            uint16_t ttl = (uint16_t)((srv.hb_ivl_ms + srv.hb_timeout_ms) / 100); /* deciseconds */
            unsigned char body[2] = {(unsigned char)(ttl >> 8), (unsigned char)ttl};
            c->last_ping_ms = now;
            if (!c->ping_at_ms)
                c->ping_at_ms = now;
            conn_control(c, zmtp_command("PING", body, 2));
        }
    }
}

static void flush(void)
{
    for (uint32_t i = 0; i < srv.dirty.n; i++) {
        struct conn *c = srv.dirty.v[i];
        c->dirty = 0;
        if (!c->dead && !c->blocked)
            conn_write(c);
    }
    srv.dirty.n = 0;
    conn_reap();
}

static int64_t sweep_period(void)
{
    int64_t p = srv.handshake_ms;
    if (srv.hb_ivl_ms > 0 && srv.hb_ivl_ms < p)
        p = srv.hb_ivl_ms;
    if (srv.hb_ivl_ms > 0 && srv.hb_timeout_ms < p)
        p = srv.hb_timeout_ms;
    if (srv.stall_ms < p)
        p = srv.stall_ms;
    p /= 4;
    return p < 5 ? 5 : p > 1000 ? 1000 : p;
}

static void raise_fd_limit(void)
{
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        setrlimit(RLIMIT_NOFILE, &r);
    }
}

int main(int argc, char **argv)
{
    srv.max_pending = 64u << 20, srv.pace_bytes = 1u << 20, srv.stall_ms = 10000, srv.batch_bytes = 256u << 10;
    srv.hb_ivl_ms = 30000, srv.hb_timeout_ms = 15000, srv.handshake_ms = 10000;
    int opt;
    while ((opt = getopt(argc, argv, "b:m:p:S:H:T:s:")) != -1) {
        if (opt == 'b') srv.batch_bytes = strtoull(optarg, NULL, 10);
        else if (opt == 'm') srv.max_pending = strtoull(optarg, NULL, 10);
        else if (opt == 'p') srv.pace_bytes = strtoull(optarg, NULL, 10);
        else if (opt == 'S') srv.stall_ms = atoll(optarg);
        else if (opt == 'H') srv.hb_ivl_ms = atoll(optarg);
        else if (opt == 'T') srv.hb_timeout_ms = atoll(optarg);
        else if (opt == 's') srv.handshake_ms = atoll(optarg);
        else return 2;
    }
    if (argc - optind != 2 || srv.handshake_ms <= 0 || srv.hb_timeout_ms <= 0 || srv.stall_ms <= 0) {
        fprintf(stderr, "usage: zmtpd [-b BATCH] [-m MAX_PENDING] [-p PACE] [-S STALL_MS] [-H IVL_MS] [-T TIMEOUT_MS] "
                        "[-s HANDSHAKE_MS] COLLECTOR tcp://HOST:PORT\n");
        return 2;
    }
    raise_fd_limit();
    signal(SIGPIPE, SIG_IGN);
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM), sigaddset(&sigs, SIGINT), sigaddset(&sigs, SIGUSR1);
    sigprocmask(SIG_BLOCK, &sigs, NULL);
    srv.epfd = epoll_create1(EPOLL_CLOEXEC);
    sig_fd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
    void *ctx = zmq_ctx_new();
    collector = zmq_socket(ctx, ZMQ_SUB);
    int hwm = 100000; /* fanoutd's collector_hwm: while paced, producers are held back by TCP past it */
    zmq_setsockopt(collector, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(collector, ZMQ_SUBSCRIBE, "", 0);
    if (zmq_bind(collector, argv[optind]) != 0) {
        fprintf(stderr, "zmtpd: bind %s: %s\n", argv[optind], zmq_strerror(zmq_errno()));
        return 1;
    }
    size_t fdlen = sizeof zmq_fd;
    zmq_getsockopt(collector, ZMQ_FD, &zmq_fd, &fdlen);
    listen_fd = listen_on(argv[optind + 1]);
    watch(sig_fd), watch(zmq_fd), watch(listen_fd);
    printf("ready\n");
    fflush(stdout);
    int64_t period = sweep_period(), next_sweep = now_ms() + period;
    int more = 1; /* ZMQ_FD signals edges: drain once at start, and again whenever a batch stopped short */
    for (;;) {
        struct epoll_event evs[256];
        int64_t wait = more ? 0 : next_sweep - now_ms();
        int n = epoll_wait(srv.epfd, evs, 256, wait < 0 ? 0 : (int)wait);
        int64_t now = now_ms();
        srv.now_ms = now;
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == listen_fd) {
                accept_all(now);
            } else if (fd == zmq_fd) {
                more = 1;
            } else if (fd == sig_fd) {
                struct signalfd_siginfo si;
                while (read(sig_fd, &si, sizeof si) == sizeof si) {
                    print_stats();
                    if (si.ssi_signo != SIGUSR1)
                        return 0;
                }
            } else if ((uint32_t)fd < srv.byfd_cap && srv.byfd[fd] && !srv.byfd[fd]->dead) {
                struct conn *c = srv.byfd[fd];
                if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                    conn_readable(c);
                if (!c->dead && (evs[i].events & EPOLLOUT))
                    conn_write(c);
            }
        }
        if (more) {
            uint32_t events = 0;
            size_t elen = sizeof events;
            zmq_getsockopt(collector, ZMQ_EVENTS, &events, &elen); /* lets libzmq process its commands */
            more = (events & ZMQ_POLLIN) ? collect() : 0;
        }
        if (now >= next_sweep) {
            sweep(now);
            next_sweep = now + period;
        }
        flush();
        if (held && !srv.paced)
            held = 0, more = 1; /* ZMQ_FD will not signal again what arrived while paced */
    }
}
