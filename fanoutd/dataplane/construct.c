/*
 * fanoutd/dataplane/construct.c: making a Forwarder, Forwarder(sockets, *,
 * settings), with each argument checked.
 *
 * Part of the _forward.c translation unit (included there, not compiled alone).
 */

#define FORWARDER_DOC \
    "Forwarder(sockets, *, max_message_size=1 MiB, max_frames=16, strip_topic=True, stall_above=0, resume_below=0, " \
    "push_above=0, topics=(), " \
    "upstream_topics=(), stall_ns=0, stall_fd=-1, node_id=b'', epoch=0, stamp_streams=65536, history_bytes=0, " \
    "history_ns=0, upstream_repair_endpoint=None)\n\n" \
    "The forwarding loop between the data sockets. sockets maps a role to a pyzmq Socket.underlying " \
    "address (a missing role or 0: no such socket): 'collector' (required), 'ingress' (a PULL input read " \
    "like the collector) and 'upstream' (the federation link in) are read; 'publish', 'relay' (the " \
    "federation link out) and 'stamped' are XPUB sockets with ZMQ_XPUB_NODROP set, 'push' a PUSH and " \
    "'repair' a ROUTER.\n" \
    "Limits (set_limits changes them live): max_message_size, max_frames, strip_topic, and stall_above: an " \
    "output holding more message bytes for its readers than this stalls (0: no bound; held_bytes()); " \
    "resume_below: an output stalled by stall_above is offered messages again once it holds at most this " \
    "(0, or above stall_above: at stall_above); " \
    "push_above: a message finding the PUSH output holding more than this is dropped (0: no bound).\n" \
    "Counting: topics, an allowlist of topics to count received messages for; upstream_topics, the " \
    "upstream link's subscriptions (its gaps are counted for what they cover).\n" \
    "Stalls: stall_ns bounds how long output stalls for a full subscriber before the guard is asked " \
    "again (0: send lossy at once), stall_fd (an eventfd) is written when a stall begins.\n" \
    "Stamping and federation: node_id, this node's 8-byte id (needed with upstream or relay); epoch, " \
"this run's, non-zero (needed with stamped or relay); stamp_streams, how many topic streams are kept.\n" \
    "Repair (with a stamped or relay output): history_bytes, the bytes the history of stamped messages may hold (0: " \
    "none); history_ns, the age past which it forgets one (0: none); 'repair' (a ROUTER with " \
    "ZMQ_ROUTER_MANDATORY) is served from it; 'relay_repair' (likewise, with a relay output) serves the same " \
    "history with each message's route, as the relay sent it. 'upstream_repair' (a DEALER connected to the " \
    "upstream's relay_repair, with an upstream) asks for the upstream link's gaps; upstream_repair_endpoint, " \
    "where it connects, is connected afresh whenever the hub has the link connected afresh (reconnect())."

/* The roles Forwarder() knows in its sockets mapping. */
enum { S_COLLECTOR, S_INGRESS, S_UPSTREAM, S_PUBLISH, S_PUSH, S_RELAY, S_STAMPED, S_REPAIR, S_RELAY_REPAIR,
       S_UPSTREAM_REPAIR, S_COUNT };
static const char *const SOCKET_ROLES[S_COUNT] = {
    "collector", "ingress", "upstream", "publish", "push", "relay", "stamped", "repair", "relay_repair",
    "upstream_repair",
};

/* Read the sockets mapping into handles (by S_* role; NULL where absent); -1 with an exception set. */
static int parse_sockets(PyObject *sockets, void *handles[S_COUNT])
{
    PyObject *role, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(sockets, &pos, &role, &value)) {
        const char *name = PyUnicode_Check(role) ? PyUnicode_AsUTF8(role) : NULL;
        if (!name) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "sockets maps role names (str) to handles");
            return -1;
        }
        int i = 0;
        while (i < S_COUNT && strcmp(SOCKET_ROLES[i], name) != 0)
            i++;
        if (i == S_COUNT) {
            PyErr_Format(PyExc_ValueError, "unknown socket role %R: the roles are collector, ingress, upstream, "
                         "publish, push, relay, stamped, repair, relay_repair and upstream_repair", role);
            return -1;
        }
        unsigned long long handle = PyLong_AsUnsignedLongLong(value);
        if (handle == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
        handles[i] = (void *)(uintptr_t)handle;
    }
    if (!handles[S_COLLECTOR]) {
        PyErr_SetString(PyExc_ValueError, "a collector socket is required");
        return -1;
    }
    return 0;
}

