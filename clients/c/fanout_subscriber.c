/* fanout_subscriber ENDPOINT PREFIX COUNT TIMEOUT_MS [stamped]
 *
 * Connects a SUB to fanoutd's publish socket, subscribes to PREFIX (a topic
 * prefix; "" for everything) and prints each message on one line (frames
 * separated by spaces). Exits 0 after COUNT messages (0: never), 1 when no
 * message arrived for TIMEOUT_MS (-1: wait forever), 2 on errors.
 *
 * With "stamped" (for fanoutd's stamped output) each message's last frame is
 * its sequence stamp (clients/README.md, "Sequence stamps"): it is checked,
 * not printed, and gaps are counted per stream; "lost N restarts R resets S"
 * goes to stderr at exit. */
#include <stdint.h>

#include "fanout.h"

#define MAX_FRAMES 64
#define MAX_STREAMS 256

/* What this subscriber last saw of each stream (a small table: an example). */
struct stream { unsigned char key[255]; size_t keylen; uint64_t epoch, id, seq; };
static struct stream streams[MAX_STREAMS];
static int nstreams;
static uint64_t lost, restarts, resets, last_epoch;

static uint64_t be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* Count one stamped message: frame0 is its first frame, t its trailer.
 * The trailer's bytes are spelled out here, as each language's client does;
 * the layout is clients/README.md, "Trailing frame". */
static void observe(zmq_msg_t *frame0, zmq_msg_t *t, const char *prefix)
{
    const unsigned char *d = zmq_msg_data(t);
    size_t len = zmq_msg_size(t);
    if (len < 32 || memcmp(d, "\0FDT", 4) != 0 || d[4] != 1 || !(d[5] & 1)) {
        fprintf(stderr, "not a stamped message: is this fanoutd's stamped output?\n");
        exit(2);
    }
    uint64_t epoch = be64(d + 6), id = be64(d + 14), seq = be64(d + 22);
    size_t keylen = (size_t)d[30] << 8 | d[31];
    const unsigned char *key = zmq_msg_data(frame0);
    /* Only a stream the subscription covers whole can be checked. */
    if (keylen > zmq_msg_size(frame0) || strlen(prefix) > keylen || memcmp(key, prefix, strlen(prefix)) != 0)
        return;
    if (last_epoch && epoch != last_epoch)
        restarts++;
    last_epoch = epoch;
    struct stream *s = NULL;
    for (int i = 0; i < nstreams && !s; i++)
        if (streams[i].keylen == keylen && memcmp(streams[i].key, key, keylen) == 0)
            s = &streams[i];
    if (s && s->epoch == epoch) {
        if (s->id != id) {
            resets++;
            lost += seq - 1;
        } else if (seq > s->seq + 1) {
            lost += seq - s->seq - 1;
        }
    } else if (!s && nstreams < MAX_STREAMS) {
        s = &streams[nstreams++];
        memcpy(s->key, key, keylen);
        s->keylen = keylen;
    }
    if (s) {
        s->epoch = epoch;
        s->id = id;
        s->seq = seq;
    }
}

/* Whether a trailer is the stamped output's answer to a subscription (READY): control, not a message. */
static int is_ready(zmq_msg_t *t)
{
    return zmq_msg_size(t) == 6 && memcmp(zmq_msg_data(t), "\0FDT\x01\x04", 6) == 0;
}

/* Receive one stamped message, print it without its trailer: 0, 1 for a
 * control message (skipped), or -1 on timeout. */
static int print_stamped(void *sock, const char *prefix)
{
    zmq_msg_t frames[MAX_FRAMES];
    int n = 0, more = 1;
    while (more) {
        if (n == MAX_FRAMES)
            die("too many frames");
        zmq_msg_init(&frames[n]);
        if (zmq_msg_recv(&frames[n], sock, 0) == -1) {
            zmq_msg_close(&frames[n]);
            if (n == 0 && zmq_errno() == EAGAIN)
                return -1;
            die("zmq_msg_recv");
        }
        more = zmq_msg_more(&frames[n++]);
    }
    if (n < 2) {
        fprintf(stderr, "a message of one frame has no stamp: is this fanoutd's stamped output?\n");
        exit(2);
    }
    if (n == 2 && is_ready(&frames[1])) {
        for (int i = 0; i < n; i++)
            zmq_msg_close(&frames[i]);
        return 1;
    }
    observe(&frames[0], &frames[n - 1], prefix);
    for (int i = 0; i < n - 1; i++) {
        if (i)
            putchar(' ');
        fwrite(zmq_msg_data(&frames[i]), 1, zmq_msg_size(&frames[i]), stdout);
    }
    putchar('\n');
    fflush(stdout);
    for (int i = 0; i < n; i++)
        zmq_msg_close(&frames[i]);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 5 && !(argc == 6 && strcmp(argv[5], "stamped") == 0)) {
        fprintf(stderr, "usage: %s ENDPOINT PREFIX COUNT TIMEOUT_MS [stamped]\n", argv[0]);
        return 2;
    }
    const char *endpoint = argv[1], *prefix = argv[2];
    long count = parse_long(argv[3], "COUNT", 0);
    long timeout_ms = parse_long(argv[4], "TIMEOUT_MS", -1);
    int stamped = argc == 6;

    void *ctx = zmq_ctx_new();
    void *sock = fanout_socket(ctx, ZMQ_SUB);
    check(zmq_setsockopt(sock, ZMQ_SUBSCRIBE, prefix, strlen(prefix)), "ZMQ_SUBSCRIBE");
    set_int(sock, ZMQ_RCVTIMEO, (int)timeout_ms, "ZMQ_RCVTIMEO");
    check(zmq_connect(sock, endpoint), endpoint);

    int status = 0;
    for (long got = 0; count == 0 || got < count;) {
        int rc = stamped ? print_stamped(sock, prefix) : print_message(sock);
        if (rc == -1) {
            fprintf(stderr, "timeout: no message for %ld ms (%ld received)\n", timeout_ms, got);
            status = 1;
            break;
        }
        got += rc == 0;  /* a control message (the broker confirming the subscription) is not counted */
    }
    if (stamped)
        fprintf(stderr, "lost %llu restarts %llu resets %llu\n", (unsigned long long)lost,
                (unsigned long long)restarts, (unsigned long long)resets);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return status;
}
