"""Bind fanoutd's native loop to the very libzmq pyzmq uses, or refuse to start with one line saying why.

The loop (:mod:`fanoutd.dataplane._forward`) drives sockets pyzmq created, so both must
call the same libzmq. The loop never looks for libzmq by file name: it
resolves each function through pyzmq's own compiled extension
(``dlopen(extension, RTLD_NOLOAD)``, then ``dlsym`` on that handle, which
searches the extension and then its dependencies). :func:`bind` checks what
that reaches before the loop may use it.

Cases covered:

* Another libzmq loaded privately first (``ctypes.CDLL(path, mode=RTLD_LOCAL)``,
  another extension): ignored; the loop binds pyzmq's copy.
* pyzmq's libzmq bundled beside its extension, the system one, or linked
  statically into the extension: all reached through the same handle (a
  static copy that does not export its ``zmq_*`` symbols is refused).
* A libzmq in the global symbol scope (``LD_PRELOAD``, or loaded with
  ``RTLD_GLOBAL`` before pyzmq): the dynamic linker then sends pyzmq's own
  calls there, so pyzmq creates its sockets with that copy while the handle
  reaches the one beside the extension. Found by resolving each symbol in the
  global scope too; refused, naming both files. Following pyzmq there would
  be possible, but a libzmq slipped in under pyzmq is an accident of the
  environment that deserves a clear line, not a silent switch.
* pyzmq's own ``zmq_version()`` differing from the one the loop reaches, the
  functions coming from more than one file, or a major version other than
  the 4.x ABI the loop is written for: refused.

Not covered: an extension built with ``-Bsymbolic`` or loaded with
``RTLD_DEEPBIND`` keeps its own libzmq despite a global one; that case is
refused although it would be safe.
"""

from __future__ import annotations

import functools
import importlib.machinery
import os
import sys
from collections.abc import Mapping, Sequence

import zmq

from . import _forward

# (file, load address) of the object defining a symbol, as _forward reports it.
Origin = tuple[str, int]


class LibzmqError(RuntimeError):
    """The loop cannot safely drive pyzmq's sockets; str() is the one line to show."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


def extension_path() -> str:
    """The file of pyzmq's compiled backend: the object whose libzmq the loop must share."""
    name = zmq.backend.Socket.__module__
    path = getattr(sys.modules.get(name), "__file__", None) or ""
    if not path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        raise LibzmqError(f"fanoutd's loop needs pyzmq's compiled (Cython) backend, "
                          f"but pyzmq's sockets come from {name} ({path or 'no file'})")
    return path


def _version(version: Sequence[int]) -> str:
    return ".".join(map(str, version))


def _file(origin: Origin) -> str:
    return os.path.normpath(origin[0])


def mismatch(facts: Mapping, pyzmq_version: Sequence[int]) -> str | None:
    """Why the loop may not bind what ``_forward.inspect_libzmq`` found, or None when it may.

    Objects are told apart by load address, not by name: two copies of one
    file loaded under different names are still two libraries.
    """
    functions: Mapping[str, tuple[Origin | None, Origin | None]] = facts["functions"]
    mine = [loop for loop, _ in functions.values()]
    if None in mine:
        return "fanoutd's loop cannot tell which file defines libzmq's functions (dladdr failed)"
    found = f"fanoutd's loop found libzmq {_version(facts['version'])} in {_file(mine[0])}"
    used = f"pyzmq uses {_version(pyzmq_version)}"
    if len({base for _, base in mine}) > 1:
        files = ", ".join(sorted({_file(origin) for origin in mine}))
        return f"{found} but its functions come from several files ({files}): cannot tell which one pyzmq uses"
    for loop, global_ in functions.values():
        if global_ is not None and global_[1] != loop[1]:
            return (f"{found} but {used} from {_file(global_)}, which LD_PRELOAD or a library loaded with "
                    "RTLD_GLOBAL puts ahead of pyzmq's own: start fanoutd without it")
    if tuple(facts["version"]) != tuple(pyzmq_version):
        return f"{found} but {used}: they are not the same library"
    if facts["version"][0] != _forward.ZMQ_ABI_MAJOR:
        return f"{found} but is written for libzmq {_forward.ZMQ_ABI_MAJOR}.x only"
    return None


@functools.cache
def bind() -> str:
    """Bind the loop to pyzmq's libzmq, once; returns 'libzmq X.Y.Z from FILE' for a log line.

    Cached, so a second call costs nothing; a refusal is not cached, so it is
    checked again (cheaply) and raised again. Raises :class:`LibzmqError`.
    """
    path = extension_path()
    try:
        facts = _forward.inspect_libzmq(path)
    except ImportError as exc:
        raise LibzmqError(f"fanoutd's loop cannot reach libzmq through pyzmq's extension: {exc}") from None
    problem = mismatch(facts, zmq.zmq_version_info())
    if problem is not None:
        raise LibzmqError(problem)
    try:
        _forward.bind_libzmq(path)
    except (ImportError, RuntimeError) as exc:
        raise LibzmqError(f"fanoutd's loop cannot bind pyzmq's libzmq: {exc}") from None
    return f"libzmq {_version(facts['version'])} from {_file(facts['functions']['zmq_msg_send'][0])}"
