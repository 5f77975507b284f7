/*
 * rawpub: a paced or flat-out publisher over a raw TCP socket on 127.0.0.1,
 * for the bench, speaking Redis RESP, NATS or ZMTP 3.0 (as a PUB socket, to
 * a ZeroMQ broker's collector), so that every system gets its load from the
 * same program, paced the same way (clock_nanosleep to each message's due
 * time, one write() per message, and the late ones of a producer behind its
 * schedule together; flat out, 256 KiB batches).  A Python
 * publisher bunches messages at high rates, which changes what a broker's
 * reads cost; a libzmq publisher adds its own I/O thread (a hand-off and a
 * wake-up per message, on the cores the broker runs on), which the Redis
 * and NATS publishers do not have.
 *
 * redis, nats: sends HELLO and prints "connected".
 * zmtp: sends the greeting and READY (NULL mechanism, Socket-Type PUB),
 * waits for the collector's subscription (a message whose first byte is
 * 0x01), prints "subscribed", and sends warm-up messages (seq WARM_SEQ)
 * every 10 ms, which make ZeroMQ sinks ready.
 * Then it waits for a line on stdin ("go"), sends COUNT messages of SIZE
 * bytes (payload: seq, send time, pad; for zmtp the message is the topic
 * "t " and then the payload, SIZE bytes in all, as zpub sends), then FLUSH,
 * and waits until the reply FLUSHED proves the server has read everything
 * (zmtp: a PING command, answered by libzmq with a PONG).
 *
 * Usage: rawpub -m redis|nats|zmtp -p PORT -s SIZE -n COUNT [-r RATE]
 * Prints one JSON line: sent, t_first, t_last (ns: the first and the last message's send time), t_end
 * (once the last write() returned: a broker that holds its input back shows here).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
#include "common.h"

#define BATCH_BYTES (256u << 10)

struct proto {
    const char *name, *hello, *flush, *flushed, *head; /* head: printf format with the payload length */
    size_t trailer;                                     /* bytes after the payload ("\r\n") */
};

static const struct proto PROTOS[] = {
    { "redis", "CLIENT REPLY OFF\r\n", "CLIENT REPLY ON\r\nPING\r\n", "+PONG\r\n",
      "*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$%zu\r\n", 2 },
    { "nats", "CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false}\r\n", "PING\r\n", "PONG\r\n",
      "PUB c %zu\r\n", 2 },
    /* zmtp: hello and head are built in zmtp_hello() and zmtp_head(); flush is a PING command
     * (TTL 0, context "f"), flushed the PONG's name with its length byte. */
    { "zmtp", NULL, "\x04\x08\x04PING\0\0f", "\x04PONG", NULL, 0 },
};

#define TOPIC "t "
#define TOPIC_LEN 2
#define GREETING_LEN 64

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

/* The ZMTP 3.0 greeting (NULL mechanism, as client) and a READY command with Socket-Type PUB. */
static size_t zmtp_hello(unsigned char *out)
{
    static const char ready[] = "\x05READY\x0bSocket-Type\0\0\0\x03PUB";
    const size_t rlen = sizeof ready - 1;
    memset(out, 0, GREETING_LEN);
    out[0] = 0xFF;
    out[9] = 0x7F;
    out[10] = 3;
    memcpy(out + 12, "NULL", 4);
    out[GREETING_LEN] = 0x04;                 /* command, short */
    out[GREETING_LEN + 1] = (unsigned char)rlen;
    memcpy(out + GREETING_LEN + 2, ready, rlen);
    return GREETING_LEN + 2 + rlen;
}

/* A single-frame message's head for a body of `size` bytes: short or long frame. */
static size_t zmtp_head(unsigned char *out, size_t size)
{
    if (size < 256) {
        out[0] = 0x00;
        out[1] = (unsigned char)size;
        return 2;
    }
    out[0] = 0x02;
    for (int i = 0; i < 8; i++) out[1 + i] = (unsigned char)((uint64_t)size >> (56 - 8 * i));
    return 9;
}

/* Read the peer's greeting, then frames, until a message whose body starts with 0x01: a
 * subscription, which says the collector's SUB is attached and reading. */
static void zmtp_wait_subscription(int fd)
{
    unsigned char buf[65536];
    size_t have = 0, at = 0, need = GREETING_LEN;
    int greeted = 0;
    for (;;) {
        while (have - at >= need) {
            if (!greeted) {
                if (buf[at] != 0xFF || buf[at + 10] < 3) {
                    errno = EPROTO;
                    die("not a ZMTP 3 greeting");
                }
                greeted = 1;
                at += GREETING_LEN;
                need = 2;
                continue;
            }
            const unsigned char flags = buf[at];
            const size_t hl = flags & 0x02 ? 9 : 2;
            if (have - at < hl) break;
            size_t body = 0;
            if (hl == 9)
                for (int i = 0; i < 8; i++) body = body << 8 | buf[at + 1 + i];
            else
                body = buf[at + 1];
            if (body > sizeof buf / 2) {
                errno = EMSGSIZE;
                die("a frame from the collector");
            }
            if (have - at < hl + body) {
                need = hl + body;
                break;
            }
            if (!(flags & 0x04) && body >= 1 && buf[at + hl] == 0x01) return;
            at += hl + body;
            need = 2;
        }
        memmove(buf, buf + at, have - at);
        have -= at;
        at = 0;
        ssize_t r = read(fd, buf + have, sizeof buf - have);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) die("waiting for the collector's subscription");
        have += (size_t)r;
    }
}

