/*
 * fanoutd/dataplane/subs.c: the subscriptions each output holds, counted per connection, per peer address
 * and per output, and bounded: a subscription that would pass a bound closes its connection.
 *
 * Why here: the loop reads every subscription the outputs hand up (read_subscriptions), and with
 * ZMQ_XPUB_VERBOSER libzmq hands up each one (duplicates too) and each explicit unsubscription with the
 * sender's metadata: its fd ("__fd", what zmq_msg_get(ZMQ_SRCFD) reads) and Peer-Address. libzmq's own
 * unsubscriptions when a connection goes carry none and are ignored: the hub says which connections closed
 * (monitor events, through the closes ring). An fd whose inode changed is a new connection.
 *
 * Counted is what costs libzmq memory: distinct prefixes per connection (its trie keeps a set of
 * connections per prefix: a repeated subscribe is one entry, one unsubscribe removes it), as a small set of
 * 64-bit hashes keyed with a random seed, so nobody can aim collisions (two prefixes counted as one) at it.
 * Refusing is closing: shutdown() on libzmq's fd (never close()), the only way to make libzmq free what the
 * connection holds. Subscriptions are rare next to messages: none of this is on the per-message path.
 * Part of the _forward.c translation unit.
 */


static void subs_free_conn(subs_conn *c)
{
    if (c) {
        free(c->set);
        free(c);
    }
}

static void subs_free(subs_t *s)
{
    if (!s)
        return;
    for (int o = 0; o < OUTS; o++) {
        for (uint32_t fd = 0; fd < s->outs[o].nfd; fd++)
            subs_free_conn(s->outs[o].by_fd[fd]);
        for (uint32_t i = 0; i < s->outs[o].addr_cap; i++)
            free(s->outs[o].addrs[i]);
        free(s->outs[o].by_fd);
        free(s->outs[o].addrs);
        free(s->shown[o]);
    }
    free(s);
}

static subs_t *subs_new(void)
{
    subs_t *s = calloc(1, sizeof *s);
    struct rlimit fds;
    if (!s)
        return NULL;
    if (getentropy(&s->seed, sizeof s->seed) < 0)
        s->seed = (uint64_t)now_ns() * 0x9E3779B97F4A7C15ULL;
    s->nshown = getrlimit(RLIMIT_NOFILE, &fds) == 0 && fds.rlim_cur < (1u << 20) ? (uint32_t)fds.rlim_cur : 1u << 20;
    for (int o = 0; o < OUTS; o++)
        if (!(s->shown[o] = calloc(s->nshown, sizeof *s->shown[o]))) {
            subs_free(s);
            return NULL;
        }
    return s;
}

/* Show fd's count on output o to the hub (/peers). */
static void subs_show(subs_t *s, int o, int32_t fd, uint32_t count)
{
    if ((uint32_t)fd < s->nshown)
        STORE(s->shown[o][fd], count);
}

static uint64_t subs_mix(uint64_t x)  /* MurmurHash3's finaliser: a bijection that mixes every bit */
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

static uint64_t subs_hash(uint64_t seed, const unsigned char *p, size_t n)
{
    uint64_t h = subs_mix(seed ^ (uint64_t)n), w;
    for (; n >= 8; p += 8, n -= 8) {
        memcpy(&w, p, 8);
        h = subs_mix(h ^ w);
    }
    w = 0;
    memcpy(&w, p, n);
    h = subs_mix(h ^ w ^ 0x8000000000000000ULL);
    return h ? h : 1;
}

/* The slot of hash in an open-addressed table of cap slots (a power of two), or the empty one where it goes. */
static uint32_t set_slot(const uint64_t *set, uint32_t cap, uint64_t hash)
{
    uint32_t i = (uint32_t)hash & (cap - 1);
    while (set[i] && set[i] != hash)
        i = (i + 1) & (cap - 1);
    return i;
}

/* Whether the entry at slot j, whose home slot is home, moves back into a hole at i (deletion without
 * tombstones in a linearly probed table: the entries after a hole that probed past it fill it). */
static int moves_back(uint32_t home, uint32_t i, uint32_t j, uint32_t mask)
{
    return ((j - home) & mask) >= ((j - i) & mask);
}

