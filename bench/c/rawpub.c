/*
 * rawpub: a paced or flat-out publisher for text protocols (Redis RESP,
 * NATS) over a raw TCP socket on 127.0.0.1, for the bench.
 *
 * It is zpub's twin for Redis and NATS, so that every system gets its load
 * from C, paced the same way (clock_nanosleep to each message's due time,
 * one write() per message; flat out, 256 KiB batches).  A Python publisher
 * bunches messages at high rates, which changes what a broker's reads cost.
 *
 * Sends HELLO, prints "connected", waits for a line on stdin ("go"), sends
 * COUNT messages of SIZE bytes on channel "c" (payload: seq, send time,
 * pad), then FLUSH, and waits until the reply FLUSHED proves the server has
 * taken everything.
 *
 * Usage: rawpub -m redis|nats -p PORT -s SIZE -n COUNT [-r RATE]
 * Prints one JSON line: sent, t_first, t_last (ns).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
#include "common.h"

#define BATCH_BYTES (256u << 10)

struct proto {
    const char *name, *hello, *flush, *flushed, *head; /* head: printf format with the payload length */
};

static const struct proto PROTOS[] = {
    { "redis", "CLIENT REPLY OFF\r\n", "CLIENT REPLY ON\r\nPING\r\n", "+PONG\r\n",
      "*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$%zu\r\n" },
    { "nats", "CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false}\r\n", "PING\r\n", "PONG\r\n",
      "PUB c %zu\r\n" },
};

static void die(const char *what)
{
    fprintf(stderr, "rawpub: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void write_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            die("write");
        }
        p += w;
        n -= (size_t)w;
    }
}

/* Read until `token` has been seen (the server's answer to the flush). */
static void read_until(int fd, const char *token)
{
    const size_t tlen = strlen(token);
    char buf[65536 + 64];
    size_t keep = 0;
    for (;;) {
        ssize_t r = read(fd, buf + keep, sizeof buf - keep - 1);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) die("waiting for the flush reply");
        size_t have = keep + (size_t)r;
        buf[have] = 0;
        if (memmem(buf, have, token, tlen)) return;
        keep = have < tlen ? have : tlen; /* a token split over two reads */
        memmove(buf, buf + have - keep, keep);
    }
}

int main(int argc, char **argv)
{
    const struct proto *proto = NULL;
    int port = 0, opt;
    size_t size = 100;
    unsigned long long count = 0;
    double rate = 0;
    while ((opt = getopt(argc, argv, "m:p:s:n:r:")) != -1) {
        switch (opt) {
        case 'm':
            for (size_t i = 0; i < sizeof PROTOS / sizeof *PROTOS; i++)
                if (strcmp(optarg, PROTOS[i].name) == 0) proto = &PROTOS[i];
            break;
        case 'p': port = atoi(optarg); break;
        case 's': size = strtoul(optarg, NULL, 10); break;
        case 'n': count = strtoull(optarg, NULL, 10); break;
        case 'r': rate = atof(optarg); break;
        default: return 2;
        }
    }
    if (!proto || !port || size < HDR_LEN || count == 0) {
        fprintf(stderr, "usage: rawpub -m redis|nats -p PORT -s SIZE(>=16) -n COUNT [-r RATE]\n");
        return 2;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) die("connect");
    int one = 1, big = 4 << 20;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    write_all(fd, (const unsigned char *)proto->hello, strlen(proto->hello));
    printf("connected\n");
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 0;

    char head[64];
    const size_t hlen = (size_t)snprintf(head, sizeof head, proto->head, size);
    const size_t flen = hlen + size + 2;
    const size_t per_batch = rate > 0 ? 1 : (BATCH_BYTES / flen ? BATCH_BYTES / flen : 1);
    unsigned char *batch = malloc(per_batch * flen);
    for (size_t i = 0; i < per_batch; i++) {
        unsigned char *f = batch + i * flen;
        memcpy(f, head, hlen);
        memset(f + hlen + HDR_LEN, 'x', size - HDR_LEN);
        memcpy(f + hlen + size, "\r\n", 2);
    }

    const uint64_t t_first = now_ns();
    const double gap = rate > 0 ? 1e9 / rate : 0;
    uint64_t t = t_first, sent = 0;
    while (sent < count) {
        if (gap > 0) {
            uint64_t due = t_first + (uint64_t)(gap * (double)sent);
            struct timespec ts = { (time_t)(due / 1000000000ull), (long)(due % 1000000000ull) };
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
        }
        size_t n = per_batch < count - sent ? per_batch : (size_t)(count - sent);
        t = now_ns();
        for (size_t i = 0; i < n; i++) {
            put_u64(batch + i * flen + hlen, sent + i);
            put_u64(batch + i * flen + hlen + 8, t);
        }
        write_all(fd, batch, n * flen);
        sent += n;
    }
    write_all(fd, (const unsigned char *)proto->flush, strlen(proto->flush));
    read_until(fd, proto->flushed);
    printf("{\"sent\": %llu, \"t_first\": %llu, \"t_last\": %llu}\n",
           (unsigned long long)sent, (unsigned long long)t_first, (unsigned long long)t);
    fflush(stdout);
    close(fd);
    free(batch);
    return 0;
}
