"""Bench-only: applies one lever to a fanoutd started by ``bench/levers.py`` (never imported by fanoutd).

``bench/levers.py`` puts this directory on ``PYTHONPATH`` and names the
lever in ``FOBENCH_LEVER``; Python imports ``sitecustomize`` at start-up, so
the broker under test runs unchanged code with one thing varied:

* ``NAME=VALUE[;NAME=VALUE...]``: fanoutd's own settings (``io_threads=1``,
  ``heartbeat_interval=30;heartbeat_timeout=90``);
* ``affinity=CPU``: every libzmq I/O thread pinned to CPU
  (``ZMQ_THREAD_AFFINITY_CPU_ADD`` on fanoutd's context, before any socket);
* ``buffers=BYTES``: ``SO_SNDBUF`` and ``SO_RCVBUF`` of every fanoutd socket
  (``ZMQ_SNDBUF``/``ZMQ_RCVBUF``, set before it binds or connects);
* ``sockaffinity=INPUTS:OUTPUTS``: ``ZMQ_AFFINITY`` (a bit mask of libzmq's
  I/O threads) of the input sockets (SUB, PULL) and of the output sockets
  (XPUB, PUSH), set before each binds: ``1:2`` puts the collector's
  connections on I/O thread 0 and every subscriber's and puller's on 1;
* ``malloc=BYTES``: glibc's ``M_TOP_PAD`` (how much more each heap grows by
  than asked: fewer ``mprotect`` calls as libzmq's I/O threads allocate a
  crowd's connections), with ``M_MMAP_THRESHOLD`` at glibc's dynamic
  maximum, 32 MiB (setting one turns the dynamic threshold off).
"""

from __future__ import annotations

import os

_lever = os.environ.get("FOBENCH_LEVER", "")
_name, _, _value = _lever.partition("=")

if _name == "malloc":
    import ctypes

    _libc = ctypes.CDLL(None)
    _libc.mallopt(-2, int(_value))  # M_TOP_PAD
    _libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD
elif _name in ("affinity", "buffers", "sockaffinity"):
    import zmq

    if _name == "affinity":
        _init = zmq.Context.__init__

        def _pinned(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            _init(self, *args, **kwargs)
            self.set(zmq.THREAD_AFFINITY_CPU_ADD, int(_value))

        zmq.Context.__init__ = _pinned  # type: ignore[method-assign]
    elif _name == "sockaffinity":
        _masks = dict(zip(("in", "out"), (int(v) for v in _value.split(":"))))
        _bind = zmq.Socket.bind

        def _placed(self, addr):  # type: ignore[no-untyped-def]
            side = "in" if self.getsockopt(zmq.TYPE) in (zmq.SUB, zmq.PULL) else "out"
            self.setsockopt(zmq.AFFINITY, _masks[side])
            return _bind(self, addr)

        zmq.Socket.bind = _placed  # type: ignore[method-assign]
    else:
        for _method in ("bind", "connect"):
            _orig = getattr(zmq.Socket, _method)

            def _sized(self, addr, _orig=_orig):  # type: ignore[no-untyped-def]
                if addr.startswith("tcp://"):
                    self.setsockopt(zmq.SNDBUF, int(_value))
                    self.setsockopt(zmq.RCVBUF, int(_value))
                return _orig(self, addr)

            setattr(zmq.Socket, _method, _sized)
elif _lever:  # fanoutd settings: NAME=VALUE[;NAME=VALUE...]
    for _item in _lever.split(";"):
        _key, _, _val = _item.partition("=")
        os.environ["FANOUTD_" + _key.upper()] = _val