static void set_remove(uint64_t *set, uint32_t cap, uint32_t i)
{
    for (uint32_t j = (i + 1) & (cap - 1); set[j]; j = (j + 1) & (cap - 1))
        if (moves_back((uint32_t)set[j] & (cap - 1), i, j, cap - 1)) {
            set[i] = set[j];
            i = j;
        }
    set[i] = 0;
}

/* Make room for one more prefix in c's set: 0, or -1 out of memory. */
static int set_reserve(subs_conn *c)
{
    if ((c->count + 1) * 2 <= c->cap)
        return 0;
    uint32_t cap = c->cap ? c->cap * 2 : 8;
    uint64_t *set = calloc(cap, sizeof *set);
    if (!set)
        return -1;
    for (uint32_t i = 0; i < c->cap; i++)
        if (c->set[i])
            set[set_slot(set, cap, c->set[i])] = c->set[i];
    free(c->set);
    c->set = set;
    c->cap = cap;
    return 0;
}

static uint32_t addr_slot(const subs_out *so, uint64_t hash, const char *name)
{
    uint32_t i = (uint32_t)hash & (so->addr_cap - 1);
    while (so->addrs[i] && (so->addrs[i]->hash != hash || strcmp(so->addrs[i]->name, name) != 0))
        i = (i + 1) & (so->addr_cap - 1);
    return i;
}

/* The record of peer address name on this output, made if new; NULL out of memory. */
static subs_addr *addr_get(subs_t *s, subs_out *so, const char *name)
{
    if ((so->addr_used + 1) * 2 > so->addr_cap) {
        uint32_t cap = so->addr_cap ? so->addr_cap * 2 : 16;
        subs_addr **addrs = calloc(cap, sizeof *addrs);
        if (!addrs)
            return NULL;
        subs_out bigger = {.addrs = addrs, .addr_cap = cap};
        for (uint32_t i = 0; i < so->addr_cap; i++)
            if (so->addrs[i])
                addrs[addr_slot(&bigger, so->addrs[i]->hash, so->addrs[i]->name)] = so->addrs[i];
        free(so->addrs);
        so->addrs = addrs;
        so->addr_cap = cap;
    }
    char key[SUBS_ADDR];
    snprintf(key, sizeof key, "%s", name);
    uint64_t hash = subs_hash(s->seed, (const unsigned char *)key, strlen(key));
    uint32_t i = addr_slot(so, hash, key);
    if (!so->addrs[i]) {
        if (!(so->addrs[i] = calloc(1, sizeof *so->addrs[i])))
            return NULL;
        so->addrs[i]->hash = hash;
        memcpy(so->addrs[i]->name, key, sizeof key);
        so->addr_used++;
    }
    return so->addrs[i];
}

/* Forget what fd's connection held on output o: its count leaves its address's and the output's. */
static void conn_forget(subs_t *s, int o, int32_t fd)
{
    subs_out *so = &s->outs[o];
    subs_conn *c = so->by_fd[fd];
    so->by_fd[fd] = NULL;
    subs_show(s, o, fd, 0);
    subs_addr *a = c->addr;
    a->count -= c->count;
    so->total -= c->count;
    if (--a->conns == 0) {
        uint32_t i = addr_slot(so, a->hash, a->name), mask = so->addr_cap - 1;
        free(a);
        for (uint32_t j = (i + 1) & mask; so->addrs[j]; j = (j + 1) & mask)
            if (moves_back((uint32_t)so->addrs[j]->hash & mask, i, j, mask)) {
                so->addrs[i] = so->addrs[j];
                i = j;
            }
        so->addrs[i] = NULL;
        so->addr_used--;
    }
    subs_free_conn(c);
}

/* The loop's record of the connection with this fd and inode on output o, made (with its address from m) if
 * new; a record of an older connection on the same fd is forgotten first. NULL: out of memory. */
