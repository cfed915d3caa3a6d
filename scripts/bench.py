#!/usr/bin/env python3
"""Benchmark shunt against HAProxy, nginx stream and a direct connection to the backends.

    scripts/bench.py [--quick] [--rounds N] [--only shunt,haproxy,...] [--scaling | --all] [--out DIR]

Normally run through scripts/bench.sh, which installs the tools and builds target/release/shunt
first. Python standard library only.

Default run ("figures"): for each figure, for each round, every candidate in turn (A B C A B C …),
so slow drifts of the machine hit every candidate alike; each cell is the median over the rounds.
  keepalive  wrk -t1 -c50 keep-alive, GET / (3-byte body): req/s, p99, balancer CPU-s per 100k req
  close      the same with `Connection: close`: new connections/s, p99, CPU-s per 100k connections
  download   wrk -t1 -c8, GET /1m (1 MiB): MiB/s, balancer CPU-s per GB
  iperf1/4   iperf3 -P 1 and -P 4: Gbit/s, balancer CPU-s per GB; as context, how busy the load CPU
             was and (1 stream) how often the balancer slept and was woken per GB
  idle       N idle proxied connections: balancer RSS (KiB) and descriptors per connection
  syscalls   strace -c during a short keep-alive run (not part of the timed figures)
The balancer runs on CPU 0; wrk, iperf3, the backends and helper clients on CPU 1.

--scaling: workers 2 / nbthread 2 / worker_processes 2, balancer on both CPUs; 1k, 4k and 8k idle
connections held through it while wrk -c50 runs: RSS, descriptors, CPU and latency per level, and a
plot (scaling.png, drawn by gnuplot; none without it). --all runs the figures and then the
scaling part.

Outputs in --out (default target/bench/): results.json (every raw sample) and results.md for the
figures; scaling.json, scaling.md and the plot for the scaling part. The markdown is printed at
the end.

--dry-run runs no load: it checks the selected candidates' configs with their own tools, the wrk,
iperf3 and strace parsers on known outputs and the reports on synthetic results, in a few seconds
(`make test` runs it: tests/bench_script.rs). The code is the package scripts/bench/.
"""

import sys

# scripts/ is on sys.path (it holds this file), so `bench` is the package scripts/bench/: Python
# finds a package directory before a module of the same name.
from bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], __doc__))
