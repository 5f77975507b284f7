/* What the three examples share: error exits, number parsing, and the
 * socket options every fanoutd client should set (heartbeats, bounded
 * linger, optional CURVE keys from the environment). */
#ifndef FANOUT_H
#define FANOUT_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define HEARTBEAT_IVL_MS 30000    /* fanoutd's own interval ... */
#define HEARTBEAT_TIMEOUT_MS 15000 /* ... and timeout */
#define HEARTBEAT_TTL_MS 0         /* fanoutd times clients out itself (see clients/README.md) */
#define LINGER_MS 2000             /* close() waits at most this long to flush */

static inline void die(const char *what)
{
    fprintf(stderr, "%s: %s\n", what, zmq_strerror(zmq_errno()));
    exit(2);
}

static inline void check(int rc, const char *what)
{
    if (rc == -1)
        die(what);
}

/* A decimal number >= min, or exit 2 naming the argument. */
static inline long parse_long(const char *text, const char *name, long min)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno || end == text || *end || value < min) {
        fprintf(stderr, "bad %s '%s': expected a whole number >= %ld\n", name, text, min);
        exit(2);
    }
    return value;
}

static inline void set_int(void *sock, int option, int value, const char *what)
{
    check(zmq_setsockopt(sock, option, &value, sizeof value), what);
}

/* Set a CURVE key from an environment variable holding a 40-character Z85
 * string; returns 1 if the variable was set, 0 if not. */
static inline int set_key(void *sock, int option, const char *variable)
{
    const char *z85 = getenv(variable);
    if (!z85 || !*z85)
        return 0;
    if (strlen(z85) != 40) {
        fprintf(stderr, "%s must be a 40-character Z85 key\n", variable);
        exit(2);
    }
    check(zmq_setsockopt(sock, option, z85, 41), variable); /* 41: with its NUL */
    return 1;
}

/* A socket of the given type with fanoutd's recommended options. CURVE is
 * used when FANOUT_SERVER_KEY is set; it then needs FANOUT_PUBLIC_KEY and
 * FANOUT_SECRET_KEY (the client's own pair) too. */
static inline void *fanout_socket(void *ctx, int type)
{
    void *sock = zmq_socket(ctx, type);
    if (!sock)
        die("zmq_socket");
    set_int(sock, ZMQ_HEARTBEAT_IVL, HEARTBEAT_IVL_MS, "ZMQ_HEARTBEAT_IVL");
    set_int(sock, ZMQ_HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS, "ZMQ_HEARTBEAT_TIMEOUT");
    set_int(sock, ZMQ_HEARTBEAT_TTL, HEARTBEAT_TTL_MS, "ZMQ_HEARTBEAT_TTL");
    set_int(sock, ZMQ_LINGER, LINGER_MS, "ZMQ_LINGER");
    set_int(sock, ZMQ_IPV6, 1, "ZMQ_IPV6");  /* tcp://[::1]:5560 and names that resolve to IPv6 work too */
    if (set_key(sock, ZMQ_CURVE_SERVERKEY, "FANOUT_SERVER_KEY")) {
        if (!set_key(sock, ZMQ_CURVE_PUBLICKEY, "FANOUT_PUBLIC_KEY") ||
            !set_key(sock, ZMQ_CURVE_SECRETKEY, "FANOUT_SECRET_KEY")) {
            fprintf(stderr, "FANOUT_SERVER_KEY needs FANOUT_PUBLIC_KEY and FANOUT_SECRET_KEY\n");
            exit(2);
        }
    }
    return sock;
}

/* Receive one message and print its frames on one line, separated by
 * spaces. Returns 0, or -1 with errno EAGAIN when ZMQ_RCVTIMEO ran out. */
static inline int print_message(void *sock)
{
    int more = 1, first = 1;
    while (more) {
        zmq_msg_t frame;
        zmq_msg_init(&frame);
        if (zmq_msg_recv(&frame, sock, 0) == -1) {
            zmq_msg_close(&frame);
            if (first && zmq_errno() == EAGAIN)
                return -1;
            die("zmq_msg_recv");
        }
        if (!first)
            putchar(' ');
        fwrite(zmq_msg_data(&frame), 1, zmq_msg_size(&frame), stdout);
        more = zmq_msg_more(&frame);
        zmq_msg_close(&frame);
        first = 0;
    }
    putchar('\n');
    fflush(stdout);
    return 0;
}

#endif
