"""What every module of the benchmark shares: where things are, which CPU runs what, the
candidates' names, the two kinds of failure and the log line. No behaviour lives here."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
# The entry point: the idle-connection holder re-runs it as `bench.py --hold-helper`.
ENTRY = ROOT / "scripts" / "bench.py"
SHUNT_BIN = Path(os.environ.get("SHUNT_BIN", ROOT / "target" / "release" / "shunt"))
# A second build for A/B runs (candidate "shunt-alt"), e.g. a copy of target/release/shunt built
# from another commit: both builds measured in one interleaved run.
SHUNT_ALT_BIN = os.environ.get("SHUNT_ALT_BIN")
NGINX = "/usr/sbin/nginx"
HAPROXY = "/usr/sbin/haproxy"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
# The one nginx HTTP backend conf, shared with scripts/lib.sh (profile.sh, soak.sh).
NGINX_BACKEND_TEMPLATE = ROOT / "scripts" / "nginx-backend.conf.in"

HOST = "127.0.0.1"
BALANCER_CPUS = "0"  # the balancer under test
LOAD_CPUS = "1"  # wrk, iperf3, backends, helper clients
SCALING_CPUS = "0,1"  # 2 workers: the balancer may use both cores (load stays on CPU 1)

CANDIDATES = ["direct", "shunt", "haproxy", "haproxy-splice-auto", "haproxy-splice", "nginx"]
# Variants for A/B measurements, run only when --only names them: shunt with `defer_accept` on
# its web and TLS binds, and the build SHUNT_ALT_BIN names.
OPTIONAL_CANDIDATES = ["shunt-defer-accept", "shunt-alt"]
PEERS = ["haproxy", "haproxy-splice-auto", "haproxy-splice", "nginx"]  # ratio columns
SCALING_CANDIDATES = ["shunt", "haproxy", "nginx"]
TLS_CANDIDATES = ["shunt", "haproxy", "nginx"]  # the TLS figures' candidates
BIG_SIZE = 1 << 20  # /1m on the backends
SMALL_BODY = "ok\n"  # / on the backends
WRK_TIMEOUT = "5s"  # a response slower than this counts as a wrk timeout error


class BenchError(Exception):
    """Stops the whole run: the message tells the user what failed and where to look."""


class RunError(Exception):
    """One measurement failed: recorded in the results (and shown in the tables), the run goes on."""


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)
