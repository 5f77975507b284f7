/*
 * fanoutd/dataplane/forwarder.c: the Forwarder as a Python type, its
 * construction and the methods the hub calls (each one thread-safe by the
 * contract in forwarder.h).
 *
 * Part of the _forward.c translation unit (included there, not compiled alone).
 */

static PyObject *Forwarder_run(Forwarder *f, PyObject *Py_UNUSED(ignored))
{
    if (!bound) {
        PyErr_SetString(PyExc_RuntimeError, "bind_libzmq() has not been called");
        return NULL;
    }
    if (f->running) {
        PyErr_SetString(PyExc_RuntimeError, "the forwarder is already running");
        return NULL;
    }
    f->running = 1;
    const char *result;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    /* A name operators see in `top -H` and tools can find the loop by; a nicety, so a failure changes nothing. */
    (void)prctl(PR_SET_NAME, "fanoutd-fwd", 0, 0, 0);
    result = forward_until_stopped(f, &err);
    Py_END_ALLOW_THREADS
    f->running = 0;
    if (!result) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyUnicode_FromString(result);
}

static PyObject *Forwarder_stop(Forwarder *f, PyObject *args)
{
    int abort = 0;
    if (!PyArg_ParseTuple(args, "|p", &abort))
        return NULL;
    int mode = abort ? MODE_ABORT : MODE_DRAIN;
    if (mode > LOAD(f->mode))
        STORE(f->mode, mode);
    Py_RETURN_NONE;
}

static PyObject *Forwarder_set_limits(Forwarder *f, PyObject *args, PyObject *kw)
{
    static char *names[] = {"max_message_size", "max_frames", "strip_topic", "stall_above", "push_above",
                            "resume_below", NULL};
    unsigned long long max_size = 0, stall_above = 0, push_above = 0, resume_below = 0;
    int max_frames = 0, strip = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "$KipKKK", names, &max_size, &max_frames, &strip, &stall_above,
                                     &push_above, &resume_below))
        return NULL;
    if (set_limits(f, max_size, max_frames, strip, stall_above, resume_below, push_above) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Store a connection count the hub keeps for the loop (negative as 0). */
static PyObject *set_peers(int *peers, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    STORE(*peers, (int)(n < 0 ? 0 : n));
    Py_RETURN_NONE;
}

static PyObject *Forwarder_set_push_peers(Forwarder *f, PyObject *arg)
{
    return set_peers(&f->push_peers, arg);
}

static PyObject *Forwarder_set_stamped_peers(Forwarder *f, PyObject *arg)
{
    return set_peers(&f->stamped_peers, arg);
}

static PyObject *Forwarder_reconnect(Forwarder *f, PyObject *arg)
{
    const char *endpoint;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(arg, (char **)&endpoint, &len) < 0)
        return NULL;
    if (!f->ninputs || !f->inputs[f->ninputs - 1].from_upstream) {
        PyErr_SetString(PyExc_RuntimeError, "this forwarder has no upstream link");
        return NULL;
    }
    if ((size_t)len >= sizeof f->reconnect_to || memchr(endpoint, 0, (size_t)len)) {
        PyErr_SetString(PyExc_ValueError, "endpoint too long or contains NUL");
        return NULL;
    }
    if (__atomic_load_n(&f->reconnect_pending, __ATOMIC_ACQUIRE))
        Py_RETURN_FALSE;  /* the loop has not taken the previous one yet */
    memcpy(f->reconnect_to, endpoint, (size_t)len);
    f->reconnect_to[len] = 0;
    __atomic_store_n(&f->reconnect_pending, 1, __ATOMIC_RELEASE);
    Py_RETURN_TRUE;
}

/* A per-output value shared with the loop, as a tuple in OUTPUTS order. */
static PyObject *per_output(uint64_t values[OUTS])
{
    return Py_BuildValue("(KKK)", (unsigned long long)LOAD(values[OUT_PUBLISH]),
                         (unsigned long long)LOAD(values[OUT_RELAY]),
                         (unsigned long long)LOAD(values[OUT_STAMPED]));
}

/* An output index given from Python, or -1 with ValueError set if it is out of range. */
static int output_index(int out)
{
    if (out >= 0 && out < OUTS)
        return out;
    PyErr_Format(PyExc_ValueError, "output must be between 0 and %d", OUTS - 1);
    return -1;
}

static PyObject *Forwarder_windows(Forwarder *f, PyObject *Py_UNUSED(ignored))
{
    return per_output(f->window);
}

