"""Build the native forwarding loop; everything else lives in pyproject.toml.

The extension does not link against libzmq: it resolves the handful of libzmq
functions it needs at run time from the very library pyzmq has loaded, so the
sockets pyzmq creates and the loop that drives them always share one libzmq.
"""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "fanoutd._forward",
            sources=["fanoutd/_forward.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            libraries=["dl"],
        )
    ]
)