static subs_conn *conn_get(subs_t *s, int o, int32_t fd, uint64_t inode, const zmsg_t *m)
{
    subs_out *so = &s->outs[o];
    if ((uint32_t)fd >= so->nfd) {
        uint32_t n = so->nfd ? so->nfd : 256;
        while (n <= (uint32_t)fd)
            n *= 2;
        subs_conn **by_fd = realloc(so->by_fd, n * sizeof *by_fd);
        if (!by_fd)
            return NULL;
        memset(by_fd + so->nfd, 0, (n - so->nfd) * sizeof *by_fd);
        so->by_fd = by_fd;
        so->nfd = n;
    }
    if (so->by_fd[fd] && so->by_fd[fd]->inode != inode)
        conn_forget(s, o, fd);
    if (so->by_fd[fd])
        return so->by_fd[fd];
    const char *name = Z.msg_gets(m, SUBS_ADDR_PROPERTY);
    subs_conn *c = calloc(1, sizeof *c);
    if (!c || !(c->addr = addr_get(s, so, name ? name : ""))) {
        free(c);
        return NULL;
    }
    c->inode = inode;
    c->addr->conns++;
    return so->by_fd[fd] = c;
}

/* Refuse: close the connection (its fd was just checked to be this connection's), count it, tell the hub. */
static void subs_refuse(Forwarder *f, int o, subs_conn *c, int32_t fd, int bound)
{
    subs_t *s = f->subs;
    (void)shutdown(fd, SHUT_RDWR);  /* libzmq sees its connection end, closes it and frees its trie entries */
    c->cut = 1;
    f->local[C_SUBS_REFUSED + o * BOUNDS + bound]++;
    uint32_t head = s->refusals_head;
    if (head - __atomic_load_n(&s->refusals_tail, __ATOMIC_ACQUIRE) >= SUBS_REFUSALS)
        return;
    subs_refusal *r = &s->refusals[head % SUBS_REFUSALS];
    *r = (subs_refusal){o, bound, fd, c->inode, LOAD(s->max[bound]), {0}};
    memcpy(r->addr, c->addr->name, SUBS_ADDR);
    __atomic_store_n(&s->refusals_head, head + 1, __ATOMIC_RELEASE);
}

/* Count one message read from output o: a subscription or an unsubscription with its connection's metadata
 * (anything else, an XSUB's message or libzmq's own unsubscriptions of a closed connection, is not counted).
 * 0, or -1 out of memory. */
static int subs_note(Forwarder *f, int o, zmsg_t *m)
{
    subs_t *s = f->subs;
    const unsigned char *d = Z.msg_data(m);
    size_t len = Z.msg_size(m);
    if (len < 1 || d[0] > 1)
        return 0;
    const char *fds = Z.msg_gets(m, SUBS_FD_PROPERTY);
    struct stat st;
    int32_t fd = fds ? (int32_t)strtol(fds, NULL, 10) : -1;
    if (fd < 0 || fstat(fd, &st) < 0)
        return 0;  /* no metadata, or the connection has gone already */
    subs_out *so = &s->outs[o];
    if (d[0] == 0 && ((uint32_t)fd >= so->nfd || !so->by_fd[fd]))
        return 0;  /* an unsubscription from a connection holding nothing counted */
    subs_conn *c = conn_get(s, o, fd, (uint64_t)st.st_ino, m);
    if (!c)
        return -1;
    if (c->cut)
        return 0;
    uint64_t hash = subs_hash(s->seed, d + 1, len - 1);
    uint32_t i = c->cap ? set_slot(c->set, c->cap, hash) : 0;
    int held = c->cap && c->set[i] == hash;
    if (d[0] == 0) {
        if (held) {
            set_remove(c->set, c->cap, i);
            c->count--, c->addr->count--, so->total--;
        }
    } else if (!held) {
        uint64_t per_conn = LOAD(s->max[BOUND_CONNECTION]), per_addr = LOAD(s->max[BOUND_ADDRESS]),
                 per_socket = LOAD(s->max[BOUND_SOCKET]);
        int bound = per_conn && c->count >= per_conn ? BOUND_CONNECTION
                  : per_addr && c->addr->count >= per_addr ? BOUND_ADDRESS
                  : per_socket && so->total >= per_socket ? BOUND_SOCKET : -1;
        if (bound >= 0) {
            subs_refuse(f, o, c, fd, bound);
            f->local[C_SUBSCRIPTIONS + o] = so->total;  /* conn_get may have forgotten a closed connection */
            return 0;
        }
        if (set_reserve(c) < 0)
            return -1;
        c->set[set_slot(c->set, c->cap, hash)] = hash;
        c->count++, c->addr->count++, so->total++;
    }
    f->local[C_SUBSCRIPTIONS + o] = so->total;
    subs_show(s, o, fd, c->count);
    return 0;
}