static PyObject *Forwarder_held_bytes(Forwarder *f, PyObject *Py_UNUSED(ignored))
{
    uint64_t held[OUTS];
    for (int o = 0; o < OUTS; o++)
        held[o] = ledger_bytes(f->held[o]);
    return per_output(held);
}

static PyObject *Forwarder_push_held_bytes(Forwarder *f, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLongLong(ledger_bytes(f->push_held));
}

/* (bytes the history counts against history_bytes, as last published; frame bytes its ledger says are pinned,
 * which counts the frames of repair replies still in flight too). */
static PyObject *Forwarder_history_held(Forwarder *f, PyObject *Py_UNUSED(ignored))
{
    if (!f->history)
        return Py_BuildValue("(KK)", 0ULL, 0ULL);
    return Py_BuildValue("(KK)", (unsigned long long)LOAD(f->shared[C_HISTORY_BYTES]),
                         (unsigned long long)ledger_bytes(f->history->ledger));
}

static PyObject *Forwarder_stalls(Forwarder *f, PyObject *Py_UNUSED(ignored))
{
    return per_output(f->stall);
}

static PyObject *Forwarder_answer_stall(Forwarder *f, PyObject *args)
{
    int out, stall_on;
    unsigned long long number;
    if (!PyArg_ParseTuple(args, "iKp", &out, &number, &stall_on) || output_index(out) < 0)
        return NULL;
    if (!number || number >> 63) {
        PyErr_SetString(PyExc_ValueError, "number must be a stall's number (from stalls())");
        return NULL;
    }
    STORE(f->answer[out], (uint64_t)number << 1 | (uint64_t)(stall_on != 0));
    Py_RETURN_NONE;
}

