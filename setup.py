"""Build the native forwarding loop; everything else lives in pyproject.toml.

The extension does not link against libzmq: it resolves the handful of libzmq
functions it needs at run time through pyzmq's own extension module, so the
sockets pyzmq creates and the loop that drives them always share one libzmq.
Their declarations live in fanoutd/zmq_abi.h (a dependency, so editing it
rebuilds the loop).
"""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "fanoutd._forward",
            sources=["fanoutd/_forward.c"],
            depends=["fanoutd/zmq_abi.h", "fanoutd/_streams.h"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            libraries=["dl"],
        )
    ]
)
