/* fanout_producer ENDPOINT TOPIC COUNT [PAYLOAD]
 *
 * Sends COUNT single-frame messages "TOPIC PAYLOAD-<n>" (n = 1..COUNT) to
 * fanoutd's collector. It uses XPUB, not PUB: the collector is a bound SUB,
 * and anything sent before its subscription has come back over the new
 * connection is silently lost (the slow joiner). With ZMQ_XPUB_VERBOSE the
 * XPUB receives that subscription as a message starting with byte 0x01, so
 * the producer waits for it (FANOUT_READY_TIMEOUT_MS, default 10000) first.
 * At exit, close waits up to FANOUT_LINGER_MS (default LINGER_MS) for the
 * collector to take what is still queued; libzmq discards the rest unseen,
 * so a close that lasted the whole linger (fanoutd holding its producers
 * back, or gone) is reported as a possible loss.
 * Exit status: 0 sent, 1 collector not ready / send timed out / the last
 * messages may be lost, 2 usage or ZeroMQ error. */
#include <time.h>

#include "fanout.h"

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv)
{
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: %s ENDPOINT TOPIC COUNT [PAYLOAD]\n", argv[0]);
        return 2;
    }
    const char *endpoint = argv[1], *topic = argv[2];
    long count = parse_long(argv[3], "COUNT", 0);
    const char *payload = argc == 5 ? argv[4] : "message";
    const char *ready_env = getenv("FANOUT_READY_TIMEOUT_MS");
    long ready_ms = ready_env ? parse_long(ready_env, "FANOUT_READY_TIMEOUT_MS", 0) : 10000;
    const char *linger_env = getenv("FANOUT_LINGER_MS");
    long linger_ms = linger_env ? parse_long(linger_env, "FANOUT_LINGER_MS", 0) : LINGER_MS;
    if (!*topic || strchr(topic, ' ')) {
        fprintf(stderr, "TOPIC must be non-empty and without spaces (it ends at the first space)\n");
        return 2;
    }

    void *ctx = zmq_ctx_new();
    void *sock = fanout_socket(ctx, ZMQ_XPUB);
    set_int(sock, ZMQ_XPUB_VERBOSE, 1, "ZMQ_XPUB_VERBOSE");
    set_int(sock, ZMQ_LINGER, (int)linger_ms, "ZMQ_LINGER");
    /* Block (up to 5 s) at the high-water mark instead of dropping. */
    set_int(sock, ZMQ_XPUB_NODROP, 1, "ZMQ_XPUB_NODROP");
    set_int(sock, ZMQ_SNDTIMEO, 5000, "ZMQ_SNDTIMEO");
    set_int(sock, ZMQ_RCVTIMEO, (int)ready_ms, "ZMQ_RCVTIMEO");
    check(zmq_connect(sock, endpoint), endpoint);

    /* Readiness: wait for the collector's subscription (first byte 0x01). */
    unsigned char sub[256];
    int status = 0;
    for (;;) {
        int n = zmq_recv(sock, sub, sizeof sub, 0);
        if (n == -1 && zmq_errno() == EAGAIN) {
            fprintf(stderr, "no subscription from the collector at %s within %ld ms\n", endpoint, ready_ms);
            status = 1;
            break;
        }
        check(n, "zmq_recv");
        if (n > 0 && sub[0] == 1)
            break;
    }

    char buf[4096];
    long sent = 0;
    for (long i = 1; status == 0 && i <= count; i++) {
        int len = snprintf(buf, sizeof buf, "%s %s-%ld", topic, payload, i);
        if (len < 0 || (size_t)len >= sizeof buf) {
            fprintf(stderr, "message too long for this example (%zu bytes max)\n", sizeof buf - 1);
            status = 2;
        } else if (zmq_send(sock, buf, (size_t)len, 0) == -1) {
            fprintf(stderr, "send %ld failed: %s\n", i, zmq_strerror(zmq_errno()));
            status = zmq_errno() == EAGAIN ? 1 : 2;
        } else {
            sent++;
        }
    }

    long closing = now_ms();
    zmq_close(sock);     /* flushes what is queued, for at most linger_ms ... */
    zmq_ctx_term(ctx);   /* ... and returns as soon as all of it was taken */
    if (sent > 0 && now_ms() - closing >= linger_ms * 98 / 100) {
        fprintf(stderr, "the collector did not take the last messages within %ld ms (is fanoutd holding its "
                "producers back, or gone?): some of the %ld sent may be lost\n", linger_ms, sent);
        if (status == 0)
            status = 1;
    }
    return status;
}