static PyObject *Forwarder_close_window(Forwarder *f, PyObject *args)
{
    int out;
    unsigned long long seen;
    if (!PyArg_ParseTuple(args, "iK", &out, &seen) || output_index(out) < 0)
        return NULL;
    uint64_t expected = seen;
    int closed = __atomic_compare_exchange_n(&f->window[out], &expected, 0, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return PyBool_FromLong(closed);
}

static PyObject *Forwarder_counters(Forwarder *f, PyObject *Py_UNUSED(ignored))
{
    PyObject *d = PyDict_New();
    for (int i = 0; d && i < C_COUNT; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(LOAD(f->shared[i]));
        if (!v || PyDict_SetItemString(d, COUNTER_NAMES[i], v) < 0) {
            Py_XDECREF(v);
            Py_CLEAR(d);
        } else {
            Py_DECREF(v);
        }
    }
    return d;
}

static PyObject *Forwarder_topic_counters(Forwarder *f, PyObject *Py_UNUSED(ignored))
{
    PyObject *t = PyTuple_New(f->ntopics + 1);
    for (int i = 0; t && i < f->ntopics + 1; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(LOAD(f->topic_shared[i]));
        if (!v) {
            Py_CLEAR(t);
            break;
        }
        PyTuple_SET_ITEM(t, i, v);
    }
    return t;
}

static void Forwarder_dealloc(Forwarder *f)
{
    for (int i = 0; i < f->ntopics; i++)
        PyMem_Free(f->topic_data[i]);
    for (int i = 0; i < f->nup_topics; i++)
        PyMem_Free(f->up_topic_data[i]);
    streams_free(&f->stamps);
    streams_free(&f->seen);
    for (int o = 0; o < OUTS; o++)
        ledger_drop(f->held[o]);  /* freed now, or by the free callback of the last frame libzmq still holds */
    ledger_drop(f->push_held);
    history_free(f->history);
    free(f->repair);
    free(f->relay_repair);
    free(f->uprepair);
    subs_free(f->subs);
    free(f->parts);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static PyMethodDef Forwarder_methods[] = {
    {"run", (PyCFunction)Forwarder_run, METH_NOARGS,
     "Forward until stopped; releases the GIL. Returns 'drained', 'aborted' or 'terminated'."},
    {"stop", (PyCFunction)Forwarder_stop, METH_VARARGS,
     "stop(abort=False): drain the collector then return, or return at once. Thread-safe."},
    {"set_limits", (PyCFunction)(void (*)(void))Forwarder_set_limits, METH_VARARGS | METH_KEYWORDS,
     "Change max_message_size, max_frames, strip_topic, stall_above, push_above and resume_below live. Thread-safe."},
    {"set_push_peers", (PyCFunction)Forwarder_set_push_peers, METH_O,
     "Tell the loop how many pullers are connected, to label push drops. Thread-safe."},
    {"set_stamped_peers", (PyCFunction)Forwarder_set_stamped_peers, METH_O,
     "Tell the loop how many connections the stamped output has: with none (and no subscription read "
     "lately) it skips that output's sends. Thread-safe."},
    {"reconnect", (PyCFunction)Forwarder_reconnect, METH_O,
     "reconnect(endpoint: bytes): have the loop connect the upstream link to endpoint afresh (within one "
     "tick); False if the previous request is still pending. Thread-safe."},
    {"windows", (PyCFunction)Forwarder_windows, METH_NOARGS,
     "Per output (OUTPUTS order): the number of the lossy send whose window is open, or 0. Thread-safe."},
    {"history_held", (PyCFunction)Forwarder_history_held, METH_NOARGS,
     "(bytes the repair history counts against history_bytes, frame bytes its ledger pins, repair replies in "
     "flight included); (0, 0) without history."},
    {"held_bytes", (PyCFunction)Forwarder_held_bytes, METH_NOARGS,
     "Per output (OUTPUTS order): the message bytes libzmq holds for its readers, exactly (frames of more "
     "than 256 bytes; shorter ones are bounded by the high-water mark). Thread-safe."},
    {"push_held_bytes", (PyCFunction)Forwarder_push_held_bytes, METH_NOARGS,
     "The message bytes libzmq holds for the PUSH output's pullers, exactly, as held_bytes() counts them "
     "(0 with no push_above). Thread-safe."},
    {"stalls", (PyCFunction)Forwarder_stalls, METH_NOARGS,
     "Per output (OUTPUTS order): the number of the stall it is in (a full subscriber queue), or 0. "
     "Thread-safe."},
    {"answer_stall", (PyCFunction)Forwarder_answer_stall, METH_VARARGS,
     "answer_stall(output, number, stall_on): the guard has looked at stall number; stall_on asks the loop "
     "to stall output stall_ns longer (and ask again), False lets it send lossy. Thread-safe."},
    {"close_window", (PyCFunction)Forwarder_close_window, METH_VARARGS,
     "close_window(output, number): close that output's window if no later lossy send reopened it "
     "(the guard has cut the full subscriber); True if closed. Thread-safe."},
    {"senders", (PyCFunction)Forwarder_senders, METH_NOARGS,
     "Producer connections seen since the last call: [(fd or -1, its inode or 0, Socket-Type as bytes)]. "
     "Hub only (one reader)."},
    {"forget_senders", (PyCFunction)Forwarder_forget_senders, METH_NOARGS,
     "A producer connection has closed: the loop reports every connection again at its next message. "
     "Hub only."},
    {"set_subscription_bounds", (PyCFunction)Forwarder_set_subscription_bounds, METH_VARARGS,
     "set_subscription_bounds(per_connection, per_address, per_socket): the most subscriptions (distinct "
     "prefixes) an output holds for one connection, one peer address and in all (0: no bound); one that would "
     "pass a bound closes its connection. Thread-safe."},
    {"subscriber_closed", (PyCFunction)Forwarder_subscriber_closed, METH_VARARGS,
     "subscriber_closed(fd, inode): a connection of an output closed, so its subscriptions no longer count "
     "(inode 0 if unknown); False if the loop has not taken the earlier ones yet (try again). Hub only."},
    {"subscriptions_of", (PyCFunction)Forwarder_subscriptions_of, METH_VARARGS,
     "subscriptions_of(output, fd): the subscriptions the loop counts for that connection of the output "
     "(0: none, or not heard of); for /peers. Thread-safe."},
    {"subscription_refusals", (PyCFunction)Forwarder_subscription_refusals, METH_NOARGS,
     "Connections closed for a subscription over a bound since the last call: [(output, bound, fd, inode, "
     "the bound's value, peer address)]. Hub only."},
    {"counters", (PyCFunction)Forwarder_counters, METH_NOARGS,
     "A snapshot of the counters, at most one batch or one tick stale."},
    {"topic_counters", (PyCFunction)Forwarder_topic_counters, METH_NOARGS,
     "Received messages per counted topic, in the order given, then all others."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ForwarderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fanoutd.dataplane._forward.Forwarder",
    .tp_basicsize = sizeof(Forwarder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = FORWARDER_DOC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Forwarder_init,
    .tp_dealloc = (destructor)Forwarder_dealloc,
    .tp_methods = Forwarder_methods,
};
