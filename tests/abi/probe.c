/*
 * Checks fanoutd/zmq_abi.h, the hand-written libzmq declarations the loop
 * is built with, against a real zmq.h.  Built by tests/test_libzmq.py with
 * -Werror=incompatible-pointer-types: any difference fails to compile, and
 * a build that runs prints the one line the test expects.
 */
#include <stdalign.h>
#include <stdio.h>
#include <zmq.h>

#include "zmq_abi.h"

#define SAME_LAYOUT(ours, theirs)                                                  \
    _Static_assert(sizeof(ours) == sizeof(theirs), "sizeof " #ours " != sizeof " #theirs); \
    _Static_assert(alignof(ours) == alignof(theirs), "alignof " #ours " != alignof " #theirs)

#define SAME_MEMBER(ours, theirs, member)                                          \
    _Static_assert(offsetof(ours, member) == offsetof(theirs, member),             \
                   "offset of " #member " differs");                               \
    _Static_assert(sizeof(((ours *)0)->member) == sizeof(((theirs *)0)->member),   \
                   "size of " #member " differs")

#define SAME_VALUE(ours, theirs) _Static_assert((ours) == (theirs), #ours " != " #theirs)

SAME_LAYOUT(zmsg_t, zmq_msg_t);
SAME_LAYOUT(zpollitem_t, zmq_pollitem_t);
SAME_MEMBER(zpollitem_t, zmq_pollitem_t, socket);
SAME_MEMBER(zpollitem_t, zmq_pollitem_t, fd);
SAME_MEMBER(zpollitem_t, zmq_pollitem_t, events);
SAME_MEMBER(zpollitem_t, zmq_pollitem_t, revents);

SAME_VALUE(Z_DONTWAIT, ZMQ_DONTWAIT);
SAME_VALUE(Z_SNDMORE, ZMQ_SNDMORE);
SAME_VALUE(Z_POLLIN, ZMQ_POLLIN);
SAME_VALUE(Z_POLLOUT, ZMQ_POLLOUT);
SAME_VALUE(Z_EVENTS, ZMQ_EVENTS);
SAME_VALUE(Z_FD, ZMQ_FD);
SAME_VALUE(Z_ETERM, ETERM);
SAME_VALUE(Z_XPUB_NODROP, ZMQ_XPUB_NODROP);
SAME_VALUE(Z_SUBSCRIBE, ZMQ_SUBSCRIBE);
SAME_VALUE(ZABI_MAJOR, ZMQ_VERSION_MAJOR);

/* The loop's function table, declared by the same list with zmq.h's message
 * and poll-item types in place of the stand-ins checked above, filled from
 * zmq.h's declarations: a different return or parameter type, count or
 * qualifier is an incompatible pointer. */
#define ZABI_INIT(ret, field, symbol, params) .field = symbol,
static const struct {
    ZABI_FUNCTIONS(ZABI_FIELD, zmq_msg_t, zmq_pollitem_t)
} theirs = {ZABI_FUNCTIONS(ZABI_INIT, zmq_msg_t, zmq_pollitem_t)};

int main(void)
{
    int major, minor, patch;
    theirs.version(&major, &minor, &patch);
    printf("zmq_abi.h matches zmq.h %d.%d.%d (libzmq %d.%d.%d)\n", ZMQ_VERSION_MAJOR, ZMQ_VERSION_MINOR,
           ZMQ_VERSION_PATCH, major, minor, patch);
    return 0;
}
