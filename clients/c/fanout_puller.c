/* fanout_puller ENDPOINT COUNT TIMEOUT_MS
 *
 * Connects a PULL to fanoutd's push socket and prints each payload it is
 * given on one line (fanoutd strips the topic: a single frame "topic data"
 * arrives as "data", a multipart [topic, a, b] as frames a and b, printed
 * "a b"). Messages are load-balanced: each goes to one puller only.
 * Exits 0 after COUNT messages (0: never), 1 when none arrived for
 * TIMEOUT_MS (-1: wait forever), 2 on errors. */
#include "fanout.h"

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s ENDPOINT COUNT TIMEOUT_MS\n", argv[0]);
        return 2;
    }
    const char *endpoint = argv[1];
    long count = parse_long(argv[2], "COUNT", 0);
    long timeout_ms = parse_long(argv[3], "TIMEOUT_MS", -1);

    void *ctx = zmq_ctx_new();
    void *sock = fanout_socket(ctx, ZMQ_PULL);
    set_int(sock, ZMQ_RCVTIMEO, (int)timeout_ms, "ZMQ_RCVTIMEO");
    check(zmq_connect(sock, endpoint), endpoint);

    int status = 0;
    for (long got = 0; count == 0 || got < count; got++) {
        if (print_message(sock) == -1) {
            fprintf(stderr, "timeout: no message for %ld ms (%ld received)\n", timeout_ms, got);
            status = 1;
            break;
        }
    }
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return status;
}
