/*
 * cbase: the C baseline broker, libzmq's own forwarders doing fanoutd's job.
 *
 *   producers --PUB--> [SUB collector] =proxy 1=> [PUB publish] --> subscribers
 *                                         | capture (inproc PUSH->PULL)
 *                                         v
 *                                      =proxy 2=> [PUSH push] --> pullers
 *
 * Two chained zmq_proxy() calls in two threads; every high-water mark is 0
 * (unbounded) so nothing is dropped.  Unlike fanoutd the PUSH output carries
 * whole messages (a plain proxy cannot strip the topic).
 * Usage: cbase COLLECTOR PUBLISH PUSH   (prints "ready" once bound)
 *
 * CBASE_OUT_BATCH=BYTES sets ZMQ_OUT_BATCH_SIZE (how much libzmq writes to a
 * connection per call, 8192 by default) on the two outputs.  It is a draft
 * option: only a libzmq built with draft APIs takes it (bench/README.md,
 * "The 8 KiB write": run against one with LD_LIBRARY_PATH); any other exits
 * with an error rather than measure the default under another name.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <zmq.h>

#define OUT_BATCH_SIZE 102 /* ZMQ_OUT_BATCH_SIZE, declared by zmq.h only for draft builds */

static void *must_socket(void *ctx, int type, const char *ep, int bind)
{
    void *s = zmq_socket(ctx, type);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_RCVHWM, &zero, sizeof zero);
    const char *batch = getenv("CBASE_OUT_BATCH");
    if (batch && bind && (type == ZMQ_PUB || type == ZMQ_PUSH)) {
        int bytes = atoi(batch);
        if (zmq_setsockopt(s, OUT_BATCH_SIZE, &bytes, sizeof bytes) != 0) {
            fprintf(stderr, "cbase: CBASE_OUT_BATCH=%s: %s (this libzmq has no draft API)\n", batch,
                    zmq_strerror(zmq_errno()));
            exit(1);
        }
    }
    if (type == ZMQ_SUB)
        zmq_setsockopt(s, ZMQ_SUBSCRIBE, "", 0);
    if ((bind ? zmq_bind(s, ep) : zmq_connect(s, ep)) != 0) {
        fprintf(stderr, "cbase: %s %s: %s\n", bind ? "bind" : "connect", ep, zmq_strerror(zmq_errno()));
        exit(1);
    }
    return s;
}

struct pair { void *in, *out; };

static void *second_proxy(void *arg)
{
    struct pair *p = arg;
    zmq_proxy(p->in, p->out, NULL);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: cbase COLLECTOR PUBLISH PUSH\n");
        return 2;
    }
    void *ctx = zmq_ctx_new();
    void *collector = must_socket(ctx, ZMQ_SUB, argv[1], 1);
    void *publish = must_socket(ctx, ZMQ_PUB, argv[2], 1);
    void *capture = must_socket(ctx, ZMQ_PUSH, "inproc://capture", 1);
    struct pair second = {
        must_socket(ctx, ZMQ_PULL, "inproc://capture", 0),
        must_socket(ctx, ZMQ_PUSH, argv[3], 1),
    };
    pthread_t t;
    pthread_create(&t, NULL, second_proxy, &second);
    printf("ready\n");
    fflush(stdout);
    zmq_proxy(collector, publish, capture);   /* runs until the process is killed */
    return 0;
}
