/* fanout_repair ENDPOINT heads PREFIX TIMEOUT_MS
 * fanout_repair ENDPOINT range EPOCH STREAM FIRST LAST TIMEOUT_MS
 *
 * Asks fanoutd's repair endpoint (a ROUTER; this is a DEALER) one question
 * and prints the answer (clients/README.md, "Repair"):
 *
 *   heads: "epoch E", then "stream S seq N key K" for every stream whose key
 *          starts with PREFIX, and "more" if the broker left some out;
 *   range: each message of stream STREAM in FIRST..LAST the broker still
 *          holds, as the subscriber prints it (frames joined by spaces, its
 *          stamp stripped), then "gone F..L REASON" for every run it could
 *          not supply (evicted, epoch, unknown, limit, future).
 *
 * Exits 0 with the whole answer, 1 when none came within TIMEOUT_MS (a
 * refused request is never answered), 2 on errors. The bytes are spelled
 * out here, as each language's client does. */
#include <stdint.h>

#include "fanout.h"

#define MAX_FRAMES 64
#define HEAD_LEN 6        /* magic "\0FDT", version 1, flags */
#define F_RANGE 8
#define F_HEADS 16
#define F_ANSWER 32
#define F_END 64
#define F_MORE 128

static const char *const REASONS[] = {"?", "evicted", "epoch", "unknown", "limit", "future"};

static uint64_t be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static void put_be(unsigned char *p, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

/* An unsigned decimal number (epochs use all 64 bits), or exit 2 naming the argument. */
static uint64_t parse_u64(const char *text, const char *name)
{
    char *end;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno || end == text || *end || *text == '-') {
        fprintf(stderr, "bad %s '%s': expected a whole number >= 0\n", name, text);
        exit(2);
    }
    return value;
}

/* Receive one answer (all its frames); its count, or -1 on timeout. */
static int recv_answer(void *sock, zmq_msg_t *frames)
{
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
    return n;
}

/* The flags of an answer's head, or exit 2 if the first frame is not one. */
static int answer_flags(zmq_msg_t *head)
{
    const unsigned char *d = zmq_msg_data(head);
    if (zmq_msg_size(head) < HEAD_LEN + 4 || memcmp(d, "\0FDT\x01", 5) != 0 || !(d[5] & F_ANSWER)) {
        fprintf(stderr, "not a repair answer: is this fanoutd's repair endpoint?\n");
        exit(2);
    }
    return d[5];
}

static void print_heads(const unsigned char *d, size_t len, int flags)
{
    if (len < 14) {
        fprintf(stderr, "a HEADS answer too short\n");
        exit(2);
    }
    printf("epoch %llu\n", (unsigned long long)be64(d + 4));
    size_t count = (size_t)d[12] << 8 | d[13], at = 14;
    for (size_t i = 0; i < count; i++) {
        if (at + 17 > len || at + 17 + d[at + 16] > len) {
            fprintf(stderr, "a HEADS answer shorter than its count\n");
            exit(2);
        }
        printf("stream %llu seq %llu key ", (unsigned long long)be64(d + at), (unsigned long long)be64(d + at + 8));
        fwrite(d + at + 17, 1, d[at + 16], stdout);
        putchar('\n');
        at += 17 + (size_t)d[at + 16];
    }
    if (flags & F_MORE)
        printf("more\n");
}

/* Print the runs of an END: every sequence of the range not supplied, and why. */
static void print_end(const unsigned char *d, size_t len)
{
    size_t runs = len >= 38 ? (size_t)d[36] << 8 | d[37] : 0;
    if (len != 38 + runs * 17) {
        fprintf(stderr, "an END whose length does not match its runs\n");
        exit(2);
    }
    for (size_t i = 0; i < runs; i++) {
        const unsigned char *r = d + 38 + i * 17;
        printf("gone %llu..%llu %s\n", (unsigned long long)be64(r), (unsigned long long)be64(r + 8),
               r[16] < sizeof REASONS / sizeof *REASONS ? REASONS[r[16]] : "?");
    }
}

