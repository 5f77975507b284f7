/*
 * fanoutd/dataplane/senders.c: which kind of socket each producer connection
 * is, learnt from the messages it sends, reported to the hub once per
 * connection (senders.h has the why and the box's contract).
 *
 * The cost per message is one zmq_msg_gets (a lookup in the connection's
 * small metadata map) and a compare; a message whose metadata the loop has
 * reported also costs a probe of a set when another connection's message
 * came between. Only a sighting (a connection not reported yet) does more:
 * its fd (the metadata's "__fd", which is what libzmq's zmq_msg_get(msg,
 * ZMQ_SRCFD) reads), one fstat for the fd's inode and a slot in the ring.
 *
 * Part of the _forward.c translation unit (included there, not compiled alone).
 */

#define SENDERS_TYPE_PROPERTY "Socket-Type"
#define SENDERS_FD_PROPERTY "__fd"

/* Where a Socket-Type pointer's probe starts in the set (Fibonacci hashing of the address). */
static uint32_t senders_slot(const char *type)
{
    return (uint32_t)((((uintptr_t)type >> 4) * 0x9E3779B97F4A7C15ULL) >> 52) & (SENDERS_SET - 1);
}

static void senders_forget(senders_box *b)
{
    memset(b->set, 0, sizeof b->set);
    b->used = 0;
    b->last = NULL;
}

/* Post a sighting of the connection that sent m: 0, or -1 when the ring is full (the hub has not read it). */
static int senders_post(senders_box *b, const zmsg_t *m, const char *type)
{
    uint32_t head = b->head;  /* the loop is its only writer */
    if (head - __atomic_load_n(&b->tail, __ATOMIC_ACQUIRE) >= SENDERS_RING)
        return -1;
    sighting_t *s = &b->ring[head % SENDERS_RING];
    const char *fd = Z.msg_gets(m, SENDERS_FD_PROPERTY);
    struct stat st;
    s->fd = fd ? (int32_t)strtol(fd, NULL, 10) : -1;
    s->inode = s->fd >= 0 && fstat(s->fd, &st) == 0 ? (uint64_t)st.st_ino : 0;
    size_t n = strnlen(type, SENDERS_TYPE - 1);
    memcpy(s->type, type, n);
    s->type[n] = 0;
    __atomic_store_n(&b->head, head + 1, __ATOMIC_RELEASE);
    return 0;
}

/* The message's metadata differs from the last one's (or the hub has seen a producer leave): report its
 * connection unless it has been already. Out of line: the per-message path stays a load and a compare. */
static __attribute__((noinline)) void senders_check(senders_box *b, const zmsg_t *m, const char *type)
{
    uint64_t closed = LOAD(b->closed);
    if (closed != b->forgot) {
        senders_forget(b);
        b->forgot = closed;
    }
    b->last = NULL;
    if (!type)
        return;  /* no metadata: not a ZMTP 3 connection's message */
    uint32_t i = senders_slot(type);
    for (; b->set[i]; i = (i + 1) & (SENDERS_SET - 1)) {
        if (b->set[i] == type) {
            b->last = type;
            return;
        }
    }
    if (senders_post(b, m, type) < 0)
        return;
    if (b->used >= SENDERS_FULL) {
        senders_forget(b);
        i = senders_slot(type);
    }
    b->set[i] = type;
    b->used++;
    b->last = type;
}

/* Called by forward_one for each message read from a producer input (not the upstream link). */
static inline void note_sender(Forwarder *f, const zmsg_t *m)
{
    senders_box *b = &f->senders;
    const char *type = Z.msg_gets(m, SENDERS_TYPE_PROPERTY);
    if (type != b->last || LOAD(b->closed) != b->forgot)
        senders_check(b, m, type);
}

/* --- The hub's side (methods of the Forwarder, under the GIL). --- */

static PyObject *Forwarder_senders(Forwarder *f, PyObject *Py_UNUSED(ignored))
{
    senders_box *b = &f->senders;
    uint32_t tail = b->tail;  /* the hub is its only writer */
    uint32_t head = __atomic_load_n(&b->head, __ATOMIC_ACQUIRE);
    PyObject *list = PyList_New(0);
    for (; list && tail != head; tail++) {
        const sighting_t *s = &b->ring[tail % SENDERS_RING];
        PyObject *item = Py_BuildValue("(iKy)", (int)s->fd, (unsigned long long)s->inode, s->type);
        if (!item || PyList_Append(list, item) < 0)
            Py_CLEAR(list);
        Py_XDECREF(item);
    }
    if (list)  /* only once every slot read is copied: the loop may then reuse them */
        __atomic_store_n(&b->tail, tail, __ATOMIC_RELEASE);
    return list;
}

static PyObject *Forwarder_forget_senders(Forwarder *f, PyObject *Py_UNUSED(ignored))
{
    STORE(f->senders.closed, LOAD(f->senders.closed) + 1);
    Py_RETURN_NONE;
}
