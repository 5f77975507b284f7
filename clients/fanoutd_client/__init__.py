"""Thin clients for fanoutd, the ZeroMQ fanout broker (and the ``fanout`` tool).

``Producer`` sends to the collector, ``Subscriber`` reads the PUB output,
``Puller`` reads the PUSH output.  Each is one socket with protective
defaults; see :mod:`fanoutd_client._base` for what they are and why.
These are blocking clients; under gevent, pass ``context=zmq.green.Context()``.
For asyncio, the same three with coroutines are in :mod:`fanoutd_client.aio`
(imported only when asked for: nothing here imports gevent or asyncio).
"""

from ._base import (DEFAULT_COLLECTOR, DEFAULT_PUBLISH, DEFAULT_PUSH, DEFAULT_STAMPED, ClientOptions,
                    load_curve_keys, validate_endpoint)
from ._producing import DEFAULT_MAX_MESSAGE_SIZE, MAX_MESSAGE_SIZE_PROPERTY, MessageTooLarge
from ._stamps import NotStamped, Stamp
from .consumers import Puller, Subscriber, split_message
from .producer import Producer

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_COLLECTOR",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_PUBLISH",
    "DEFAULT_PUSH",
    "DEFAULT_STAMPED",
    "MAX_MESSAGE_SIZE_PROPERTY",
    "ClientOptions",
    "MessageTooLarge",
    "NotStamped",
    "Producer",
    "Puller",
    "Stamp",
    "Subscriber",
    "load_curve_keys",
    "split_message",
    "validate_endpoint",
]