/* Read until `token` has been seen (the server's answer to the flush). */
static void read_until(int fd, const char *token)
{
    const size_t tlen = strlen(token);  /* tokens hold no NUL */
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

/* zmtp: send a warm-up message (seq WARM_SEQ) every 10 ms until stdin has a line (or closes). */
static void warm_up(int fd, const unsigned char *head, size_t hlen, size_t size)
{
    unsigned char *msg = calloc(1, hlen + size);
    memcpy(msg, head, hlen);
    memcpy(msg + hlen, TOPIC, TOPIC_LEN);
    put_u64(msg + hlen + TOPIC_LEN, WARM_SEQ);
    struct pollfd in = { .fd = STDIN_FILENO, .events = POLLIN };
    for (;;) {
        put_u64(msg + hlen + TOPIC_LEN + 8, now_ns());
        write_all(fd, msg, hlen + size);
        if (poll(&in, 1, 10) > 0) {
            char line[64];
            if (read(STDIN_FILENO, line, sizeof line) >= 0) break;
        }
    }
    free(msg);
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
    const int zmtp = proto && strcmp(proto->name, "zmtp") == 0;
    const size_t topic = zmtp ? TOPIC_LEN : 0; /* bytes of the message before the payload header */
    if (!proto || !port || size < topic + HDR_LEN || count == 0) {
        fprintf(stderr, "usage: rawpub -m redis|nats|zmtp -p PORT -s SIZE(>=16; zmtp >=18) -n COUNT [-r RATE]\n");
        return 2;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) die("connect");
    int one = 1, big = 4 << 20;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    unsigned char head[64];
    size_t hlen;
    if (zmtp) {
        unsigned char hello[GREETING_LEN + 64];
        write_all(fd, hello, zmtp_hello(hello));
        zmtp_wait_subscription(fd);
        hlen = zmtp_head(head, size);
        printf("subscribed\n");
    } else {
        write_all(fd, (const unsigned char *)proto->hello, strlen(proto->hello));
        hlen = (size_t)snprintf((char *)head, sizeof head, proto->head, size);
        printf("connected\n");
    }
    fflush(stdout);
    const size_t flen = hlen + size + proto->trailer;
    if (zmtp) warm_up(fd, head, hlen, size);
    else {
        char line[64];
        if (!fgets(line, sizeof line, stdin)) return 0;
    }

    const size_t per_batch = BATCH_BYTES / flen ? BATCH_BYTES / flen : 1;
    unsigned char *batch = malloc(per_batch * flen);
    for (size_t i = 0; i < per_batch; i++) {
        unsigned char *f = batch + i * flen;
        memcpy(f, head, hlen);
        memcpy(f + hlen, TOPIC, topic);
        memset(f + hlen + topic + HDR_LEN, 'x', size - topic - HDR_LEN);
        memcpy(f + hlen + size, "\r\n", proto->trailer);
    }

    const uint64_t t_first = now_ns();
    const double gap = rate > 0 ? 1e9 / rate : 0;
    uint64_t t = t_first, sent = 0;
    while (sent < count) {
        size_t n = per_batch < count - sent ? per_batch : (size_t)(count - sent);
        if (gap > 0) {
            /* Paced: sleep until the next message is due, then send every message due by now in one
             * write(). On time, that is one message per write; behind (a write into loopback TCP runs
             * the receiver's side too, and the machine is shared), the late ones go together, as a
             * client library's buffer or libzmq's I/O thread would send them, so the offered rate is
             * the rate sent. Each is stamped with the time it is written. */
            uint64_t due = t_first + (uint64_t)(gap * (double)sent);
            struct timespec ts = { (time_t)(due / 1000000000ull), (long)(due % 1000000000ull) };
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
            const double due_by_now = (double)(now_ns() - t_first) / gap + 1 - (double)sent;
            if (due_by_now < (double)n) n = due_by_now < 1 ? 1 : (size_t)due_by_now;
        }
        t = now_ns();
        for (size_t i = 0; i < n; i++) {
            put_u64(batch + i * flen + hlen + topic, sent + i);
            put_u64(batch + i * flen + hlen + topic + 8, t);
        }
        write_all(fd, batch, n * flen);
        sent += n;
    }
    const uint64_t t_end = now_ns();  /* the last write taken: sent / (t_end - t_first) is the rate achieved */
    /* The zmtp PING holds NULs (its TTL): its length is the command's, 2 + 8. */
    write_all(fd, (const unsigned char *)proto->flush, zmtp ? 10 : strlen(proto->flush));
    read_until(fd, proto->flushed);
    printf("{\"sent\": %llu, \"t_first\": %llu, \"t_last\": %llu, \"t_end\": %llu}\n",
           (unsigned long long)sent, (unsigned long long)t_first, (unsigned long long)t, (unsigned long long)t_end);
    fflush(stdout);
    close(fd);
    free(batch);
    return 0;
}
