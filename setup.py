"""Build the native forwarding loop; everything else lives in pyproject.toml.

The extension does not link against libzmq: it resolves the handful of libzmq
functions it needs at run time through pyzmq's own extension module, so the
sockets pyzmq creates and the loop that drives them always share one libzmq.
Their declarations live in fanoutd/dataplane/zmq_abi.h (a dependency, so editing it
rebuilds the loop).
"""
import runpy

from setuptools import Extension, setup

# The loop's array bounds live in one pure-Python module, so parsing a configuration needs no compiled code.
LIMITS = runpy.run_path("fanoutd/dataplane/limits.py")

setup(
    ext_modules=[
        Extension(
            "fanoutd.dataplane._forward",
            sources=["fanoutd/dataplane/_forward.c"],
            depends=["fanoutd/dataplane/zmq_abi.h", "fanoutd/dataplane/_streams.h", "fanoutd/dataplane/limits.py"],
            define_macros=[(name, str(LIMITS[name])) for name in ("FRAMES_CAP", "TOPICS_CAP")],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            libraries=["dl"],
        )
    ]
)
