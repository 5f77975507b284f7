/*
 * rawsink: a subscriber for text protocols (Redis RESP, NATS) over a raw
 * TCP socket on 127.0.0.1, for the bench.
 *
 * It sends HELLO (e.g. "SUBSCRIBE c\r\nPING\r\n"), reads until the MARKER
 * reply to that ping arrives (so the server has taken the subscription) and
 * prints "ready".  From then on every message is a fixed-length frame:
 * PREFIX, LEN payload bytes, "\r\n".  Each frame's prefix and trailer are
 * checked (a mismatch counts as bad and ends the run, since framing is lost);
 * a NATS "PING" between frames is answered with "PONG" and skipped.
 * With -l the payload's send time (bytes 8..16) gives the latency.  It stops
 * after COUNT frames, IDLE ms without data (after the first frame), or WAIT
 * ms with none at all.
 *
 * Usage: rawsink -p PORT -H HELLO -M MARKER -P PREFIX -L LEN -n COUNT [-l]
 *                [-i IDLE_MS] [-w WAIT_MS]
 * Prints one JSON line, as zsink does.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
#include "common.h"

#define BUF_SIZE (4u << 20)

static int connect_loopback(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("rawsink: connect");
        exit(1);
    }
    int big = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    struct timeval tv = { 0, 100000 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

int main(int argc, char **argv)
{
    const char *hello = NULL, *marker = NULL, *prefix = NULL;
    int port = 0, latency = 0, opt;
    size_t len = 0;
    unsigned long long count = 0;
    long idle_ms = 1000, wait_ms = 30000;
    while ((opt = getopt(argc, argv, "p:H:M:P:L:n:li:w:")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'H': hello = optarg; break;
        case 'M': marker = optarg; break;
        case 'P': prefix = optarg; break;
        case 'L': len = strtoul(optarg, NULL, 10); break;
        case 'n': count = strtoull(optarg, NULL, 10); break;
        case 'l': latency = 1; break;
        case 'i': idle_ms = atol(optarg); break;
        case 'w': wait_ms = atol(optarg); break;
        default: return 2;
        }
    }
    if (!port || !hello || !marker || !prefix || len < HDR_LEN || count == 0) {
        fprintf(stderr, "usage: rawsink -p PORT -H HELLO -M MARKER -P PREFIX -L LEN -n COUNT [-l]\n");
        return 2;
    }
    const size_t plen = strlen(prefix), flen = plen + len + 2;
    unsigned char *buf = malloc(BUF_SIZE);
    uint64_t *lat = latency ? malloc(count * sizeof *lat) : NULL;
    int fd = connect_loopback(port);
    if (write(fd, hello, strlen(hello)) != (ssize_t)strlen(hello)) { perror("rawsink: write"); return 1; }

    /* Handshake: everything up to and including the marker is not a frame. */
    size_t have = 0;
    const uint64_t t_start = now_ns();
    for (;;) {
        ssize_t n = recv(fd, buf + have, BUF_SIZE - have, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) { perror("rawsink: handshake"); return 1; }
        if (n > 0) have += (size_t)n;
        unsigned char *m = memmem(buf, have, marker, strlen(marker));
        if (m) {
            size_t used = (size_t)(m - buf) + strlen(marker);
            memmove(buf, buf + used, have - used);
            have -= used;
            break;
        }
        if (now_ns() - t_start > (uint64_t)wait_ms * 1000000ull) { fprintf(stderr, "rawsink: no reply\n"); return 1; }
    }
    printf("ready\n");
    fflush(stdout);

    uint64_t received = 0, bad = 0, t_first = 0, t_last = 0, max_gap = 0;
    const uint64_t t_ready = now_ns();
    while (received < count && !bad) {
        size_t off = 0;
        const uint64_t t = now_ns();
        while (off < have && received < count) {
            const unsigned char *f = buf + off;
            /* NATS pings its clients now and then, even mid-stream. */
            if (have - off >= 6 && memcmp(f, "PING\r\n", 6) == 0) {
                if (write(fd, "PONG\r\n", 6) != 6) { perror("rawsink: pong"); return 1; }
                off += 6;
                continue;
            }
            if (off + flen > have) break;
            if (memcmp(f, prefix, plen) != 0 || f[flen - 2] != '\r' || f[flen - 1] != '\n') {
                fprintf(stderr, "rawsink: bad frame after %llu: %.40s\n", (unsigned long long)received,
                        (const char *)f);
                bad++;
                break;
            }
            if (!received) t_first = t;
            else if (t - t_last > max_gap) max_gap = t - t_last;
            if (lat) lat[received] = t - get_u64(f + plen + 8);
            received++;
            t_last = t;
            off += flen;
        }
        memmove(buf, buf + off, have - off);
        have -= off;
        if (received >= count || bad) break;
        ssize_t n = recv(fd, buf + have, BUF_SIZE - have, 0);
        if (n > 0) { have += (size_t)n; continue; }
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) break;  /* closed by the server */
        const uint64_t now = now_ns();
        if (received ? now - t_last >= (uint64_t)idle_ms * 1000000ull
                     : now - t_ready >= (uint64_t)wait_ms * 1000000ull)
            break;
    }
    printf("{\"received\": %llu, \"bad\": %llu, \"t_first\": %llu, \"t_last\": %llu, \"max_gap\": %llu",
           (unsigned long long)received, (unsigned long long)bad,
           (unsigned long long)t_first, (unsigned long long)t_last, (unsigned long long)max_gap);
    if (lat) {
        qsort(lat, received, sizeof *lat, cmp_u64);
        printf(", \"p50\": %llu, \"p99\": %llu, \"max\": %llu",
               (unsigned long long)quantile(lat, received, 0.50),
               (unsigned long long)quantile(lat, received, 0.99),
               (unsigned long long)quantile(lat, received, 1.0));
    }
    printf("}\n");
    fflush(stdout);
    close(fd);
    return 0;
}