/* Copy a sequence of bytes into data/len (at most TOPICS_CAP); *count grows as they are copied. */
static int copy_topics(PyObject *topics, char **data, size_t *lens, int *count)
{
    PyObject *seq = PySequence_Fast(topics, "topics must be a sequence of bytes");
    if (!seq)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > TOPICS_CAP) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "at most %d topics can be counted", TOPICS_CAP);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        char *bytes;
        Py_ssize_t len;
        if (PyBytes_AsStringAndSize(PySequence_Fast_GET_ITEM(seq, i), &bytes, &len) < 0)
            break;
        data[i] = PyMem_Malloc(len ? (size_t)len : 1);
        if (!data[i]) {
            PyErr_NoMemory();
            break;
        }
        memcpy(data[i], bytes, (size_t)len);
        lens[i] = (size_t)len;
        *count = (int)i + 1;
    }
    Py_DECREF(seq);
    return PyErr_Occurred() ? -1 : 0;
}

static int set_limits(Forwarder *f, unsigned long long max_size, int max_frames, int strip,
                      unsigned long long stall_above, unsigned long long resume_below, unsigned long long push_above)
{
    if (max_frames < 1 || max_frames > FRAMES_CAP) {
        PyErr_Format(PyExc_ValueError, "max_frames must be between 1 and %d", FRAMES_CAP);
        return -1;
    }
    STORE(f->max_size, (uint64_t)max_size);
    STORE(f->max_frames, max_frames);
    STORE(f->strip_topic, strip);
    STORE(f->stall_above, (uint64_t)stall_above);
    STORE(f->resume_below, (uint64_t)resume_below);
    STORE(f->push_above, (uint64_t)push_above);
    return 0;
}

/* Add an input to read, in the order of the calls. */
static void add_input(Forwarder *f, void *socket, int from_upstream)
{
    f->inputs[f->ninputs].socket = socket;
    f->inputs[f->ninputs++].from_upstream = from_upstream;
}

