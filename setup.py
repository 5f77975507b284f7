"""Build the native forwarding loop; everything else lives in pyproject.toml.

The extension does not link against libzmq: it resolves the handful of libzmq
functions it needs at run time through pyzmq's own extension module, so the
sockets pyzmq creates and the loop that drives them always share one libzmq.
Their declarations live in fanoutd/dataplane/zmq_abi.h.

The loop is one translation unit: _forward.c includes the other .c and .h
files of fanoutd/dataplane (one per job), so they are its dependencies, not
sources, and editing any of them rebuilds it.
"""
import runpy
from glob import glob

from setuptools import Extension, setup

# The loop's array bounds live in one pure-Python module, so parsing a configuration needs no compiled code.
LIMITS = runpy.run_path("fanoutd/dataplane/limits.py")

setup(
    ext_modules=[
        Extension(
            "fanoutd.dataplane._forward",
            sources=["fanoutd/dataplane/_forward.c"],
            depends=[*sorted(set(glob("fanoutd/dataplane/*.[ch]")) - {"fanoutd/dataplane/_forward.c"}),
                     "fanoutd/dataplane/limits.py"],
            define_macros=[(name, str(LIMITS[name])) for name in ("FRAMES_CAP", "TOPICS_CAP")],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            libraries=["dl"],
        )
    ]
)
