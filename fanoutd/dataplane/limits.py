"""Bounds of the forwarding loop's fixed arrays: the configuration validates against them, the C is built with them.

setup.py passes these to the compiler (``-DFRAMES_CAP=...``), so the value
lives here once and parsing a configuration needs no compiled code.
"""

FRAMES_CAP = 256  #: most frames a message may have (``max_frames``' ceiling)
TOPICS_CAP = 64   #: most topics counted one by one (``metrics_topics``' ceiling)
