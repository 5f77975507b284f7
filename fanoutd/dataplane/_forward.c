/*
 * fanoutd.dataplane._forward: the forwarding loop, in C. It reads the
 * collector (and the ingress and upstream link) and writes the publish, push,
 * relay and stamped outputs with the GIL released, so the hub (Python,
 * gevent) keeps everything around it: HTTP, signals, socket monitors, the
 * slow-consumer guard, watchdog and reload. docs/architecture.md describes
 * the threads and why this part is in C; bench/README.md has the numbers.
 *
 * One translation unit, so the per-message path inlines across the job files
 * it includes (none is compiled alone):
 *   forwarder.h   the Forwarder's fields and the hub-loop contract
 *   subs.h        the subscription bounds' state and what of it the hub and the loop share
 *   libzmq.c      binding the loop to the libzmq pyzmq uses (zmq_abi.h)
 *   held.c        the held-bytes ledger: what libzmq holds for each output
 *   fanout.c      sending to the XPUB outputs, and the stall protocol
 *   trailer.c     the trailer codec (wire.h)
 *   stamps.c      stamp streams and upstream gaps (_streams.h)
 *   senders.c     producer connections by Socket-Type, for the hub (senders.h)
 *   subs.c        the outputs' subscriptions, counted per connection, address and output, and bounded
 *   history.c     the repair history: what the stamped output sent, per stream, bounded
 *   repair.c      the repair endpoint, served from the history in the loop
 *   loop.c        the loop: read, check, count and hand each message out
 *   uprepair.c    an edge asking its hub for the messages its upstream link missed
 *   kernel.c      the kernel's view of connections, for the guard
 *   construct.c   Forwarder(sockets, *, settings)
 *   forwarder.c   the Forwarder's methods and type
 *   this file     the module
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "zmq_abi.h"
#include "wire.h"
#include "_streams.h"
#include "senders.h"
#include "forwarder.h"
#include "subs.h"

#include "libzmq.c"
#include "held.c"
#include "fanout.c"
#include "trailer.c"
#include "stamps.c"
#include "senders.c"
#include "subs.c"
#include "history.c"
#include "repair.c"
#include "loop.c"
#include "uprepair.c"
#include "kernel.c"
#include "construct.c"
#include "forwarder.c"

static PyMethodDef module_methods[] = {
    {"kernel_states", kernel_states, METH_O,
     "kernel_states(fds) -> [(queued bytes, acknowledged bytes or -1) or None]: the kernel's view of each "
     "connection (SIOCOUTQ, TCP_INFO), read without the GIL; None where an fd cannot be read."},
    {"kernel_waiting", kernel_waiting, METH_O,
     "kernel_waiting(fds) -> [(index into fds, queued bytes, acknowledged bytes or -1)]: kernel_states for "
     "only the connections with bytes in their send queue."},
    {"held_ledgers", held_ledgers, METH_NOARGS,
     "How many held-bytes ledgers are alive in this process: one per output of each Forwarder, and one "
     "outliving its Forwarder until libzmq has released the last frame it counts."},
    {"bind_libzmq", bind_libzmq, METH_VARARGS,
     "bind_libzmq(path): make the loop call the libzmq that the loaded object at path (pyzmq's extension) "
     "reaches. Idempotent; refuses a libzmq other than 4.x or a second, different binding."},
    {"inspect_libzmq", inspect_libzmq, METH_VARARGS,
     "inspect_libzmq(path) -> {'version': (major, minor, patch), 'functions': {symbol: (loop, global)}}: "
     "what bind_libzmq(path) would bind, without binding. loop and global are (file, load address) or None: "
     "the object dlsym reaches through path's handle, and the one the global scope resolves the symbol to."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fanoutd.dataplane._forward",
    .m_doc = "The forwarding loop of fanoutd, in C (fanoutd.dataplane.engine owns it).",
    .m_size = -1,
    .m_methods = module_methods,
};

/* COUNTER_NAMES as a tuple of str, or NULL with an exception set. */
static PyObject *counter_names(void)
{
    PyObject *names = PyTuple_New(C_COUNT);
    for (int i = 0; names && i < C_COUNT; i++) {
        PyObject *name = PyUnicode_FromString(COUNTER_NAMES[i]);
        if (!name)
            Py_CLEAR(names);
        else
            PyTuple_SET_ITEM(names, i, name);
    }
    return names;
}

PyMODINIT_FUNC PyInit__forward(void)
{
    if (PyType_Ready(&ForwarderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    PyObject *names = counter_names();
    int rc = names ? PyModule_AddObjectRef(m, "COUNTER_NAMES", names) : -1;
    Py_XDECREF(names);
    PyObject *outputs = rc < 0 ? NULL : Py_BuildValue("(sss)", "publish", "relay", "stamped");
    rc = outputs ? PyModule_AddObjectRef(m, "OUTPUTS", outputs) : -1;
    Py_XDECREF(outputs);
    if (rc < 0 || PyModule_AddObjectRef(m, "Forwarder", (PyObject *)&ForwarderType) < 0 ||
        PyModule_AddIntConstant(m, "ZMQ_ABI_MAJOR", ZABI_MAJOR) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
