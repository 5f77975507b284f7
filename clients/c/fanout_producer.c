/* fanout_producer ENDPOINT TOPIC COUNT [PAYLOAD]
 *
 * Sends COUNT single-frame messages "TOPIC PAYLOAD-<n>" (n = 1..COUNT) to
 * fanoutd's collector. It uses XPUB, not PUB: the collector is a bound SUB,
 * and anything sent before its subscription has come back over the new
 * connection is silently lost (the slow joiner). With ZMQ_XPUB_VERBOSE the
 * XPUB receives that subscription as a message starting with byte 0x01, so
 * the producer waits for it (FANOUT_READY_TIMEOUT_MS, default 10000) first.
 * Exit status: 0 sent, 1 collector not ready / send timed out, 2 usage or
 * ZeroMQ error. */
#include "fanout.h"

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
    if (!*topic || strchr(topic, ' ')) {
        fprintf(stderr, "TOPIC must be non-empty and without spaces (it ends at the first space)\n");
        return 2;
    }

    void *ctx = zmq_ctx_new();
    void *sock = fanout_socket(ctx, ZMQ_XPUB);
    set_int(sock, ZMQ_XPUB_VERBOSE, 1, "ZMQ_XPUB_VERBOSE");
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
    for (long i = 1; status == 0 && i <= count; i++) {
        int len = snprintf(buf, sizeof buf, "%s %s-%ld", topic, payload, i);
        if (len < 0 || (size_t)len >= sizeof buf) {
            fprintf(stderr, "message too long for this example (%zu bytes max)\n", sizeof buf - 1);
            status = 2;
        } else if (zmq_send(sock, buf, (size_t)len, 0) == -1) {
            fprintf(stderr, "send %ld failed: %s\n", i, zmq_strerror(zmq_errno()));
            status = zmq_errno() == EAGAIN ? 1 : 2;
        }
    }

    zmq_close(sock);     /* flushes what is queued, for at most LINGER_MS */
    zmq_ctx_term(ctx);
    return status;
}
