/* fanout_subscriber ENDPOINT PREFIX COUNT TIMEOUT_MS
 *
 * Connects a SUB to fanoutd's publish socket, subscribes to PREFIX (a topic
 * prefix; "" for everything) and prints each message on one line (frames
 * separated by spaces). Exits 0 after COUNT messages (0: never), 1 when no
 * message arrived for TIMEOUT_MS (-1: wait forever), 2 on errors. */
#include "fanout.h"

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s ENDPOINT PREFIX COUNT TIMEOUT_MS\n", argv[0]);
        return 2;
    }
    const char *endpoint = argv[1], *prefix = argv[2];
    long count = parse_long(argv[3], "COUNT", 0);
    long timeout_ms = parse_long(argv[4], "TIMEOUT_MS", -1);

    void *ctx = zmq_ctx_new();
    void *sock = fanout_socket(ctx, ZMQ_SUB);
    check(zmq_setsockopt(sock, ZMQ_SUBSCRIBE, prefix, strlen(prefix)), "ZMQ_SUBSCRIBE");
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