/* Forget the connections the hub has heard close: a record whose inode is the closed one's, or whose fd is
 * closed or names another socket by now (the hub may not have read a connection's inode before it went). */
static void subs_take_closes(Forwarder *f)
{
    subs_t *s = f->subs;
    uint32_t tail = s->closes_tail, head = __atomic_load_n(&s->closes_head, __ATOMIC_ACQUIRE);
    for (; tail != head; tail++) {
        int32_t fd = s->closes[tail % SUBS_CLOSES].fd;
        uint64_t inode = s->closes[tail % SUBS_CLOSES].inode;
        struct stat st;
        int gone = fd < 0 || fstat(fd, &st) < 0;
        for (int o = 0; o < OUTS; o++) {
            subs_out *so = &s->outs[o];
            if (fd < 0 || (uint32_t)fd >= so->nfd || !so->by_fd[fd])
                continue;
            if (so->by_fd[fd]->inode == inode || gone || (uint64_t)st.st_ino != so->by_fd[fd]->inode) {
                conn_forget(s, o, fd);
                f->local[C_SUBSCRIPTIONS + o] = so->total;
            }
        }
    }
    __atomic_store_n(&s->closes_tail, tail, __ATOMIC_RELEASE);
}

/* --- The hub's side (methods of the Forwarder, under the GIL). --- */

static PyObject *Forwarder_set_subscription_bounds(Forwarder *f, PyObject *args)
{
    unsigned long long max[BOUNDS];
    if (!PyArg_ParseTuple(args, "KKK", &max[0], &max[1], &max[2]))
        return NULL;
    for (int b = 0; b < BOUNDS; b++)
        STORE(f->subs->max[b], (uint64_t)max[b]);
    Py_RETURN_NONE;
}

/* A subscriber connection closed: (fd, inode or 0 if unknown). False when the loop has not taken enough of the
 * earlier ones yet (call again later). */
static PyObject *Forwarder_subscriber_closed(Forwarder *f, PyObject *args)
{
    int fd;
    unsigned long long inode;
    if (!PyArg_ParseTuple(args, "iK", &fd, &inode))
        return NULL;
    subs_t *s = f->subs;
    uint32_t head = s->closes_head;  /* the hub is its only writer */
    if (head - __atomic_load_n(&s->closes_tail, __ATOMIC_ACQUIRE) >= SUBS_CLOSES)
        Py_RETURN_FALSE;
    s->closes[head % SUBS_CLOSES].fd = fd;
    s->closes[head % SUBS_CLOSES].inode = inode;
    __atomic_store_n(&s->closes_head, head + 1, __ATOMIC_RELEASE);
    Py_RETURN_TRUE;
}

/* subscriptions_of(output, fd): the count the loop shows for the connection with that fd (0 if none). */
static PyObject *Forwarder_subscriptions_of(Forwarder *f, PyObject *args)
{
    int out, fd;
    if (!PyArg_ParseTuple(args, "ii", &out, &fd))
        return NULL;
    if (out < 0 || out >= OUTS)
        return PyErr_Format(PyExc_ValueError, "output must be between 0 and %d", OUTS - 1);
    subs_t *s = f->subs;
    return PyLong_FromUnsignedLong(fd >= 0 && (uint32_t)fd < s->nshown ? LOAD(s->shown[out][fd]) : 0);
}

static PyObject *Forwarder_subscription_refusals(Forwarder *f, PyObject *Py_UNUSED(ignored))
{
    subs_t *s = f->subs;
    uint32_t tail = s->refusals_tail, head = __atomic_load_n(&s->refusals_head, __ATOMIC_ACQUIRE);
    PyObject *list = PyList_New(0);
    for (; list && tail != head; tail++) {
        const subs_refusal *r = &s->refusals[tail % SUBS_REFUSALS];
        PyObject *item = Py_BuildValue("(isiKKs)", r->out, BOUND_NAMES[r->bound], (int)r->fd,
                                       (unsigned long long)r->inode, (unsigned long long)r->limit, r->addr);
        if (!item || PyList_Append(list, item) < 0)
            Py_CLEAR(list);
        Py_XDECREF(item);
    }
    if (list)
        __atomic_store_n(&s->refusals_tail, tail, __ATOMIC_RELEASE);
    return list;
}
