"""fobench: the benchmark harness of fanoutd (run it with ``python bench/run.py``).

Modules, one job each:

* :mod:`.build`   compiles the C load generators and the C baseline broker;
* :mod:`.procs`   child processes, free ports, readiness polling;
* :mod:`.servers` starts and stops each system under test;
* :mod:`.clients` the load's two ends, the same C programs for every system;
* :mod:`.subscriptions` asks Redis and NATS how many subscriptions they hold;
* :mod:`.trial`   one throughput or latency run of one system;
* :mod:`.matrix`  the alternating, repeated matrix and its medians;
* :mod:`.extra`   burst, idle-CPU and stalled-subscriber modes;
* :mod:`.fleet`   one run with a fleet of msink subscribers (cost, scale, latency);
* :mod:`.fleetmodes` those modes' runs and medians; :mod:`.fleetreport` their tables;
* :mod:`.hops`    latency through a chain of federated brokers;
* :mod:`.brokerstats` what each broker says it cut, and its peak memory (the slow-reader cells);
* :mod:`.overloadreport` those cells' tables: each run, and medians over repeats;
* :mod:`.report`  the Markdown table and the plot.
"""
