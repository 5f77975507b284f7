/*
 * zpub: ZeroMQ load producer for the bench.
 *
 * Connects an XPUB socket to a broker's collector and waits for the
 * collector's subscription (first byte 0x01) before sending anything, so no
 * message is lost to the slow-joiner race (libzmq issue 2267).  Then it sends
 * warm-up messages every 10 ms until a line arrives on stdin ("go"), and then
 * COUNT measured messages of SIZE bytes each: "t " + seq + send time + pad,
 * flat out or at RATE msg/s, or for DURATION seconds.  XPUB_NODROP with a
 * bounded high-water mark makes the broker's intake pace the producer
 * instead of the producer dropping.
 *
 * Usage: zpub -e ENDPOINT -s SIZE [-n COUNT] [-r RATE] [-d SECONDS]
 * Prints "subscribed", then one JSON line: sent, t_first, t_last (ns).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <zmq.h>
#include "common.h"

#define TOPIC_LEN 2 /* "t " */

static void die(const char *what)
{
    fprintf(stderr, "zpub: %s: %s\n", what, zmq_strerror(zmq_errno()));
    exit(1);
}

static void wait_subscription(void *xpub)
{
    int timeout = 10000;
    zmq_setsockopt(xpub, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    unsigned char buf[256];
    for (;;) {
        int n = zmq_recv(xpub, buf, sizeof buf, 0);
        if (n < 0) die("waiting for the collector's subscription");
        if (n >= 1 && buf[0] == 1) return;
    }
}

/* Send warm-up messages until stdin has a line (or closes). */
static void warm_up(void *xpub, unsigned char *msg, size_t size)
{
    put_u64(msg + TOPIC_LEN, WARM_SEQ);
    zmq_pollitem_t item = { NULL, STDIN_FILENO, ZMQ_POLLIN, 0 };
    for (;;) {
        put_u64(msg + TOPIC_LEN + 8, now_ns());
        if (zmq_send(xpub, msg, size, ZMQ_DONTWAIT) < 0 && zmq_errno() != EAGAIN) die("send");
        if (zmq_poll(&item, 1, 10) > 0) {
            char line[64];
            if (read(STDIN_FILENO, line, sizeof line) >= 0) return;
        }
    }
}

int main(int argc, char **argv)
{
    const char *endpoint = NULL;
    size_t size = 100;
    unsigned long long count = 0;
    double rate = 0, duration = 0;
    int opt;
    while ((opt = getopt(argc, argv, "e:s:n:r:d:")) != -1) {
        switch (opt) {
        case 'e': endpoint = optarg; break;
        case 's': size = strtoul(optarg, NULL, 10); break;
        case 'n': count = strtoull(optarg, NULL, 10); break;
        case 'r': rate = atof(optarg); break;
        case 'd': duration = atof(optarg); break;
        default: return 2;
        }
    }
    if (!endpoint || size < TOPIC_LEN + HDR_LEN || (count == 0 && duration <= 0)) {
        fprintf(stderr, "usage: zpub -e ENDPOINT -s SIZE(>=18) [-n COUNT] [-r RATE] [-d SECONDS]\n");
        return 2;
    }
    if (count == 0) count = UINT64_MAX;

    void *ctx = zmq_ctx_new();
    void *xpub = zmq_socket(ctx, ZMQ_XPUB);
    int hwm = 10000, one = 1, linger = 30000;
    zmq_setsockopt(xpub, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(xpub, ZMQ_XPUB_NODROP, &one, sizeof one);
    zmq_setsockopt(xpub, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(xpub, endpoint) != 0) die("connect");
    wait_subscription(xpub);
    printf("subscribed\n");
    fflush(stdout);

    unsigned char *msg = calloc(1, size);
    memcpy(msg, "t ", TOPIC_LEN);
    memset(msg + TOPIC_LEN + HDR_LEN, 'x', size - TOPIC_LEN - HDR_LEN);
    warm_up(xpub, msg, size);

    const uint64_t t_first = now_ns();
    const uint64_t t_stop = duration > 0 ? t_first + (uint64_t)(duration * 1e9) : UINT64_MAX;
    const double gap = rate > 0 ? 1e9 / rate : 0;
    uint64_t t = t_first, sent = 0;
    for (; sent < count; sent++) {
        if (gap > 0) {
            uint64_t due = t_first + (uint64_t)(gap * (double)sent);
            struct timespec ts = { (time_t)(due / 1000000000ull), (long)(due % 1000000000ull) };
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
        }
        t = now_ns();
        if (t >= t_stop) break;
        put_u64(msg + TOPIC_LEN, sent);
        put_u64(msg + TOPIC_LEN + 8, t);
        if (zmq_send(xpub, msg, size, 0) < 0) die("send");
    }
    printf("{\"sent\": %llu, \"t_first\": %llu, \"t_last\": %llu}\n",
           (unsigned long long)sent, (unsigned long long)t_first, (unsigned long long)t);
    fflush(stdout);
    zmq_close(xpub);   /* linger: flush what is still queued, up to 30 s */
    zmq_ctx_term(ctx);
    free(msg);
    return 0;
}