int main(int argc, char **argv)
{
    int heads = argc == 5 && strcmp(argv[2], "heads") == 0, range = argc == 8 && strcmp(argv[2], "range") == 0;
    if (!heads && !range) {
        fprintf(stderr, "usage: %s ENDPOINT heads PREFIX TIMEOUT_MS\n"
                        "       %s ENDPOINT range EPOCH STREAM FIRST LAST TIMEOUT_MS\n", argv[0], argv[0]);
        return 2;
    }
    const uint32_t tag = 1;  /* yours to choose: every answer echoes it */
    unsigned char req[HEAD_LEN + 4 + 255];
    size_t len;
    memcpy(req, "\0FDT\x01", 5);
    put_be(req + HEAD_LEN, tag, 4);
    if (heads) {
        size_t plen = strlen(argv[3]);
        if (plen > 255) {
            fprintf(stderr, "a prefix longer than 255 bytes matches no stream\n");
            return 2;
        }
        req[5] = F_HEADS;
        memcpy(req + HEAD_LEN + 4, argv[3], plen);
        len = HEAD_LEN + 4 + plen;
    } else {
        req[5] = F_RANGE;
        put_be(req + 10, parse_u64(argv[3], "EPOCH"), 8);
        put_be(req + 18, parse_u64(argv[4], "STREAM"), 8);
        put_be(req + 26, parse_u64(argv[5], "FIRST"), 8);
        put_be(req + 34, parse_u64(argv[6], "LAST"), 8);
        len = HEAD_LEN + 36;
    }
    long timeout_ms = parse_long(argv[argc - 1], "TIMEOUT_MS", -1);

    void *ctx = zmq_ctx_new();
    void *sock = fanout_socket(ctx, ZMQ_DEALER);
    set_int(sock, ZMQ_RCVTIMEO, (int)timeout_ms, "ZMQ_RCVTIMEO");
    set_int(sock, ZMQ_LINGER, 0, "ZMQ_LINGER");  /* an unanswered request need not outlive us */
    check(zmq_connect(sock, argv[1]), argv[1]);
    check(zmq_send(sock, req, len, 0), "zmq_send");

    int status = 1;
    for (;;) {  /* a RANGE has one answer per message, then its END; a HEADS has one */
        zmq_msg_t frames[MAX_FRAMES];
        int n = recv_answer(sock, frames);
        if (n == -1) {
            fprintf(stderr, "timeout: no answer within %ld ms (refused, or nothing listens there)\n", timeout_ms);
            break;
        }
        int flags = answer_flags(&frames[0]), done = 1;
        const unsigned char *d = (const unsigned char *)zmq_msg_data(&frames[0]) + HEAD_LEN;
        size_t dlen = zmq_msg_size(&frames[0]) - HEAD_LEN;
        if (heads && (flags & ~F_MORE) == (F_ANSWER | F_HEADS)) {
            print_heads(d, dlen, flags);
        } else if (range && flags == (F_ANSWER | F_RANGE | F_END)) {
            print_end(d, dlen);
        } else if (range && flags == (F_ANSWER | F_RANGE) && n >= 3) {
            for (int i = 1; i < n - 1; i++) {  /* the message as the stamped output sent it; its trailer last */
                if (i > 1)
                    putchar(' ');
                fwrite(zmq_msg_data(&frames[i]), 1, zmq_msg_size(&frames[i]), stdout);
            }
            putchar('\n');
            done = 0;
        } else {
            fprintf(stderr, "an answer of unexpected shape (flags %d, %d frames)\n", flags, n);
            exit(2);
        }
        for (int i = 0; i < n; i++)
            zmq_msg_close(&frames[i]);
        if (done) {
            status = 0;
            break;
        }
    }
    fflush(stdout);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return status;
}