static int Forwarder_init(Forwarder *f, PyObject *args, PyObject *kw)
{
    static char *names[] = {
        "sockets",
        "max_message_size", "max_frames", "strip_topic", "stall_above", "resume_below", "push_above",  /* limits */
        "topics", "upstream_topics",                      /* counting */
        "stall_ns", "stall_fd",                           /* stalls */
        "node_id", "epoch", "stamp_streams",              /* stamping and federation */
        "history_bytes", "history_ns",                    /* repair */
        "upstream_repair_endpoint",                       /* federation repair */
        NULL};
    PyObject *sockets, *topics = NULL, *up_topics = NULL;
    unsigned long long max_size = 1 << 20, epoch = 0, stall_above = 0, resume_below = 0, push_above = 0;
    unsigned long long history_bytes = 0;
    long long history_ns = 0;
    int max_frames = 16, strip = 1, stall_fd = -1, stamp_streams = 65536;
    long long stall_ns = 0;
    const char *node_id = NULL, *upstream_repair_endpoint = NULL;
    Py_ssize_t node_id_len = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!|$" "KipKKK" "OO" "Li" "y#Ki" "KL" "z", names, &PyDict_Type, &sockets,
                                     &max_size, &max_frames, &strip, &stall_above, &resume_below, &push_above,
                                     &topics, &up_topics,
                                     &stall_ns, &stall_fd,
                                     &node_id, &node_id_len, &epoch, &stamp_streams,
                                     &history_bytes, &history_ns, &upstream_repair_endpoint))
        return -1;
    if (f->ninputs) {
        PyErr_SetString(PyExc_RuntimeError, "a Forwarder is initialised once");
        return -1;
    }
    if (!f->parts && !(f->parts = aligned_alloc(64, ZMSG_LINES(FRAMES_CAP + 2)))) {
        PyErr_NoMemory();
        return -1;
    }
    f->scratch = &f->parts[FRAMES_CAP + 1];
    void *s[S_COUNT] = {NULL};
    if (parse_sockets(sockets, s) < 0)
        return -1;
    if (stall_ns < 0) {
        PyErr_SetString(PyExc_ValueError, "stall_ns must not be negative");
        return -1;
    }
    if ((s[S_UPSTREAM] || s[S_RELAY]) && node_id_len != WIRE_NODE_ID_LEN) {
        PyErr_Format(PyExc_ValueError, "federation needs a node_id of %d bytes", WIRE_NODE_ID_LEN);
        return -1;
    }
    f->stamping = s[S_STAMPED] || s[S_RELAY];
    if (f->stamping && !epoch) {
        PyErr_SetString(PyExc_ValueError, "stamping (a stamped or relay output) needs a non-zero epoch");
        return -1;
    }
    if (s[S_REPAIR] && !s[S_STAMPED]) {
        PyErr_SetString(PyExc_ValueError, "the repair endpoint is the stamped output's: it needs one");
        return -1;
    }
    if (s[S_RELAY_REPAIR] && !s[S_RELAY]) {
        PyErr_SetString(PyExc_ValueError, "relay_repair is the relay output's: it needs one");
        return -1;
    }
    if (history_bytes && !f->stamping) {
        PyErr_SetString(PyExc_ValueError, "history keeps what is stamped: it needs a stamped or relay output");
        return -1;
    }
    if (s[S_UPSTREAM_REPAIR] && !s[S_UPSTREAM]) {
        PyErr_SetString(PyExc_ValueError, "upstream_repair repairs the upstream link: it needs one");
        return -1;
    }
    if (history_ns < 0) {
        PyErr_SetString(PyExc_ValueError, "history_ns must not be negative");
        return -1;
    }
    if (stamp_streams < 1 || stamp_streams > (1 << 24)) {
        PyErr_SetString(PyExc_ValueError, "stamp_streams must be between 1 and 16777216");
        return -1;
    }
    f->stall_ns = stall_ns;
    f->stall_fd = stall_fd;
    if (node_id && node_id_len == WIRE_NODE_ID_LEN)
        memcpy(f->node_id, node_id, WIRE_NODE_ID_LEN);
    add_input(f, s[S_COLLECTOR], 0);
    if (s[S_INGRESS])
        add_input(f, s[S_INGRESS], 0);
    if (s[S_UPSTREAM])
        add_input(f, s[S_UPSTREAM], 1);
    if (topics && copy_topics(topics, f->topic_data, f->topic_len, &f->ntopics) < 0)
        return -1;
    if (up_topics && copy_topics(up_topics, f->up_topic_data, f->up_topic_len, &f->nup_topics) < 0)
        return -1;
    f->epoch = epoch;
    if ((f->stamping && streams_init(&f->stamps, stamp_streams) < 0) ||
        (s[S_UPSTREAM] && streams_init(&f->seen, stamp_streams) < 0)) {
        PyErr_NoMemory();
        return -1;
    }
    f->publish = f->outs[OUT_PUBLISH] = s[S_PUBLISH];
    f->relay = f->outs[OUT_RELAY] = s[S_RELAY];
    f->outs[OUT_STAMPED] = s[S_STAMPED];
    f->push = s[S_PUSH];
    if ((f->push && !(f->push_held = ledger_new())) || !(f->subs = subs_new())) {
        PyErr_NoMemory();
        return -1;
    }
    for (int o = 0; o < OUTS; o++)
        if (f->outs[o] && !(f->held[o] = ledger_new())) {
            PyErr_NoMemory();
            return -1;
        }
    if ((history_bytes && !(f->history = history_new(history_bytes, history_ns))) ||
        (s[S_REPAIR] && !(f->repair = repair_new(s[S_REPAIR], 0))) ||
        (s[S_RELAY_REPAIR] && !(f->relay_repair = repair_new(s[S_RELAY_REPAIR], 1))) ||
        (s[S_UPSTREAM_REPAIR] && !(f->uprepair = uprepair_new(s[S_UPSTREAM_REPAIR], upstream_repair_endpoint)))) {
        PyErr_NoMemory();
        return -1;
    }
    return set_limits(f, max_size, max_frames, strip, stall_above, resume_below, push_above);
}
