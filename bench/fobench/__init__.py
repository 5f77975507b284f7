"""fobench: the benchmark harness of fanoutd (run it with ``python bench/run.py``).

Modules, one job each:

* :mod:`.build`   compiles the C load generators and the C baseline broker;
* :mod:`.procs`   child processes, free ports, readiness polling;
* :mod:`.servers` starts and stops each system under test;
* :mod:`.rawproto` Redis / NATS wire framing and the raw-socket publisher;
* :mod:`.trial`   one throughput or latency run of one system;
* :mod:`.matrix`  the alternating, repeated matrix and its medians;
* :mod:`.extra`   burst, idle-CPU and stalled-subscriber modes;
* :mod:`.report`  the Markdown table and the plot.
"""
