/*
 * fanoutd/dataplane/held.c: the held-bytes ledger, which knows exactly how
 * many message bytes libzmq holds for an output's readers.
 *
 * libzmq shares one message's bytes among the queues of every reader it
 * goes to and frees them when the last of those has written them to the
 * kernel; it says nothing of how much that is. So the loop sends each frame
 * as a wrapper made with zmq_msg_init_data, whose hint keeps a reference to
 * the received frame (moved or zmq_msg_copy'd, never copied byte by byte)
 * and whose free callback, run once when libzmq lets go of the last copy,
 * closes that reference and takes its size off the ledger.
 *
 * The callback runs on one of libzmq's I/O threads, on the loop's thread
 * (a refused wrapper the loop closes), or inside zmq_ctx_term after the
 * Forwarder is gone: it touches only the ledger, with atomics, and never
 * Python. A ledger is therefore its own allocation, counting its own
 * references (one per wrapped frame libzmq holds, one for its Forwarder),
 * and is freed by whichever drops the last. The repair history (issue #26)
 * keeps references to the same received frames under a ledger of its own,
 * so the bytes readers hold and the bytes history holds are told apart.
 *
 * Part of the _forward.c translation unit (included there, not compiled alone).
 */

/* Frames this short are sent as they are and not counted. A wrapper costs two allocations (ours and
 * libzmq's, freed on another thread) and about 300 ns of CPU per frame, measured: 70 % more than a whole
 * 100-byte message's way through the broker to one reader, which libzmq batches very cheaply, and too little
 * to see beside a 1 KiB message's 3.3 us. Below this size a frame's bytes are of the order of the 64-byte
 * queue entry libzmq keeps for every message and reader anyway, which the high-water mark bounds in messages
 * (publish_hwm x 256 bytes per reader's backlog at most); frames of 33 bytes or less are copied into that
 * entry by libzmq and share nothing at all. */
#define HELD_WRAP_MIN 256

struct ledger {
    uint64_t bytes;   /* bytes of the wrapped frames libzmq still holds (relaxed: a gauge) */
    uint64_t refs;    /* wrapped frames still held, plus one while a Forwarder owns the ledger */
};

typedef struct {
    zmsg_t frame;     /* the received frame's bytes, kept alive while libzmq holds the wrapper */
    ledger_t *ledger;
    size_t size;
} held_t;

static uint64_t ledgers_live;  /* ledgers allocated and not yet freed, in this process (held_ledgers()) */

static ledger_t *ledger_new(void)
{
    ledger_t *l = calloc(1, sizeof *l);
    if (l) {
        l->refs = 1;
        __atomic_add_fetch(&ledgers_live, 1, __ATOMIC_RELAXED);
    }
    return l;
}

/* Drop one reference; the last one frees the ledger (acquire-release: every earlier use happens before). */
static void ledger_drop(ledger_t *l)
{
    if (l && __atomic_sub_fetch(&l->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        free(l);
        __atomic_sub_fetch(&ledgers_live, 1, __ATOMIC_RELAXED);
    }
}

static PyObject *held_ledgers(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLongLong(__atomic_load_n(&ledgers_live, __ATOMIC_RELAXED));
}

static uint64_t ledger_bytes(const ledger_t *l)
{
    return l ? __atomic_load_n(&l->bytes, __ATOMIC_RELAXED) : 0;
}

/* zmq_msg_init_data's free callback: libzmq no longer holds the wrapper anywhere. Any thread; no Python. */
static void held_release(void *data, void *hint)
{
    (void)data;
    held_t *h = hint;
    ledger_t *l = h->ledger;
    __atomic_sub_fetch(&l->bytes, h->size, __ATOMIC_RELAXED);
    (void)Z.msg_close(&h->frame);  /* a reference to a received frame: closing it cannot fail */
    free(h);
    ledger_drop(l);
}

/* Make out a message with src's bytes (src is moved into it when consume, else shared), counted in l
 * until libzmq frees it, and add what it counts to *counted; frames of HELD_WRAP_MIN or less, or l NULL,
 * go uncounted. -1 on failure (out is then not a message and, when consume, src still holds the frame). */
static int held_wrap(ledger_t *l, zmsg_t *out, zmsg_t *src, int consume, uint64_t *counted)
{
    size_t size = Z.msg_size(src);
    if (!l || size <= HELD_WRAP_MIN) {
        if (Z.msg_init(out) < 0)
            return -1;
        if ((consume ? Z.msg_move(out, src) : Z.msg_copy(out, src)) < 0) {
            Z.msg_close(out);
            return -1;
        }
        return 0;
    }
    held_t *h = malloc(sizeof *h);
    if (!h) {
        errno = ENOMEM;
        return -1;
    }
    if (Z.msg_init(&h->frame) < 0 || (consume ? Z.msg_move(&h->frame, src) : Z.msg_copy(&h->frame, src)) < 0) {
        free(h);
        return -1;
    }
    h->ledger = l;
    h->size = size;
    __atomic_add_fetch(&l->refs, 1, __ATOMIC_RELAXED);  /* taken from a reference held: never from zero */
    __atomic_add_fetch(&l->bytes, size, __ATOMIC_RELAXED);
    if (Z.msg_init_data(out, Z.msg_data(&h->frame), size, held_release, h) < 0) {
        if (consume)
            (void)Z.msg_move(src, &h->frame);  /* give the frame back, as the caller still owns it */
        held_release(NULL, h);
        return -1;
    }
    *counted += size;
    return 0;
}
