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
 * Python. It pushes its entry onto the ledger's stack of returned entries;
 * the loop takes them back in bulk and counts their bytes out, so only the
 * loop writes the count (no counter bounces between threads per message).
 * A ledger is its own allocation: when its Forwarder goes while libzmq
 * still holds frames, it is left to the callback of the last of them. The repair history (issue #26)
 * keeps references to the same received frames under a ledger of its own,
 * so the bytes readers hold and the bytes history holds are told apart.
 *
 * Part of the _forward.c translation unit (included there, not compiled alone).
 */

/* Frames this short are sent as they are and not counted. A wrapper costs libzmq an allocation (freed on
 * another thread) and the loop an entry, measured at about 300 ns of CPU per frame before entries were
 * pooled: 70 % more than a whole 100-byte message's way through the broker to one reader, which libzmq
 * batches very cheaply (bench/heldcost.py; bench/README.md has the numbers). Below this size a frame's bytes
 * are of the order of the 64-byte queue entry libzmq keeps for every message and reader anyway, which the
 * high-water mark bounds in messages (publish_hwm x 256 bytes per reader's backlog at most); frames of 33
 * bytes or less are copied into that entry by libzmq and share nothing at all. */
#define HELD_WRAP_MIN 256

/* An entry: what one wrapper's free callback needs. Entries come from slabs the ledger owns and go back to
 * it through a stack the callbacks push onto, so the hot path allocates nothing of its own and no counter
 * is written by two threads: the loop counts bytes when it wraps a frame and when it takes entries back. */
typedef struct held held_t;
struct held {
    zmsg_t frame ZMSG_LINE;  /* the received frame's bytes, kept alive while libzmq holds the wrapper */
    ledger_t *ledger;
    size_t size;
    held_t *next;     /* on the ledger's free list, or on its stack of returned entries */
};

#define HELD_SLAB 256  /* entries allocated at a time; kept until the ledger goes */
typedef struct slab { struct slab *next; held_t entries[HELD_SLAB]; } slab_t;

/* The returned stack's head once its Forwarder is gone: callbacks then count down instead (orphans). */
#define HELD_ORPHAN ((held_t *)1)

struct ledger {
    /* Shared with the free callbacks (any thread). */
    held_t *returned;  /* released entries: callbacks push (CAS, release), the loop takes them all (exchange,
                        * acquire); HELD_ORPHAN once the owner has gone */
    int64_t orphans;   /* after that: entries libzmq still holds, counted down; whoever reaches 0 frees */
    uint64_t bytes;    /* the loop's count, published (relaxed) for the hub: at most one batch stale */
    /* The loop's alone (its owner's once the loop has returned). */
    held_t *free;
    slab_t *slabs;
    uint64_t held;     /* bytes of the entries out, exact as of the last reclaim */
    uint64_t out;      /* entries out: wrapped and not yet taken back */
};

static uint64_t ledgers_live;  /* ledgers allocated and not yet freed, in this process (held_ledgers()) */

static ledger_t *ledger_new(void)
{
    ledger_t *l = calloc(1, sizeof *l);
    if (l)
        __atomic_add_fetch(&ledgers_live, 1, __ATOMIC_RELAXED);
    return l;
}

static void ledger_free(ledger_t *l)
{
    for (slab_t *s = l->slabs, *next; s; s = next) {
        next = s->next;
        free(s);
    }
    free(l);
    __atomic_sub_fetch(&ledgers_live, 1, __ATOMIC_RELAXED);
}

/* The loop: take back every entry the callbacks returned, and publish the exact count. */
static void ledger_reclaim(ledger_t *l)
{
    if (!l)
        return;
    held_t *h = __atomic_exchange_n(&l->returned, NULL, __ATOMIC_ACQUIRE);
    while (h) {
        held_t *next = h->next;
        l->held -= h->size;
        l->out--;
        h->next = l->free;
        l->free = h;
        h = next;
    }
    __atomic_store_n(&l->bytes, l->held, __ATOMIC_RELAXED);
}

/* The owner lets go (its Forwarder is freed, the loop long returned): free the ledger now if libzmq holds
 * none of its frames, else leave that to the callback of the last one (acquire-release on both sides). */
static void ledger_drop(ledger_t *l)
{
    if (!l)
        return;
    held_t *h = __atomic_exchange_n(&l->returned, HELD_ORPHAN, __ATOMIC_ACQ_REL);
    int64_t back = 0;
    for (; h; h = h->next)
        back++;
    if (__atomic_add_fetch(&l->orphans, (int64_t)l->out - back, __ATOMIC_ACQ_REL) == 0)
        ledger_free(l);
}

static uint64_t ledger_bytes(const ledger_t *l)
{
    return l ? __atomic_load_n(&l->bytes, __ATOMIC_RELAXED) : 0;
}

static PyObject *held_ledgers(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLongLong(__atomic_load_n(&ledgers_live, __ATOMIC_RELAXED));
}

/* zmq_msg_init_data's free callback: libzmq no longer holds the wrapper anywhere. Any thread; no Python.
 * The entry goes back to its ledger's stack; once the owner has gone, the last one frees the ledger. */
static void held_release(void *data, void *hint)
{
    (void)data;
    held_t *h = hint;
    ledger_t *l = h->ledger;
    (void)Z.msg_close(&h->frame);  /* a reference to a received frame: closing it cannot fail */
    held_t *head = __atomic_load_n(&l->returned, __ATOMIC_RELAXED);
    do {
        if (head == HELD_ORPHAN) {
            if (__atomic_sub_fetch(&l->orphans, 1, __ATOMIC_ACQ_REL) == 0)
                ledger_free(l);  /* h was in one of its slabs: not touched again */
            return;
        }
        h->next = head;
    } while (!__atomic_compare_exchange_n(&l->returned, &head, h, 1, __ATOMIC_RELEASE, __ATOMIC_RELAXED));
}

/* The loop: an entry from the free list, taking back returned ones or a new slab when it is empty. */
static held_t *held_take(ledger_t *l)
{
    if (!l->free)
        ledger_reclaim(l);
    if (!l->free) {
        slab_t *s = aligned_alloc(64, sizeof *s);  /* its entries' frames on cache lines (ZMSG_LINE) */
        if (!s)
            return NULL;
        s->next = l->slabs;
        l->slabs = s;
        for (int i = 0; i < HELD_SLAB; i++) {
            s->entries[i].next = l->free;
            l->free = &s->entries[i];
        }
    }
    held_t *h = l->free;
    l->free = h->next;
    return h;
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
    held_t *h = held_take(l);
    if (!h) {
        errno = ENOMEM;
        return -1;
    }
    if (Z.msg_init(&h->frame) < 0 || (consume ? Z.msg_move(&h->frame, src) : Z.msg_copy(&h->frame, src)) < 0) {
        h->next = l->free;
        l->free = h;
        return -1;
    }
    h->ledger = l;
    h->size = size;
    if (Z.msg_init_data(out, Z.msg_data(&h->frame), size, held_release, h) < 0) {
        if (consume)
            (void)Z.msg_move(src, &h->frame);  /* give the frame back, as the caller still owns it */
        Z.msg_close(&h->frame);
        h->next = l->free;
        l->free = h;
        return -1;
    }
    l->held += size;
    l->out++;
    *counted += size;
    return 0;
}
