"""The data path: the native forwarding loop, the sockets it drives, and the only door to them.

Only this package imports the compiled extension (``_forward``). The rest
of the daemon uses :mod:`.engine` (the data sockets and the loop in their
thread), :mod:`.kernel` (the kernel's view of a connection) and
:mod:`.limits` (array bounds the configuration validates against, which
need no compiled code). Importing the package itself loads nothing.
"""
