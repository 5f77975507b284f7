/*
 * fanoutd/dataplane/senders.c: which kind of socket each producer connection
 * is, learnt from the messages it sends, reported to the hub once per
 * connection (senders.h has the why and the box's contract).
 *
 * The cost per message is a few loads and compares while one connection
 * sends (the message's first word, the hub's count of closed producers, the
 * check countdown), and a probe of a small set when another connection's
 * message came between. Only a sighting (a connection not reported yet)
 * does more: zmq_msg_gets for its Socket-Type and its fd (the metadata's
 * "__fd", which is what libzmq's zmq_msg_get(msg, ZMQ_SRCFD) reads), one
 * fstat for the fd's inode and a slot in the ring.
 *
 * Part of the _forward.c translation unit (included there, not compiled alone).
 */

#define SENDERS_TYPE_PROPERTY "Socket-Type"
#define SENDERS_FD_PROPERTY "__fd"

/* The slot holding hint in the set, or the empty one where it would go (Fibonacci hashing of the address). */
static uint32_t senders_find(const senders_box *b, const void *hint)
{
    uint32_t i = (uint32_t)((((uintptr_t)hint >> 4) * 0x9E3779B97F4A7C15ULL) >> 53) & (SENDERS_SET - 1);
    while (b->keys[i] && b->keys[i] != hint)
        i = (i + 1) & (SENDERS_SET - 1);
    return i;
}

static void senders_forget(senders_box *b)
{
    memset(b->keys, 0, sizeof b->keys);
    b->used = 0;
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

/* The message's first word is not the last one's, a check is due, or the hub has seen a producer leave:
 * report its connection unless it has been already. Out of line: the per-message path stays a few loads. */
static __attribute__((noinline)) void senders_check(senders_box *b, const zmsg_t *m, const void *hint)
{
    uint64_t closed = LOAD(b->closed);
    if (closed != b->forgot) {
        senders_forget(b);
        b->forgot = closed;
    }
    b->hint = NULL;
    uint32_t i = senders_find(b, hint);
    int known = hint && b->keys[i] == hint;
    if (known && b->until_check) {
        b->until_check--;
        b->hint = hint;
        return;
    }
    b->until_check = SENDERS_CHECK_EVERY;
    const char *type = Z.msg_gets(m, SENDERS_TYPE_PROPERTY);
    if (!type)
        return;  /* no metadata: not a ZMTP 3 connection's message */
    if (known && b->types[i] == type) {
        b->hint = hint;
        return;
    }
    if (senders_post(b, m, type) < 0)
        return;  /* the ring is full: the connection's next message tries again */
    if (!known && b->used >= SENDERS_FULL) {
        senders_forget(b);
        i = senders_find(b, hint);
    }
    if (!known)
        b->used++;
    b->keys[i] = hint;
    b->types[i] = type;
    b->hint = hint;
}

/* Called by forward_one for each message read from a producer input (not the upstream link). */
static inline void note_sender(Forwarder *f, const zmsg_t *m)
{
    senders_box *b = &f->senders;
    const void *hint;
    memcpy(&hint, m, sizeof hint);  /* libzmq 4.1-4.3: the message's metadata address (a hint: senders.h) */
    if (hint && hint == b->hint && b->until_check && LOAD(b->closed) == b->forgot) {
        b->until_check--;
        return;
    }
    senders_check(b, m, hint);
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
