/*
 * fanoutd/dataplane/kernel.c: the kernel's view of many connections at once,
 * for the slow-consumer guard (fanoutd/dataplane/kernel.py is its Python face).
 *
 * Per fd: bytes in the kernel send queue (SIOCOUTQ, -2 if the fd cannot be
 * read), and bytes the peer acknowledged (TCP_INFO tcpi_bytes_acked; -1 where
 * not TCP; 0, unread, when nothing is queued). One C pass without the GIL
 * costs a fraction of a Python loop of ioctl and getsockopt, which at many
 * thousands of subscribers would delay the hub (see bench/README.md,
 * profiles, "The guard's pass over idle connections").
 *
 * Part of the _forward.c translation unit (included there, not compiled alone).
 */

#define BYTES_ACKED_END (offsetof(struct tcp_info, tcpi_bytes_acked) + sizeof(((struct tcp_info *)0)->tcpi_bytes_acked))

/* Read the kernel state of the fds in arg: 2 values per fd (queued, acked) in a PyMem block the caller
 * frees, *n_out fds; NULL with an exception set. */
static long long *scan_fds(PyObject *arg, Py_ssize_t *n_out)
{
    PyObject *seq = PySequence_Fast(arg, "takes a sequence of file descriptors");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int *fds = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *fds);
    long long *out = PyMem_Malloc((size_t)(n ? n : 1) * 2 * sizeof *out);
    if (!fds || !out) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long fd = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (fd == -1 && PyErr_Occurred())
            goto fail;
        fds[i] = (int)fd;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        int queued = 0;
        struct tcp_info info;
        socklen_t len = sizeof info;
        out[2 * i] = ioctl(fds[i], SIOCOUTQ, &queued) == 0 ? queued : -2;
        if (queued <= 0) {
            out[2 * i + 1] = 0;  /* nothing waits for it: it cannot be behind, and the guard looks no further */
        } else if (getsockopt(fds[i], IPPROTO_TCP, TCP_INFO, &info, &len) == 0 && len >= BYTES_ACKED_END) {
            out[2 * i + 1] = (long long)info.tcpi_bytes_acked;
        } else {
            out[2 * i + 1] = -1;  /* not TCP (ipc): progress shows in the queue only */
        }
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(fds);
    Py_DECREF(seq);
    *n_out = n;
    return out;
fail:
    PyMem_Free(fds);
    PyMem_Free(out);
    Py_DECREF(seq);
    return NULL;
}

static PyObject *kernel_states(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_ssize_t n;
    long long *out = scan_fds(arg, &n);
    if (!out)
        return NULL;
    PyObject *result = PyList_New(n);
    for (Py_ssize_t i = 0; result && i < n; i++) {
        PyObject *item = out[2 * i] == -2 ? Py_NewRef(Py_None) : Py_BuildValue("(LL)", out[2 * i], out[2 * i + 1]);
        if (!item)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, i, item);
    }
    PyMem_Free(out);
    return result;
}

/* The same scan, answering only for the connections with data waiting in the kernel: at 10,000 idle
 * subscribers the guard's once-a-second pass then builds no Python object per connection. */
static PyObject *kernel_waiting(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_ssize_t n;
    long long *out = scan_fds(arg, &n);
    if (!out)
        return NULL;
    PyObject *result = PyList_New(0);
    for (Py_ssize_t i = 0; result && i < n; i++) {
        if (out[2 * i] <= 0)
            continue;
        PyObject *item = Py_BuildValue("(nLL)", i, out[2 * i], out[2 * i + 1]);
        if (!item || PyList_Append(result, item) < 0)
            Py_CLEAR(result);
        Py_XDECREF(item);
    }
    PyMem_Free(out);
    return result;
}
