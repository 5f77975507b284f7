/*
 * fanoutd/dataplane/libzmq.c: binding the loop to the libzmq pyzmq uses.
 *
 * The sockets are created by pyzmq, so the loop must call into exactly the
 * libzmq pyzmq uses (bundled in its wheel, the system one, or linked into its
 * extension). bind_libzmq(path) resolves the functions of zmq_abi.h through
 * pyzmq's own extension module at path, never by file name, and fills Z;
 * inspect_libzmq(path) reports what that binding would be, so
 * fanoutd.dataplane.zmqlib can refuse a mismatch first.
 *
 * Part of the _forward.c translation unit (included there, not compiled alone).
 */

#define ZABI_NAME(ret, field, symbol, params) #symbol,
static const char *const ZABI_NAMES[] = {ZABI_FUNCTIONS(ZABI_NAME, zmsg_t, zpollitem_t)};
#define ZABI_COUNT (sizeof ZABI_NAMES / sizeof ZABI_NAMES[0])

/* Resolve every function through the already-loaded object at path (pyzmq's
 * extension).  dlsym on a handle searches that object, then its
 * dependencies, so this reaches the libzmq the extension itself links to
 * (bundled beside it, a system copy, or linked into it) and never another
 * copy that merely happens to be mapped.  Returns the open handle, or NULL
 * with ImportError set. */
static void *resolve(const char *path, void *addr[ZABI_COUNT])
{
    void *handle = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (!handle) {
        PyErr_Format(PyExc_ImportError, "%s is not loaded: %s", path, dlerror());
        return NULL;
    }
    for (size_t i = 0; i < ZABI_COUNT; i++) {
        addr[i] = dlsym(handle, ZABI_NAMES[i]);
        if (!addr[i]) {
            PyErr_Format(PyExc_ImportError, "%s reaches no %s", path, ZABI_NAMES[i]);
            dlclose(handle);
            return NULL;
        }
    }
    return handle;
}

/* The function table for resolved addresses, in ZABI_NAMES order. */
static struct zabi table(void *const addr[ZABI_COUNT])
{
    struct zabi z;
    size_t i = 0;
#define ZABI_SET(ret, field, symbol, params) memcpy(&z.field, &addr[i++], sizeof z.field);
    ZABI_FUNCTIONS(ZABI_SET, zmsg_t, zpollitem_t)
#undef ZABI_SET
    return z;
}

/* (file, load address) of the object that defines addr, or None. */
static PyObject *origin(const void *addr)
{
    Dl_info info;
    if (!addr || !dladdr(addr, &info) || !info.dli_fname)
        Py_RETURN_NONE;
    PyObject *file = PyUnicode_DecodeFSDefault(info.dli_fname);
    if (!file)
        return NULL;
    return Py_BuildValue("(NK)", file, (unsigned long long)(uintptr_t)info.dli_fbase);
}

/* symbol -> (origin through the handle, origin in the global scope).  The
 * global scope (the program, LD_PRELOAD, RTLD_GLOBAL libraries) is searched
 * before the extension's own dependencies when pyzmq's calls are bound, so
 * a hit there is where pyzmq's calls really go. */
static PyObject *origins(void *const addr[ZABI_COUNT])
{
    PyObject *d = PyDict_New();
    for (size_t i = 0; d && i < ZABI_COUNT; i++) {
        PyObject *v = Py_BuildValue("(NN)", origin(addr[i]), origin(dlsym(RTLD_DEFAULT, ZABI_NAMES[i])));
        if (!v || PyDict_SetItemString(d, ZABI_NAMES[i], v) < 0)
            Py_CLEAR(d);
        Py_XDECREF(v);
    }
    return d;
}

/* The path argument of inspect_libzmq and bind_libzmq, resolved: the open handle (NULL with an exception
 * set), the functions' addresses and the version the library reports. */
static void *resolve_arg(PyObject *args, const char **path, void *addr[ZABI_COUNT], int version[3])
{
    if (!PyArg_ParseTuple(args, "s", path))
        return NULL;
    void *handle = resolve(*path, addr);
    if (handle)
        table(addr).version(&version[0], &version[1], &version[2]);
    return handle;
}

static PyObject *inspect_libzmq(PyObject *Py_UNUSED(module), PyObject *args)
{
    const char *path;
    void *addr[ZABI_COUNT];
    int v[3] = {0, 0, 0};
    void *handle = resolve_arg(args, &path, addr, v);
    if (!handle)
        return NULL;
    PyObject *result = Py_BuildValue("{s(iii)sN}", "version", v[0], v[1], v[2], "functions", origins(addr));
    dlclose(handle);
    return result;
}

static PyObject *bind_libzmq(PyObject *Py_UNUSED(module), PyObject *args)
{
    const char *path;
    void *addr[ZABI_COUNT];
    int v[3] = {0, 0, 0};
    void *handle = resolve_arg(args, &path, addr, v);
    if (!handle)
        return NULL;
    if (v[0] != ZABI_MAJOR) {
        dlclose(handle);
        PyErr_Format(PyExc_ImportError, "%s reaches libzmq %d.%d.%d, not the %d.x ABI this loop is written for",
                     path, v[0], v[1], v[2], ZABI_MAJOR);
        return NULL;
    }
    struct zabi z = table(addr);
    if (bound) {
        /* The first binding holds its own reference. */
        dlclose(handle);
        if (memcmp(&z, &Z, sizeof z) != 0) {
            PyErr_Format(PyExc_RuntimeError, "the loop is already bound to another libzmq than %s reaches", path);
            return NULL;
        }
        Py_RETURN_NONE;
    }
    /* The handle stays open: the loop calls into it for the life of the process. */
    Z = z;
    bound = 1;
    Py_RETURN_NONE;
}
