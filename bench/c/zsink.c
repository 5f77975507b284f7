/*
 * zsink: ZeroMQ subscriber / puller for the bench.  Counts, times and checks
 * the messages zpub sent through a broker.
 *
 * Prints "ready" on the first warm-up message (which proves its connection
 * and subscription work end to end), then counts measured messages until
 * COUNT arrived, IDLE ms pass without one (after the first), or WAIT ms pass
 * with none at all.  Each message must be LEN bytes; the payload header
 * (seq, send time) sits at OFFSET (2 when the "t " topic is still there, 0
 * when the broker stripped it).  With -l it also records end-to-end latency
 * (receive time - send time) per message.  With -S SECONDS it stops reading
 * right after "ready" for that long (a stalled subscriber), then exits.
 *
 * Usage: zsink -t sub|pull -e ENDPOINT -L LEN -n COUNT [-o OFFSET] [-l]
 *              [-i IDLE_MS] [-w WAIT_MS] [-S SECONDS]
 * Prints one JSON line: received, bad, t_first, t_last, max_gap (longest silence
 * between two measured messages) [, p50, p99, max] (all times in ns).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <zmq.h>
#include "common.h"

int main(int argc, char **argv)
{
    const char *type = "sub", *endpoint = NULL;
    size_t len = 0, offset = 2;
    unsigned long long count = 0;
    long idle_ms = 1000, wait_ms = 30000;
    double stall = 0;
    int latency = 0, opt;
    while ((opt = getopt(argc, argv, "t:e:L:n:o:li:w:S:")) != -1) {
        switch (opt) {
        case 't': type = optarg; break;
        case 'e': endpoint = optarg; break;
        case 'L': len = strtoul(optarg, NULL, 10); break;
        case 'n': count = strtoull(optarg, NULL, 10); break;
        case 'o': offset = strtoul(optarg, NULL, 10); break;
        case 'l': latency = 1; break;
        case 'i': idle_ms = atol(optarg); break;
        case 'w': wait_ms = atol(optarg); break;
        case 'S': stall = atof(optarg); break;
        default: return 2;
        }
    }
    if (!endpoint || len < offset + HDR_LEN || count == 0) {
        fprintf(stderr, "usage: zsink -t sub|pull -e ENDPOINT -L LEN -n COUNT [-o OFFSET] [-l] ...\n");
        return 2;
    }
    int is_sub = strcmp(type, "sub") == 0;
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, is_sub ? ZMQ_SUB : ZMQ_PULL);
    /* Unbounded receive queue so the sink never pushes back on the broker,
     * except a stalled subscriber, which should push back as soon as it can. */
    int hwm = stall > 0 ? 1 : 0, poll_ms = 100, zero = 0;
    zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &poll_ms, sizeof poll_ms);
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    if (is_sub) zmq_setsockopt(s, ZMQ_SUBSCRIBE, "", 0);
    if (zmq_connect(s, endpoint) != 0) {
        fprintf(stderr, "zsink: connect %s: %s\n", endpoint, zmq_strerror(zmq_errno()));
        return 1;
    }

    uint64_t *lat = latency ? malloc(count * sizeof *lat) : NULL;
    uint64_t received = 0, bad = 0, t_first = 0, t_last = 0, max_gap = 0;
    const uint64_t t_start = now_ns();
    int ready = 0;
    zmq_msg_t m;
    zmq_msg_init(&m);
    while (received < count) {
        if (zmq_msg_recv(&m, s, 0) < 0) {
            if (zmq_errno() != EAGAIN && zmq_errno() != EINTR) break;
            uint64_t t = now_ns();
            if (received ? t - t_last >= (uint64_t)idle_ms * 1000000ull
                         : t - t_start >= (uint64_t)wait_ms * 1000000ull)
                break;
            continue;
        }
        const uint64_t t = now_ns();
        const unsigned char *p = zmq_msg_data(&m);
        if (zmq_msg_size(&m) != len || zmq_msg_more(&m)) {
            bad++;
            continue;
        }
        const uint64_t seq = get_u64(p + offset);
        if (seq == WARM_SEQ) {
            if (!ready) {
                ready = 1;
                printf("ready\n");
                fflush(stdout);
                if (stall > 0) {
                    usleep((useconds_t)(stall * 1e6));
                    break;
                }
            }
            continue;
        }
        if (!received) t_first = t;
        else if (t - t_last > max_gap) max_gap = t - t_last;
        if (lat) lat[received] = t - get_u64(p + offset + 8);
        received++;
        t_last = t;
    }
    zmq_msg_close(&m);
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
    zmq_close(s);
    zmq_ctx_term(ctx);
    return 0;
}
