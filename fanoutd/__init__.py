"""fanoutd: a ZeroMQ fanout broker.

One collector (a bound SUB that producers connect PUB sockets to) in; a bound
PUB (every subscriber gets every message) and a bound, non-blocking PUSH
(load-balanced over pullers, drops counted) out.  Importing this package
starts nothing: the daemon lives behind :func:`fanoutd.cli.main`.
"""

__version__ = "0.1.0"
