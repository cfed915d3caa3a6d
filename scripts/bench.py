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
plot (scaling.png with gnuplot, else scaling.svg). --all runs the figures and then the scaling part.

Outputs in --out (default target/bench/): results.json (every raw sample) and results.md for the
figures; scaling.json, scaling.md and the plot for the scaling part. The markdown is printed at
the end.
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import select
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHUNT_BIN = Path(os.environ.get("SHUNT_BIN", ROOT / "target" / "release" / "shunt"))
NGINX = "/usr/sbin/nginx"
HAPROXY = "/usr/sbin/haproxy"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"

HOST = "127.0.0.1"
BALANCER_CPUS = "0"  # the balancer under test
LOAD_CPUS = "1"  # wrk, iperf3, backends, helper clients
SCALING_CPUS = "0,1"  # 2 workers: the balancer may use both cores (load stays on CPU 1)
CLK_TCK = os.sysconf("SC_CLK_TCK")

CANDIDATES = ["direct", "shunt", "haproxy", "haproxy-splice-auto", "haproxy-splice", "nginx"]
PEERS = ["haproxy", "haproxy-splice-auto", "haproxy-splice", "nginx"]  # ratio columns
SCALING_CANDIDATES = ["shunt", "haproxy", "nginx"]
BIG_SIZE = 1 << 20  # /1m on the backends
SMALL_BODY = "ok\n"  # / on the backends
WRK_TIMEOUT = "5s"  # a response slower than this counts as a wrk timeout error


class BenchError(Exception):
    """Stops the whole run: the message tells the user what failed and where to look."""


class RunError(Exception):
    """One measurement failed: recorded in the results (and shown in the tables), the run goes on."""


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# Settings


class Settings:
    """Durations and sizes for a full run or a --quick one."""

    def __init__(self, args):
        self.quick = args.quick
        self.rounds = args.rounds or (1 if args.quick else 3)
        self.duration = args.duration or (3 if args.quick else 10)  # wrk and iperf3, seconds
        self.idle_conns = args.idle_conns or (2000 if args.quick else 5000)
        self.strace_duration = 2 if args.quick else 5
        self.warmup = not args.quick
        self.scaling_levels = [1000, 4000, 8000]
        self.scaling_duration = args.duration or (3 if args.quick else 10)
        self.figures = not args.scaling or args.all
        self.scaling = args.scaling or args.all
        only = [c.strip() for c in args.only.split(",")] if args.only else None
        if only:
            unknown = [c for c in only if c not in CANDIDATES]
            if unknown:
                raise BenchError(f"--only: unknown candidate(s) {', '.join(unknown)}; known: {', '.join(CANDIDATES)}")
        self.candidates = [c for c in CANDIDATES if not only or c in only]
        known = ["keepalive", "close", "download", "iperf1", "iperf4", "idle", "syscalls"]
        self.only_figures = [f.strip() for f in args.figures.split(",")] if args.figures else known
        unknown = [f for f in self.only_figures if f not in known]
        if unknown:
            raise BenchError(f"--figures: unknown figure(s) {', '.join(unknown)}; known: {', '.join(known)}")
        self.scaling_candidates = [c for c in SCALING_CANDIDATES if not only or c in only]

    def as_dict(self):
        return {k: v for k, v in vars(self).items()}


# ------------------------------------------------------------------------------------------------
# Processes we start: each in its own session (a terminal Ctrl-C reaches only this script, which
# then stops them in order), stopped by PID, descendants (nginx workers) by PID too.

_children = []


def _proc_starttime(pid):
    """Field 22 of /proc/PID/stat: with the PID, it names one process (PIDs get reused)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()[19]


def children_of(pid):
    kids = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                kids += [int(k) for k in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return kids


def process_tree(pid):
    """PID and all its descendants (nginx master + workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children_of(p)
    return out


class Child:
    """A long-running helper process (balancer, backend, holder, strace) that this script owns."""

    def __init__(self, name, argv, log_path, stdin=subprocess.DEVNULL, stdout=None):
        self.name = name
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            argv, stdin=stdin, stdout=stdout or self._log, stderr=self._log, start_new_session=True
        )
        self.pid = self.popen.pid
        _children.append(self)

    def alive(self):
        return self.popen.poll() is None

    def log_tail(self, lines=25):
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace=3.0):
        if self in _children:
            _children.remove(self)
        tree = [(p, _proc_starttime(p)) for p in process_tree(self.pid)] if self.alive() else []
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGTERM)
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(5)
            except ProcessLookupError:
                pass
        # Descendants normally leave with their parent; any that did not are killed by PID,
        # after checking the PID still names the same process.
        for pid, start in tree[1:]:
            if start is not None and _proc_starttime(pid) == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream:
                stream.close()
        self._log.close()


def stop_all():
    for child in reversed(list(_children)):
        try:
            child.stop(grace=2.0)
        except Exception as e:  # cleanup goes on whatever one child does
            log(f"could not stop {child.name} (pid {child.pid}): {e}")


def run_cmd(argv, timeout, **kw):
    """subprocess.run with a timeout; a hung tool becomes a RunError, not a hung benchmark."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise RunError(f"{argv[0]} timed out after {timeout}s: {' '.join(map(str, argv))}")


# ------------------------------------------------------------------------------------------------
# /proc accounting


def _stat(pid):
    data = Path(f"/proc/{pid}/stat").read_text()
    return data[data.rindex(")") + 2 :].split()


def cpu_seconds(pids):
    """utime + stime of each process (all its threads), summed."""
    total = 0
    for p in pids:
        try:
            f = _stat(p)
        except OSError:
            continue
        total += int(f[11]) + int(f[12])
    return total / CLK_TCK


def cpu_ticks(cpus):
    """(total, idle + iowait) jiffies of the listed CPUs ("1" or "0,1"), from /proc/stat."""
    wanted = {f"cpu{c}" for c in cpus.split(",")}
    total = idle = 0
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] in wanted:
                v = [int(x) for x in fields[1:]]
                total += sum(v)
                idle += v[3] + v[4]
    return total, idle


def wakeups(pids):
    """Voluntary context switches (sleeps in epoll_wait, mostly) of every thread of these processes."""
    total = 0
    for p in pids:
        for status in Path(f"/proc/{p}/task").glob("*/status"):
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
            except OSError:
                continue
    return total


def busy_pct(before, after):
    total, idle = after[0] - before[0], after[1] - before[1]
    return None if total <= 0 else 100.0 * (total - idle) / total


def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def fd_count(pids):
    total = 0
    for p in pids:
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return total


def tcp_table():
    """(local port, remote port, state) of every IPv4 TCP socket; state 01 = ESTABLISHED, 0A = LISTEN."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            yield int(parts[1].split(":")[1], 16), int(parts[2].split(":")[1], 16), parts[3]


def is_listening(port):
    return any(lp == port and st == "0A" for lp, _, st in tcp_table())


def established_to(ports):
    """Established connections whose remote end is one of `ports`: a balancer's server sides."""
    ports = set(ports)
    return sum(1 for _, rp, st in tcp_table() if st == "01" and rp in ports)


_given_ports = set()


def free_port():
    """A port the kernel says is free now (bind to 0); never the same one twice in this run."""
    while True:
        s = socket.socket()
        s.bind((HOST, 0))
        port = s.getsockname()[1]
        s.close()
        if port not in _given_ports:
            _given_ports.add(port)
            return port


def accepts(port, timeout=0.5):
    try:
        socket.create_connection((HOST, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def wait_until(cond, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def http_get(port, path="/", timeout=3.0):
    """One GET with Connection: close; the status line. Used to warm a balancer up."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0].decode(errors="replace")


def warm_up(port, count=20):
    for _ in range(count):
        status = http_get(port)
        if " 200 " not in status + " ":
            raise RunError(f"warm-up request answered {status!r}")


# ------------------------------------------------------------------------------------------------
# Backends: two nginx HTTP servers and one iperf3 server, all on the load CPU.


def nginx_backend_conf(d, port, name):
    return f"""# shunt bench backend {name} (generated by scripts/bench.py)
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    # Idle connections of the idle and scaling tests must stay open while they are measured.
    keepalive_requests 100000000;
    keepalive_timeout 10m;
    client_header_timeout 10m;
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{ return 200 "{SMALL_BODY.strip()}\\n"; }}
        location = /1m {{ alias {d}/1m.bin; }}
    }}
}}
"""


class Backends:
    def __init__(self, tmp):
        self.tmp = tmp
        self.web_ports = []
        self.iperf_port = None
        self.children = []

    def start(self):
        for name in ("web-a", "web-b"):
            self.web_ports.append(self._start_nginx(name))
        self.iperf_port = self._start_iperf()
        log(f"backends: nginx on {', '.join(map(str, self.web_ports))}, iperf3 -s on {self.iperf_port} (CPU {LOAD_CPUS})")

    def _start_nginx(self, name):
        d = self.tmp / name
        d.mkdir()
        (d / "1m.bin").write_bytes(os.urandom(BIG_SIZE))
        port = free_port()
        conf = d / "nginx.conf"
        conf.write_text(nginx_backend_conf(d, port, name))
        argv = ["taskset", "-c", LOAD_CPUS, NGINX, "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]
        child = Child(f"backend {name}", argv, d / "stderr.log")
        self.children.append(child)
        if not wait_until(lambda: not child.alive() or accepts(port), 10) or not child.alive():
            raise BenchError(
                f"backend nginx {name} did not start on {HOST}:{port}\n{child.log_tail()}\n"
                f"{(d / 'error.log').read_text(errors='replace') if (d / 'error.log').exists() else ''}"
            )
        status = http_get(port, "/1m")
        if " 200 " not in status:
            raise BenchError(f"backend nginx {name}: GET /1m answered {status!r}; see {d}/error.log")
        return port

    def _start_iperf(self):
        d = self.tmp / "iperf3"
        d.mkdir()
        port = free_port()
        argv = ["taskset", "-c", LOAD_CPUS, "iperf3", "-s", "-B", HOST, "-p", str(port)]
        child = Child("backend iperf3", argv, d / "iperf3.log")
        self.children.append(child)
        # Only look for the listening socket: a probe connection would count as a failed test.
        if not wait_until(lambda: not child.alive() or is_listening(port), 10) or not child.alive():
            raise BenchError(f"iperf3 -s did not start on {HOST}:{port}\n{child.log_tail()}")
        return port

    def check(self):
        for c in self.children:
            if not c.alive():
                raise BenchError(f"{c.name} exited (code {c.popen.returncode}); log:\n{c.log_tail()}")


# ------------------------------------------------------------------------------------------------
# Candidates. A Candidate writes its config and starts itself; the result is an Instance that
# knows where to send load and which processes to account for.


class Instance:
    def __init__(self, name, web_port, iperf_port, child=None, conf=None):
        self.name = name
        self.web_port = web_port
        self.iperf_port = iperf_port
        self.child = child
        self.conf = conf

    def pids(self):
        """The balancer's processes (master + workers for nginx); none for direct."""
        return process_tree(self.child.pid) if self.child and self.child.alive() else []

    def alive(self):
        return self.child is None or self.child.alive()

    def death_note(self):
        return f"{self.name} exited (code {self.child.popen.returncode}); log tail:\n{self.child.log_tail()}"

    def stop(self):
        if self.child:
            self.child.stop()


class Candidate:
    proxied = True
    conf_name = "bench.conf"
    _launches = 0

    def __init__(self, name):
        self.name = name

    def config(self, d, web_port, iperf_port, backends, workers):
        raise NotImplementedError

    def check_argv(self, conf, d):
        raise NotImplementedError

    def run_argv(self, conf, d):
        raise NotImplementedError

    def launch(self, backends, tmp, workers=1, cpus=BALANCER_CPUS):
        Candidate._launches += 1
        d = tmp / f"{self.name}-{Candidate._launches}"
        d.mkdir()
        web_port, iperf_port = free_port(), free_port()
        conf = d / self.conf_name
        conf.write_text(self.config(d, web_port, iperf_port, backends, workers))
        try:
            r = run_cmd(self.check_argv(conf, d), 20)
        except RunError as e:
            raise BenchError(f"{self.name}: configuration check hung: {e}")
        if r.returncode != 0:
            raise BenchError(f"{self.name}: configuration check failed ({conf}):\n{r.stdout}{r.stderr}")
        child = Child(self.name, ["taskset", "-c", cpus] + self.run_argv(conf, d), d / "stderr.log")
        inst = Instance(self.name, web_port, iperf_port, child, conf)
        ready = wait_until(
            lambda: not child.alive() or (accepts(web_port) and is_listening(iperf_port)), 10, step=0.1
        )
        if not ready or not child.alive():
            state = f"exited with code {child.popen.returncode}" if not child.alive() else "not accepting after 10 s"
            tail = child.log_tail()
            child.stop()
            raise BenchError(
                f"{self.name} did not start ({state}) on {HOST}:{web_port} / {HOST}:{iperf_port}; "
                f"config {conf}; log tail:\n{tail}"
            )
        return inst


class Direct(Candidate):
    """No balancer: wrk straight to one nginx backend, iperf3 straight to the iperf3 server."""

    proxied = False

    def launch(self, backends, tmp, workers=1, cpus=BALANCER_CPUS):
        return Instance(self.name, backends.web_ports[0], backends.iperf_port)


class Shunt(Candidate):
    def config(self, d, web_port, iperf_port, backends, workers):
        a, b = backends.web_ports
        return f"""# shunt bench (generated by scripts/bench.py)
workers        {workers}
log            warn    # no line per session: HAProxy and nginx stream log nothing here either
drain_timeout  1s      # stopped by signal at the end of a measurement; nothing to drain

service web
  bind         {HOST}:{web_port}
  balance      roundrobin
  server       web-a {HOST}:{a}
  server       web-b {HOST}:{b}
  timeout      connect 5s
  timeout      idle 10m

# iperf3's control and data connections must reach the same server: a service with one server.
service iperf
  bind         {HOST}:{iperf_port}
  server       iperf {HOST}:{backends.iperf_port}
  timeout      connect 5s
  timeout      idle 10m
"""

    def check_argv(self, conf, d):
        return [str(SHUNT_BIN), "--check", "-c", str(conf)]

    def run_argv(self, conf, d):
        return [str(SHUNT_BIN), "-c", str(conf)]


class HAProxy(Candidate):
    """mode tcp; splice: None (off, HAProxy's default), "auto" or "forced"."""

    SPLICE = {
        None: "# no splice: HAProxy's default",
        "auto": "option splice-auto",
        "forced": "option splice-request\n    option splice-response",
    }

    def __init__(self, name, splice):
        super().__init__(name)
        self.splice = splice

    def config(self, d, web_port, iperf_port, backends, workers):
        a, b = backends.web_ports
        return f"""# HAProxy for the shunt bench (generated by scripts/bench.py)
global
    nbthread {workers}
    # HAProxy reserves 2 descriptors per connection plus 2 per pipe up front and refuses to start
    # if `ulimit -n` (20000 here, not raisable) cannot carry them: maxconn 20000 needs 40015.
    # 9000 connections (+ 500 splice pipes) fit and still cover the 8k scaling level.
    maxconn 9000
    maxpipes 500
    # no `log` line: nothing is logged, like shunt at `log warn` and nginx stream without access_log

defaults
    mode tcp
    maxconn 9000
    balance roundrobin
    timeout connect 5s
    timeout client 10m
    timeout server 10m
    {self.SPLICE[self.splice]}

frontend web
    bind {HOST}:{web_port}
    default_backend web

backend web
    server web-a {HOST}:{a}
    server web-b {HOST}:{b}

frontend iperf
    bind {HOST}:{iperf_port}
    default_backend iperf

backend iperf
    server iperf {HOST}:{backends.iperf_port}
"""

    def check_argv(self, conf, d):
        return [HAPROXY, "-c", "-q", "-f", str(conf)]

    def run_argv(self, conf, d):
        return [HAPROXY, "-db", "-f", str(conf)]


class NginxStream(Candidate):
    conf_name = "nginx.conf"

    def config(self, d, web_port, iperf_port, backends, workers):
        a, b = backends.web_ports
        # With several workers, `reuseport` gives each its own listening socket, as shunt's
        # SO_REUSEPORT listeners per worker do.
        reuse = " reuseport" if workers > 1 else ""
        return f"""# nginx stream for the shunt bench (generated by scripts/bench.py)
load_module {STREAM_MODULE};
daemon off;
worker_processes {workers};
worker_rlimit_nofile 20000;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 20000; }}
stream {{
    proxy_connect_timeout 5s;
    proxy_timeout 10m;
    upstream web {{
        server {HOST}:{a};
        server {HOST}:{b};
    }}
    upstream iperf {{
        server {HOST}:{backends.iperf_port};
    }}
    server {{
        listen {HOST}:{web_port} backlog=4096{reuse};
        proxy_pass web;
    }}
    server {{
        listen {HOST}:{iperf_port} backlog=4096{reuse};
        proxy_pass iperf;
    }}
}}
"""

    def check_argv(self, conf, d):
        return [NGINX, "-t", "-q", "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]

    def run_argv(self, conf, d):
        return [NGINX, "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]


def make_candidate(name):
    return {
        "direct": lambda: Direct(name),
        "shunt": lambda: Shunt(name),
        "haproxy": lambda: HAProxy(name, None),
        "haproxy-splice-auto": lambda: HAProxy(name, "auto"),
        "haproxy-splice": lambda: HAProxy(name, "forced"),
        "nginx": lambda: NginxStream(name),
    }[name]()


# ------------------------------------------------------------------------------------------------
# Load tools

_TIME_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_SIZE = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_time_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise RunError(f"wrk: cannot parse time {text!r}")
    return float(m.group(1)) * _TIME_MS[m.group(2)]


def parse_size(text):
    """wrk prints sizes in binary units: 1.00MB is 1 MiB."""
    m = re.fullmatch(r"([\d.]+)([KMGT]?)B", text)
    if not m:
        raise RunError(f"wrk: cannot parse size {text!r}")
    return float(m.group(1)) * _SIZE[m.group(2)]


def parse_wrk(out):
    def find(pattern):
        m = re.search(pattern, out, re.M)
        if not m:
            raise RunError(f"wrk output lacks {pattern!r}:\n{out}")
        return m

    m = find(r"(\d+) requests in (\S+), (\S+) read")
    res = {
        "requests": int(m.group(1)),
        "duration_s": parse_time_ms(m.group(2)) / 1e3,
        "bytes_read": parse_size(m.group(3)),
        "rps": float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        "transfer_per_s": parse_size(find(r"^Transfer/sec:\s+(\S+)").group(1)),
        "p50_ms": parse_time_ms(find(r"^\s+50%\s+(\S+)").group(1)),
        "p99_ms": parse_time_ms(find(r"^\s+99%\s+(\S+)").group(1)),
    }
    errors = {}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        for kind, n in zip(("connect", "read", "write", "timeout"), m.groups()):
            if int(n):
                errors[kind] = int(n)
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m and int(m.group(1)):
        errors["non2xx"] = int(m.group(1))
    res["errors"] = errors
    if res["requests"] == 0:
        raise RunError(f"wrk completed no request:\n{out}")
    return res


def wrk(port, path, conns, duration, close=False, during=None):
    """wrk -t1 on the load CPU; `during` is called once halfway through (to sample the balancer)."""
    argv = ["taskset", "-c", LOAD_CPUS, "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", WRK_TIMEOUT]
    if close:
        argv += ["-H", "Connection: close"]
    url = f"http://{HOST}:{port}{path}"
    argv.append(url)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        if during:
            time.sleep(duration / 2)
            during()
        out, _ = proc.communicate(timeout=duration + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RunError(f"wrk did not finish within {duration + 30}s: {url}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RunError(f"wrk exited {proc.returncode}:\n{out}")
    res = parse_wrk(out)
    # What wrk sends per request (its default request), to count bytes moved in both directions.
    req = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    res["bytes_sent"] = res["requests"] * len(req)
    res["raw"] = out
    return res


def iperf3(port, streams, duration):
    argv = ["taskset", "-c", LOAD_CPUS, "iperf3", "-c", HOST, "-p", str(port), "-t", str(duration),
            "-P", str(streams), "-J", "--connect-timeout", "5000"]
    for attempt in range(3):
        r = run_cmd(argv, duration + 30)
        try:
            data = json.loads(r.stdout)
        except ValueError:
            raise RunError(f"iperf3 exited {r.returncode} without JSON:\n{r.stdout}{r.stderr}")
        err = data.get("error")
        # The server is busy for a moment after the previous test's teardown: retry.
        if err and "busy" in err and attempt < 2:
            time.sleep(1)
            continue
        if err or r.returncode != 0:
            raise RunError(f"iperf3: {err or r.stderr.strip() or 'exit ' + str(r.returncode)}")
        end = data["end"]
        return {
            "bits_per_second": end["sum_received"]["bits_per_second"],
            "bytes": end["sum_received"]["bytes"],
            "seconds": end["sum_received"]["seconds"],
            "retransmits": end.get("sum_sent", {}).get("retransmits"),
        }
    raise AssertionError("unreachable")


class Holder:
    """N idle connections through a balancer, held by a helper process on the load CPU."""

    def __init__(self, port, n, log_path):
        argv = ["taskset", "-c", LOAD_CPUS, sys.executable, str(Path(__file__).resolve()), "--hold-helper", HOST, str(port), str(n)]
        self.child = Child("holder", argv, log_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def wait_connected(self, timeout):
        """The helper's report once every connect finished: {"connected": k, "failed": f}."""
        out = self.child.popen.stdout
        ready, _, _ = select.select([out], [], [], timeout)
        if not ready:
            raise RunError(f"the holder did not finish connecting within {timeout}s\n{self.child.log_tail()}")
        line = out.readline()
        if not line:
            raise RunError(f"the holder exited early\n{self.child.log_tail()}")
        return json.loads(line)

    def close(self):
        self.child.stop()


def hold_helper(host, port, n):
    """The helper's body: open n connections (at most 256 connects in flight, so no listen backlog
    overflows into SYN retries), report, then hold them, sending nothing, until stdin closes."""
    sel = selectors.DefaultSelector()
    held, pending, failed, started = [], 0, 0, 0
    last_progress = time.monotonic()
    while started < n or pending:
        while started < n and pending < 256:
            s = socket.socket()
            s.setblocking(False)
            started += 1
            err = s.connect_ex((host, port))
            if err == 0:
                held.append(s)
            elif err == 115:  # EINPROGRESS
                sel.register(s, selectors.EVENT_WRITE)
                pending += 1
            else:
                failed += 1
                s.close()
        events = sel.select(timeout=1.0)
        if events:
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > 20:
            break
        for key, _ in events:
            s = key.fileobj
            sel.unregister(s)
            pending -= 1
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                failed += 1
                s.close()
            else:
                held.append(s)
    print(json.dumps({"connected": len(held), "failed": failed + pending}), flush=True)
    sys.stdin.read()
    return 0


def hold_and_settle(inst, backends, n, base_fds, tmp, timeout=60):
    """Open n idle connections through `inst`; wait until the balancer holds 2 descriptors each
    (or its count stops rising for 2 s) and as many connections are established to the backends.
    Returns (holder, info); the caller closes the holder."""
    holder = Holder(inst.web_port, n, tmp / f"holder-{inst.name}-{n}.log")
    try:
        got = holder.wait_connected(timeout)
        target = base_fds + 2 * got["connected"]
        last, since = None, time.monotonic()
        deadline = time.monotonic() + timeout
        while True:
            fds = fd_count(inst.pids())
            est = established_to(backends.web_ports)
            if fds >= target and est >= got["connected"]:
                state = "complete"
                break
            if fds != last:
                last, since = fds, time.monotonic()
            elif time.monotonic() - since >= 2.0:
                state = "stalled"
                break
            if time.monotonic() > deadline:
                state = "timeout"
                break
            time.sleep(0.2)
        return holder, {"connected": got["connected"], "failed": got["failed"], "fds": fds,
                        "established_to_backends": est, "settled": state}
    except BaseException:
        holder.close()
        raise


# ------------------------------------------------------------------------------------------------
# Figures. Each runner takes (instance, settings, ...) and returns a sample dict:
#   {"metrics": {...}, "errors": {...}} -- errors non-empty when the run was not clean.


def cpu_block(inst, fn):
    """Run fn() and return (its result, the balancer's CPU seconds meanwhile or None for direct)."""
    pids = inst.pids()
    before = cpu_seconds(pids)
    res = fn()
    return res, (cpu_seconds(inst.pids() or pids) - before if pids else None)


def per_100k(cpu, requests):
    return None if cpu is None or not requests else cpu / (requests / 1e5)


def per_gb(cpu, nbytes):
    return None if cpu is None or not nbytes else cpu / (nbytes / 1e9)


def run_keepalive(inst, cfg, **_):
    w, cpu = cpu_block(inst, lambda: wrk(inst.web_port, "/", 50, cfg.duration))
    return {"metrics": {"rps": w["rps"], "p50_ms": w["p50_ms"], "p99_ms": w["p99_ms"], "requests": w["requests"],
                        "cpu_s": cpu, "cpu_per_100k": per_100k(cpu, w["requests"])},
            "errors": w["errors"], "raw": w["raw"]}


def run_close(inst, cfg, **_):
    w, cpu = cpu_block(inst, lambda: wrk(inst.web_port, "/", 50, cfg.duration, close=True))
    return {"metrics": {"rps": w["rps"], "p50_ms": w["p50_ms"], "p99_ms": w["p99_ms"], "requests": w["requests"],
                        "cpu_s": cpu, "cpu_per_100k": per_100k(cpu, w["requests"])},
            "errors": w["errors"], "raw": w["raw"]}


def run_download(inst, cfg, **_):
    w, cpu = cpu_block(inst, lambda: wrk(inst.web_port, "/1m", 8, cfg.duration))
    moved = w["bytes_read"] + w["bytes_sent"]
    return {"metrics": {"mib_s": w["bytes_read"] / (1 << 20) / w["duration_s"], "p99_ms": w["p99_ms"],
                        "requests": w["requests"], "bytes": moved, "cpu_s": cpu, "cpu_per_gb": per_gb(cpu, moved)},
            "errors": w["errors"], "raw": w["raw"]}


def run_iperf(streams):
    def run(inst, cfg, **_):
        # How busy the load CPU (iperf3 client and server) was: at 1 stream it, not the balancer,
        # is usually what saturates, and then Gbit/s says more about the load core than the balancer.
        # And how often the balancer went to sleep and was woken (each wake-up costs the waker too).
        load_before, pids = cpu_ticks(LOAD_CPUS), inst.pids()
        wake_before = wakeups(pids)
        r, cpu = cpu_block(inst, lambda: iperf3(inst.iperf_port, streams, cfg.duration))
        load_busy = busy_pct(load_before, cpu_ticks(LOAD_CPUS))
        woke = per_gb(wakeups(pids) - wake_before, r["bytes"]) if pids else None
        return {"metrics": {"gbit_s": r["bits_per_second"] / 1e9, "bytes": r["bytes"], "retransmits": r["retransmits"],
                            "cpu_s": cpu, "cpu_per_gb": per_gb(cpu, r["bytes"]), "load_cpu_busy_pct": load_busy,
                            "wakeups_per_gb": woke},
                "errors": {}}
    return run


def run_idle(inst, cfg, cand, backends, tmp, **_):
    """A fresh balancer (so earlier figures' pools and caches do not count), warmed by a few
    requests, then N idle connections: (RSS − baseline)/N and (descriptors − baseline)/N."""
    fresh = cand.launch(backends, tmp)
    holder = None
    try:
        warm_up(fresh.web_port)
        time.sleep(0.3)
        pids = fresh.pids()
        base_rss, base_fds = rss_kib(pids), fd_count(pids)
        n = cfg.idle_conns
        holder, info = hold_and_settle(fresh, backends, n, base_fds, tmp)
        time.sleep(0.5)  # let RSS settle after the last accepts
        pids = fresh.pids()
        rss, fds = rss_kib(pids), fd_count(pids)
        errors = {}
        if info["connected"] < n:
            errors["not_connected"] = n - info["connected"]
        if info["settled"] != "complete":
            errors["not_proxied"] = max(0, info["connected"] - info["established_to_backends"])
        k = max(info["connected"], 1)
        return {"metrics": {"kib_per_conn": (rss - base_rss) / k, "fds_per_conn": (fds - base_fds) / k,
                            "conns": info["connected"], "base_rss_kib": base_rss, "rss_kib": rss,
                            "base_fds": base_fds, "fds": fds},
                "errors": errors, "hold": info}
    finally:
        if holder:
            holder.close()
        fresh.stop()


class Figure:
    def __init__(self, key, title, runner, proxied_only=False):
        self.key, self.title, self.runner, self.proxied_only = key, title, runner, proxied_only


def figures(cfg):
    d = cfg.duration
    return [
        Figure("keepalive", f"wrk -t1 -c50 -d{d}s keep-alive, GET / (3-byte body)", run_keepalive),
        Figure("close", f"wrk -t1 -c50 -d{d}s -H 'Connection: close', GET /", run_close),
        Figure("download", f"wrk -t1 -c8 -d{d}s keep-alive, GET /1m (1 MiB)", run_download),
        Figure("iperf1", f"iperf3 -P 1 -t {d}", run_iperf(1)),
        Figure("iperf4", f"iperf3 -P 4 -t {d}", run_iperf(4)),
        Figure("idle", f"{cfg.idle_conns} idle proxied connections (fresh balancer)", run_idle, proxied_only=True),
    ]


class Metric:
    def __init__(self, figure, key, title, unit, higher_better):
        self.figure, self.key, self.title, self.unit, self.higher_better = figure, key, title, unit, higher_better


METRICS = [
    Metric("keepalive", "rps", "Keep-alive requests per second", "req/s", True),
    Metric("keepalive", "p99_ms", "Keep-alive p99 latency", "ms", False),
    Metric("close", "rps", "New connections per second (Connection: close)", "conn/s", True),
    Metric("close", "p99_ms", "Connection: close p99 latency", "ms", False),
    Metric("download", "mib_s", "1 MiB downloads", "MiB/s", True),
    Metric("iperf1", "gbit_s", "iperf3, 1 stream", "Gbit/s", True),
    Metric("iperf4", "gbit_s", "iperf3, 4 streams", "Gbit/s", True),
    Metric("idle", "kib_per_conn", "RSS per idle proxied connection", "KiB", False),
    Metric("idle", "fds_per_conn", "Descriptors per idle proxied connection", "fds", False),
    Metric("keepalive", "cpu_per_100k", "Balancer CPU per 100k requests (keep-alive)", "CPU-s", False),
    Metric("close", "cpu_per_100k", "Balancer CPU per 100k requests (Connection: close)", "CPU-s", False),
    Metric("download", "cpu_per_gb", "Balancer CPU per GB (1 MiB downloads)", "CPU-s", False),
    Metric("iperf1", "cpu_per_gb", "Balancer CPU per GB (iperf3, 1 stream)", "CPU-s", False),
    Metric("iperf4", "cpu_per_gb", "Balancer CPU per GB (iperf3, 4 streams)", "CPU-s", False),
    # Context, not a score: near 100% the load core, not the balancer, bounds the Gbit/s above.
    Metric("iperf1", "load_cpu_busy_pct", "Load CPU busy during iperf3, 1 stream", "%", None),
    Metric("iperf4", "load_cpu_busy_pct", "Load CPU busy during iperf3, 4 streams", "%", None),
    Metric("iperf1", "wakeups_per_gb", "Balancer sleeps/wake-ups per GB (iperf3, 1 stream)", "per GB", None),
]


def one_line(sample):
    m = sample.get("metrics", {})
    parts = []
    for key, unit in (("rps", "req/s"), ("mib_s", "MiB/s"), ("gbit_s", "Gbit/s"), ("p99_ms", "ms p99"),
                      ("kib_per_conn", "KiB/conn"), ("fds_per_conn", "fds/conn"), ("cpu_s", "CPU-s"),
                      ("load_cpu_busy_pct", "% load CPU")):
        if m.get(key) is not None:
            parts.append(f"{fmt(m[key])} {unit}")
    if sample.get("errors"):
        parts.append(f"ERRORS {sample['errors']}")
    if sample.get("error"):
        parts.append(f"FAILED: {sample['error'].splitlines()[0]}")
    return ", ".join(parts)


def run_figures(cfg, backends, tmp, results):
    cands = {name: make_candidate(name) for name in cfg.candidates}
    log(f"starting {', '.join(cands)} (balancers on CPU {BALANCER_CPUS})")
    insts = {name: c.launch(backends, tmp) for name, c in cands.items()}
    try:
        if cfg.warmup:
            for name, inst in insts.items():
                log(f"warm-up: {name}")
                try:
                    wrk(inst.web_port, "/", 50, 2)
                    wrk(inst.web_port, "/1m", 8, 2)
                except RunError as e:
                    log(f"warm-up of {name} failed: {e}")
        for fig in figures(cfg):
            if fig.key not in cfg.only_figures:
                continue
            for rnd in range(cfg.rounds):
                for name, cand in cands.items():
                    if fig.proxied_only and not cand.proxied:
                        continue
                    insts[name] = ensure_running(insts[name], cand, backends, tmp, results)
                    backends.check()
                    sample = {"figure": fig.key, "candidate": name, "round": rnd + 1}
                    try:
                        sample.update(fig.runner(insts[name], cfg, cand=cand, backends=backends, tmp=tmp))
                    except RunError as e:
                        sample["error"] = str(e)
                    if not insts[name].alive():
                        sample["error"] = (sample.get("error", "") + "\n" + insts[name].death_note()).strip()
                    results["samples"].append(sample)
                    log(f"{fig.key:9} round {rnd + 1}/{cfg.rounds} {name:20} {one_line(sample)}")
                    time.sleep(0.3)  # let the previous run's sockets close before the next one
        if "syscalls" in cfg.only_figures:
            results["syscalls"] = run_syscalls(cfg, insts, results, tmp)
    finally:
        for inst in insts.values():
            inst.stop()


def ensure_running(inst, cand, backends, tmp, results):
    """A candidate that died is noted and started again, so one crash costs one sample."""
    if inst.alive():
        return inst
    note = inst.death_note()
    log(f"WARNING: {note}\nrestarting {cand.name}")
    results["notes"].append(f"{cand.name} died during the run and was restarted: {note.splitlines()[0]}")
    inst.stop()
    return cand.launch(backends, tmp)


# ------------------------------------------------------------------------------------------------
# Syscalls per request: strace -c attached to every thread of the balancer during a short
# keep-alive run. strace slows the balancer a lot; this run counts calls, it is not timed.


def parse_strace(text):
    calls = {}
    errors = {}
    for line in text.splitlines():
        tok = line.split()
        if len(tok) < 5 or not re.fullmatch(r"[\d.]+", tok[0]) or tok[-1] == "total":
            continue
        # % time, seconds, usecs/call, calls, [errors], syscall
        calls[tok[-1]] = int(tok[3])
        if len(tok) == 6:
            errors[tok[-1]] = int(tok[4])
    return calls, errors


# Two loads: small keep-alive requests (where the event loop's overhead shows) and 1 MiB responses
# (where splice(2) or read/send per 16 KiB shows).
SYSCALL_LOADS = [
    # key, path, wrk connections, unit, the figure and metric that pick the HAProxy variant
    ("keepalive", "/", 10, "request", ("keepalive", "rps")),
    ("download", "/1m", 4, "1 MiB response", ("download", "mib_s")),
]


def strace_run(inst, cfg, tmp, load, path, conns):
    out = tmp / f"strace-{inst.name}-{load}.txt"
    # With -f, `-p PID` attaches every thread of that process ("attached with N threads").
    pids = inst.pids()
    threads = sum(len(os.listdir(f"/proc/{p}/task")) for p in pids)
    argv = ["taskset", "-c", LOAD_CPUS, "strace", "-c", "-f", "-o", str(out)]
    for p in pids:
        argv += ["-p", str(p)]
    st = Child(f"strace {inst.name}", argv, tmp / f"strace-{inst.name}-{load}.log")
    try:
        attached = wait_until(lambda: st.log_tail(1000).count(" attached") >= len(pids), 5)
        if not st.alive():
            raise RunError(f"strace exited: {st.log_tail()}")
        if not attached or "Operation not permitted" in st.log_tail(1000):
            raise RunError(f"strace could not attach to every process:\n{st.log_tail()}")
        w = wrk(inst.web_port, path, conns, cfg.strace_duration)
        time.sleep(0.2)
        os.kill(st.pid, signal.SIGINT)  # strace detaches and writes its summary
        try:
            st.popen.wait(15)
        except subprocess.TimeoutExpired:
            raise RunError(f"strace did not detach within 15 s:\n{st.log_tail()}")
    finally:
        st.stop()
    calls, errs = parse_strace(out.read_text() if out.exists() else "")
    if not calls:
        raise RunError(f"strace produced no summary; log:\n{st.log_tail()}")
    total = sum(calls.values())
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:5]
    return {"requests": w["requests"], "syscalls": total, "per_request": total / w["requests"],
            "top": [[name, n, n / w["requests"]] for name, n in top], "calls": calls, "errors": errs,
            "threads": threads, "wrk_errors": w["errors"]}


def best_haproxy(results, running, figure, key):
    """The HAProxy variant with the best median of (figure, key) in this run (the first one
    running when that figure was not measured)."""
    variants = [n for n in ("haproxy", "haproxy-splice-auto", "haproxy-splice") if n in running]
    best, best_v = (variants[0] if variants else None), -1.0
    for name in variants:
        vals = values(results["samples"], figure, name, key)
        if vals and statistics.median(vals) > best_v:
            best, best_v = name, statistics.median(vals)
    return best


def run_syscalls(cfg, insts, results, tmp):
    out = {}
    for load, path, conns, unit, (figure, key) in SYSCALL_LOADS:
        out[load] = {}
        names = [n for n in ("shunt", best_haproxy(results, insts, figure, key), "nginx") if n and n in insts]
        for name in names:
            log(f"syscalls: strace -c on {name} during wrk -c{conns} -d{cfg.strace_duration}s {path}")
            try:
                r = strace_run(insts[name], cfg, tmp, load, path, conns)
                out[load][name] = r
                log(f"syscalls: {name}: {r['per_request']:.2f} per {unit} "
                    f"({', '.join(f'{n} {per:.2f}' for n, _, per in r['top'][:3])})")
            except RunError as e:
                out[load][name] = {"error": str(e)}
                log(f"syscalls: {name} failed: {e}")
    return out


# ------------------------------------------------------------------------------------------------
# Scaling: 2 workers, 1k/4k/8k idle connections held while wrk -c50 runs.


def scaling_label(name):
    return {"shunt": "shunt (workers 2)", "haproxy": "haproxy (nbthread 2)", "nginx": "nginx (worker_processes 2)"}[name]


def scaling_sample(cand, n, cfg, backends, tmp):
    inst = cand.launch(backends, tmp, workers=2, cpus=SCALING_CPUS)
    holder = None
    try:
        warm_up(inst.web_port)
        time.sleep(0.3)
        pids = inst.pids()
        base_rss, base_fds = rss_kib(pids), fd_count(pids)
        holder, info = hold_and_settle(inst, backends, n, base_fds, tmp)
        time.sleep(0.5)
        pids = inst.pids()
        rss, fds = rss_kib(pids), fd_count(pids)
        loaded = {}

        def sample_under_load():
            loaded["rss"], loaded["fds"] = rss_kib(inst.pids()), fd_count(inst.pids())

        w, cpu = cpu_block(inst, lambda: wrk(inst.web_port, "/", 50, cfg.scaling_duration, during=sample_under_load))
        errors = dict(w["errors"])
        if info["connected"] < n:
            errors["not_connected"] = n - info["connected"]
        if info["settled"] != "complete":
            errors["not_proxied"] = max(0, info["connected"] - info["established_to_backends"])
        k = max(info["connected"], 1)
        return {"metrics": {"conns": info["connected"], "base_rss_kib": base_rss, "rss_kib": rss,
                            "rss_mib": rss / 1024, "kib_per_conn": (rss - base_rss) / k,
                            "rss_loaded_mib": loaded.get("rss", 0) / 1024, "fds": fds,
                            "fds_per_conn": (fds - base_fds) / k, "rps": w["rps"], "p50_ms": w["p50_ms"],
                            "p99_ms": w["p99_ms"], "requests": w["requests"], "cpu_s": cpu,
                            "cpu_per_100k": per_100k(cpu, w["requests"])},
                "errors": errors, "hold": info, "raw": w["raw"]}
    finally:
        if holder:
            holder.close()
        inst.stop()


def run_scaling(cfg, backends, tmp, results):
    cands = {name: make_candidate(name) for name in cfg.scaling_candidates}
    for n in cfg.scaling_levels:
        for rnd in range(cfg.rounds):
            for name, cand in cands.items():
                backends.check()
                sample = {"figure": "scaling", "candidate": name, "conns_target": n, "round": rnd + 1}
                try:
                    sample.update(scaling_sample(cand, n, cfg, backends, tmp))
                except RunError as e:
                    sample["error"] = str(e)
                results["samples"].append(sample)
                m = sample.get("metrics", {})
                log(f"scaling {n:5} round {rnd + 1}/{cfg.rounds} {name:8} "
                    + (f"RSS {fmt(m['rss_mib'])} MiB ({fmt(m['kib_per_conn'])} KiB/conn), "
                       f"{fmt(m['fds_per_conn'])} fds/conn, {fmt(m['rps'])} req/s, p99 {fmt(m['p99_ms'])} ms, "
                       f"{fmt(m['cpu_per_100k'])} CPU-s/100k" if m else "")
                    + (f" ERRORS {sample['errors']}" if sample.get("errors") else "")
                    + (f" FAILED: {sample['error']}" if sample.get("error") else ""))


# ------------------------------------------------------------------------------------------------
# Report


def fmt(x):
    if x is None:
        return "—"
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def fmt_ratio(r):
    return f"{r:.2f}×" if r >= 0.1 else f"{r:.2g}×"


def values(samples, figure, cand, key, conns=None):
    return [s["metrics"][key] for s in samples
            if s["figure"] == figure and s["candidate"] == cand and "metrics" in s
            and s["metrics"].get(key) is not None and (conns is None or s.get("conns_target") == conns)]


def med(vals):
    return statistics.median(vals) if vals else None


def error_notes(samples, figure, cand):
    notes = []
    for s in samples:
        if s["figure"] != figure or s["candidate"] != cand:
            continue
        if s.get("error"):
            notes.append(f"r{s['round']}: FAILED ({s['error'].splitlines()[0][:80]})")
        elif s.get("errors"):
            notes.append(f"r{s['round']}: " + ", ".join(f"{k} {v}" for k, v in s["errors"].items()))
    return "; ".join(notes)


def machine_line(meta):
    took = f" · took {meta['elapsed_s'] / 60:.1f} min" if meta.get("elapsed_s") else ""
    return (f"{meta['date']} · Linux {meta['kernel']} · {meta['cpu']} ({meta['cores']} cores, "
            f"ulimit -n {meta['nofile']}) · `{meta['command']}`{took}")


def metric_table(samples, metric, cands):
    better = {True: "higher is better", False: "lower is better", None: "context, not a score"}[metric.higher_better]
    lines = [f"### {metric.title} ({metric.unit}) — {better}", ""]
    peers = [p for p in PEERS if p in cands and values(samples, metric.figure, p, metric.key)]
    head = ["candidate", "median", "min–max", "runs"] + [f"vs {p}" for p in peers] + ["errors"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cands:
        runs = [s for s in samples if s["figure"] == metric.figure and s["candidate"] == c]
        if not runs:
            continue
        vals = values(samples, metric.figure, c, metric.key)
        m = med(vals)
        failed = any(s.get("error") for s in runs)
        row = [f"**{c}**" if c == "shunt" else c, fmt(m),
               f"{fmt(min(vals))}–{fmt(max(vals))}" if vals else "—",
               f"{len(vals)}/{len(runs)}" if vals or failed else "—"]
        for p in peers:
            pm = med(values(samples, metric.figure, p, metric.key))
            row.append("—" if p == c or m is None or not pm else fmt_ratio(m / pm))
        row.append(error_notes(samples, metric.figure, c) or "")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def figures_markdown(results):
    meta, cfg, samples = results["meta"], results["settings"], results["samples"]
    cands = cfg["candidates"]
    figs = {f.key: f.title for f in figures(SettingsView(cfg))}
    out = ["# shunt benchmark", "", machine_line(meta), ""]
    out += setup_lines(meta, cfg)
    if results.get("interrupted") or results.get("error"):
        out += [f"**Incomplete run**: {results.get('error') or 'interrupted'}", ""]
    out += ["## Summary (medians)", "",
            "Ratios in the detail tables are this row's median ÷ the peer's median; read them with "
            "the metric's direction (↑ higher is better, ↓ lower is better, · context, not a score).", ""]
    head = ["metric", ""] + cands
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in METRICS:
        row = [f"{m.title} ({m.unit})", {True: "↑", False: "↓", None: "·"}[m.higher_better]]
        for c in cands:
            v = med(values(samples, m.figure, c, m.key))
            flag = " ⚠" if error_notes(samples, m.figure, c) else ""
            row.append(fmt(v) + flag)
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    if any(error_notes(samples, m.figure, c) for m in METRICS for c in cands):
        out += ["⚠: at least one run of that figure had errors or failed; see the detail table.", ""]
    out += ["## Details", ""]
    for m in METRICS:
        if not any(s["figure"] == m.figure for s in samples):
            continue
        out += metric_table(samples, m, cands)
        out += ["", f"Load: {figs.get(m.figure, m.figure)}.", ""]
    out += syscall_lines(results.get("syscalls") or {})
    out += notes_lines(results)
    return "\n".join(out) + "\n"


class SettingsView:
    """Settings rebuilt from results.json, enough for figures() to name the loads."""

    def __init__(self, d):
        self.duration = d["duration"]
        self.idle_conns = d["idle_conns"]


def setup_lines(meta, cfg):
    mode = "--quick: 1 round, short runs; indicative only" if cfg["quick"] else f"{cfg['rounds']} rounds"
    return [
        f"Setup: {mode}. Balancer pinned to CPU {BALANCER_CPUS} (`taskset -c {BALANCER_CPUS}`); wrk, iperf3, "
        f"the two nginx backends, the iperf3 server and helper clients pinned to CPU {LOAD_CPUS}. "
        "Per figure, every round runs each candidate in turn (A B C … A B C …); cells are medians "
        "over rounds. HTTP figures balance round robin over two nginx backends (1 worker each); "
        "iperf3 goes through a separate listener with one server. `direct` is wrk/iperf3 straight "
        "to a backend (no balancer, so no balancer CPU or memory). No health checks; "
        "idle timeouts 10 min; no logging. HAProxy: mode tcp, nbthread 1, maxconn 9000 (20000 needs 40k descriptors, over the limit); "
        "nginx: stream module, worker_processes 1, worker_connections 20000; shunt: workers 1, "
        "splice on (its default). CPU is utime+stime of the balancer's processes from /proc; "
        "RSS is VmRSS summed over them.",
        "",
        "Versions: " + "; ".join(f"{k} `{v}`" for k, v in meta["versions"].items()),
        "",
    ]


def syscall_lines(sc):
    if not sc:
        return []
    out = ["## System calls (strace -c, not part of the timed figures)", "",
           "`strace -c -f` attached to every thread of the balancer during a short wrk run; total "
           "system calls of the balancer ÷ responses completed. strace slows the balancer down, so "
           "only the counts mean anything here. The HAProxy variant is the one that did best in "
           "this run's matching figure (keep-alive req/s, 1 MiB MiB/s).", ""]
    for load, path, conns, unit, _ in SYSCALL_LOADS:
        rows = sc.get(load) or {}
        if not rows:
            continue
        out += [f"### Per {unit} (`wrk -t1 -c{conns}` keep-alive, GET {path})", "",
                f"| candidate | responses | syscalls | per {unit} | top 5 (calls per {unit}) |",
                "|---|---|---|---|---|"]
        for name, r in rows.items():
            if "error" in r:
                out.append(f"| {name} | — | — | — | FAILED: {r['error'].splitlines()[0]} |")
                continue
            top = ", ".join(f"{n} {per:.2f}" for n, _, per in r["top"])
            out.append(f"| {name} | {r['requests']:,} | {r['syscalls']:,} | {r['per_request']:.2f} | {top} |")
        out.append("")
    return out


def notes_lines(results):
    notes = list(results.get("notes") or [])
    return (["## Notes", ""] + [f"- {n}" for n in notes] + [""]) if notes else []


SCALING_METRICS = [
    Metric("scaling", "kib_per_conn", "Balancer RSS per held connection", "KiB", False),
    Metric("scaling", "rss_mib", "Balancer RSS holding the connections", "MiB", False),
    Metric("scaling", "rss_loaded_mib", "Balancer RSS with wrk -c50 running on top", "MiB", False),
    Metric("scaling", "fds_per_conn", "Balancer descriptors per held connection", "fds", False),
    Metric("scaling", "rps", "wrk -c50 keep-alive requests per second", "req/s", True),
    Metric("scaling", "p50_ms", "wrk -c50 keep-alive p50 latency", "ms", False),
    Metric("scaling", "p99_ms", "wrk -c50 keep-alive p99 latency", "ms", False),
    Metric("scaling", "cpu_per_100k", "Balancer CPU per 100k requests", "CPU-s", False),
]


def scaling_markdown(results, plot_name):
    meta, cfg, samples = results["meta"], results["settings"], results["samples"]
    cands, levels = cfg["scaling_candidates"], cfg["scaling_levels"]
    out = ["# shunt benchmark: scaling with 2 workers", "", machine_line(meta), "",
           f"Setup: {'--quick, 1 round' if cfg['quick'] else str(cfg['rounds']) + ' rounds'}. "
           "shunt `workers 2`, HAProxy mode tcp `nbthread 2` (no splice), nginx stream "
           f"`worker_processes 2` (`reuseport`); the balancer is started with `taskset -c {SCALING_CPUS}` "
           f"(both cores, i.e. not pinned); wrk, the backends and the connection holder on CPU {LOAD_CPUS}. "
           "At each level a fresh balancer is warmed with 20 requests, then a helper process opens N "
           "connections through it and keeps them open, sending nothing; once the balancer holds 2 "
           f"descriptors per connection, its RSS and descriptors are read, and `wrk -t1 -c50 "
           f"-d{cfg['scaling_duration']}s` keep-alive runs on top for latency and CPU. Per-connection "
           "figures are (value − value before the connections) ÷ N. Cells: median (min–max).", "",
           "Versions: " + "; ".join(f"{k} `{v}`" for k, v in meta["versions"].items()), ""]
    if results.get("interrupted") or results.get("error"):
        out += [f"**Incomplete run**: {results.get('error') or 'interrupted'}", ""]
    if plot_name:
        out += [f"![Balancer RSS, RSS per connection, CPU and p99 latency vs held connections]({plot_name})", ""]
    for m in SCALING_METRICS:
        better = "higher is better" if m.higher_better else "lower is better"
        out += [f"### {m.title} ({m.unit}) — {better}", "",
                "| candidate | " + " | ".join(f"{n:,} conns" for n in levels) + " |",
                "|---|" + "---|" * len(levels)]
        for c in cands:
            cells = []
            for n in levels:
                vals = values(samples, "scaling", c, m.key, conns=n)
                if not vals:
                    cells.append("—")
                elif len(vals) == 1:
                    cells.append(fmt(vals[0]))
                else:
                    cells.append(f"{fmt(med(vals))} ({fmt(min(vals))}–{fmt(max(vals))})")
            out.append(f"| {scaling_label(c)} | " + " | ".join(cells) + " |")
        out.append("")
    errs = []
    for s in samples:
        if s.get("error") or s.get("errors"):
            what = f"FAILED: {s['error'].splitlines()[0]}" if s.get("error") else str(s["errors"])
            errs.append(f"- {s['candidate']} at {s['conns_target']:,} conns, round {s['round']}: {what}")
    out += (["### Errors", ""] + errs + [""]) if errs else ["No run had errors.", ""]
    out += notes_lines(results)
    return "\n".join(out) + "\n"


# ---- the scaling plot: gnuplot PNG, or a hand-written SVG without gnuplot

PLOT_PANELS = [("rss_mib", "Balancer RSS holding the connections (MiB)"),
               ("kib_per_conn", "RSS per held connection (KiB)"),
               ("cpu_per_100k", "Balancer CPU-s per 100k requests (wrk -c50 on top)"),
               ("p99_ms", "p99 latency, wrk -c50 keep-alive (ms)")]


def plot_series(results):
    """{candidate: {metric: [(conns, median, min, max), ...]}}"""
    cfg, samples = results["settings"], results["samples"]
    series = {}
    for c in cfg["scaling_candidates"]:
        series[c] = {}
        for key, _ in PLOT_PANELS:
            pts = []
            for n in cfg["scaling_levels"]:
                vals = values(samples, "scaling", c, key, conns=n)
                if vals:
                    pts.append((n, med(vals), min(vals), max(vals)))
            series[c][key] = pts
    return series


def plot_gnuplot(results, out_dir):
    series = plot_series(results)
    if not shutil.which("gnuplot"):
        return None
    files = {}
    for c, per in series.items():
        path = out_dir / f"scaling-{c}.dat"
        rows = ["# conns " + " ".join(f"{k} {k}_min {k}_max" for k, _ in PLOT_PANELS)]
        levels = results["settings"]["scaling_levels"]
        for n in levels:
            cols = []
            for key, _ in PLOT_PANELS:
                pt = next((p for p in per[key] if p[0] == n), None)
                cols += [str(v) for v in pt[1:]] if pt else ["NaN"] * 3
            rows.append(f"{n} " + " ".join(cols))
        path.write_text("\n".join(rows) + "\n")
        files[c] = path
    png = out_dir / "scaling.png"
    xmax = max(results["settings"]["scaling_levels"]) * 1.08
    script = []
    for i, (key, title) in enumerate(PLOT_PANELS):
        col = 2 + 3 * i
        plots = ", ".join(f"'{files[c]}' using 1:{col}:{col + 1}:{col + 2} with yerrorlines lw 2 title '{scaling_label(c)}'"
                          for c in files)
        script += [f"set title '{title}'", f"plot {plots}"]
    body = "\n".join(script)
    for terminal in ("pngcairo size 1300,900 font ',10'", "png size 1300,900"):
        gp = f"""set terminal {terminal}
set output '{png}'
set multiplot layout 2,2 title 'shunt vs HAProxy vs nginx, 2 workers: cost as held connections grow ({results["meta"]["date"]})'
set termoption noenhanced
set grid
set key top left
set offsets 0, 0, graph 0.3, 0
set xlabel 'idle connections held through the balancer'
set xrange [0:{xmax}]
set yrange [0:*]
{body}
unset multiplot
"""
        (out_dir / "scaling.gp").write_text(gp)
        try:
            r = run_cmd(["gnuplot", str(out_dir / "scaling.gp")], 60)
        except RunError:
            continue
        if r.returncode == 0 and png.exists() and png.stat().st_size > 0:
            return png
        log(f"gnuplot with terminal {terminal.split()[0]} failed: {r.stderr.strip()[:300]}")
    return None


def plot_svg(results, out_dir):
    """A plain SVG with the same three panels, for machines without gnuplot."""
    series = plot_series(results)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    pw, ph, ml, mr, mt, mb = 560, 380, 60, 15, 40, 50
    levels = results["settings"]["scaling_levels"]
    xmax = max(levels) * 1.08
    cols, rows = 2, (len(PLOT_PANELS) + 1) // 2
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{cols * pw}" height="{rows * ph + 40}" font-family="sans-serif" font-size="11">',
             f'<rect width="100%" height="100%" fill="white"/>',
             f'<text x="{cols * pw / 2}" y="18" text-anchor="middle" font-size="14">shunt vs HAProxy vs nginx, 2 workers: cost as held connections grow</text>']
    for i, (key, title) in enumerate(PLOT_PANELS):
        x0, y0 = (i % cols) * pw + ml, 30 + (i // cols) * ph + mt
        w, h = pw - ml - mr, ph - mt - mb
        ymax = max([p[3] for c in series for p in series[c][key]] + [1e-9]) * 1.35  # room for the legend

        def X(v):
            return x0 + v / xmax * w

        def Y(v):
            return y0 + h - v / ymax * h

        parts.append(f'<text x="{x0 + w / 2}" y="{y0 - 10}" text-anchor="middle" font-size="12">{title}</text>')
        parts.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#444"/>')
        for t in range(6):
            yv = ymax * t / 5
            parts.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{Y(yv):.1f}" y2="{Y(yv):.1f}" stroke="#ddd"/>')
            parts.append(f'<text x="{x0 - 5}" y="{Y(yv) + 4:.1f}" text-anchor="end">{fmt(yv)}</text>')
        for n in levels:
            parts.append(f'<text x="{X(n):.1f}" y="{y0 + h + 15}" text-anchor="middle">{n:,}</text>')
        parts.append(f'<text x="{x0 + w / 2}" y="{y0 + h + 32}" text-anchor="middle">idle connections held</text>')
        for j, c in enumerate(series):
            pts = series[c][key]
            color = colors[j % len(colors)]
            if pts:
                path = " ".join(f"{X(p[0]):.1f},{Y(p[1]):.1f}" for p in pts)
                parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
            for p in pts:
                parts.append(f'<line x1="{X(p[0]):.1f}" x2="{X(p[0]):.1f}" y1="{Y(p[2]):.1f}" y2="{Y(p[3]):.1f}" stroke="{color}"/>')
                parts.append(f'<circle cx="{X(p[0]):.1f}" cy="{Y(p[1]):.1f}" r="3" fill="{color}"/>')
            parts.append(f'<text x="{x0 + 8}" y="{y0 + 15 + 14 * j}" fill="{color}">{scaling_label(c)}</text>')
    parts.append("</svg>")
    svg = out_dir / "scaling.svg"
    svg.write_text("\n".join(parts) + "\n")
    return svg


# ------------------------------------------------------------------------------------------------
# Main


def tool_version(argv):
    try:
        r = run_cmd(argv, 10)
    except (RunError, OSError):
        return "?"
    text = (r.stdout + r.stderr).strip().splitlines()
    return text[0].strip() if text else "?"


def machine_meta(argv):
    cpu = "?"
    try:
        for line in run_cmd(["lscpu"], 10).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except RunError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "command": os.environ.get("BENCH_COMMAND") or " ".join(["scripts/bench.py"] + argv),
        "versions": {
            "shunt": tool_version([str(SHUNT_BIN), "--version"]),
            "haproxy": tool_version([HAPROXY, "-v"]).replace("HAProxy version ", "").split(" - ")[0],
            "nginx": tool_version([NGINX, "-v"]).replace("nginx version: ", ""),
            "wrk": tool_version(["wrk", "-v"]).split(" [")[0],
            "iperf3": tool_version(["iperf3", "-v"]).split(" (")[0],
        },
    }


def check_tools(cfg):
    missing = [t for t in ("taskset", "wrk", "iperf3", "strace", "lscpu") if not shutil.which(t)]
    for path in (NGINX, HAPROXY, STREAM_MODULE):
        if not Path(path).exists():
            missing.append(path)
    if missing:
        raise BenchError(f"missing: {', '.join(missing)}; run scripts/install-deps.sh (as root)")
    if not SHUNT_BIN.is_file():
        raise BenchError(f"{SHUNT_BIN} not found; build it with `cargo build --release` (scripts/bench.sh does)")
    if (os.cpu_count() or 1) < 2:
        raise BenchError("needs 2 CPUs: the balancer runs on CPU 0, the load on CPU 1")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 round, 3 s runs, 2000 idle connections (about 2 minutes)")
    p.add_argument("--rounds", type=int, help="rounds per figure (default 3; 1 with --quick)")
    p.add_argument("--only", help=f"comma-separated candidates (default all: {','.join(CANDIDATES)})")
    p.add_argument("--figures", help="comma-separated subset of keepalive,close,download,iperf1,iperf4,idle,syscalls")
    p.add_argument("--scaling", action="store_true", help="run only the 2-worker scaling part")
    p.add_argument("--all", action="store_true", help="run the figures, then the scaling part")
    p.add_argument("--out", default=str(ROOT / "target" / "bench"), help="output directory (default target/bench/)")
    p.add_argument("--duration", type=int, help="seconds per wrk/iperf3 run (default 10; 3 with --quick)")
    p.add_argument("--idle-conns", type=int, help="connections for the idle figure (default 5000; 2000 with --quick)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (configs, logs)")
    p.add_argument("--hold-helper", nargs=3, metavar=("HOST", "PORT", "N"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def write_outputs(results, out_dir, scaling):
    stem = "scaling" if scaling else "results"
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    if scaling:
        plot = None
        if any("metrics" in s for s in results["samples"]):
            plot = plot_gnuplot(results, out_dir) or plot_svg(results, out_dir)
        md = scaling_markdown(results, plot.name if plot else None)
    else:
        md = figures_markdown(results)
    (out_dir / f"{stem}.md").write_text(md)
    return md


def new_results(meta, cfg, part):
    return {"part": part, "meta": dict(meta), "settings": cfg.as_dict(), "samples": [], "notes": []}


def main(argv):
    args = parse_args(argv)
    if args.hold_helper:
        host, port, n = args.hold_helper
        return hold_helper(host, int(port), int(n))
    # Explicitly: a shell starting us in the background would otherwise leave SIGINT ignored.
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    try:
        cfg = Settings(args)
        check_tools(cfg)
    except BenchError as e:
        log(f"error: {e}")
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="shunt-bench-"))
    meta = machine_meta(argv)
    parts = (["figures"] if cfg.figures else []) + (["scaling"] if cfg.scaling else [])
    results = {p: new_results(meta, cfg, p) for p in parts}
    started = time.monotonic()
    status = 0
    try:
        backends = Backends(tmp)
        backends.start()
        for part, run in (("figures", run_figures), ("scaling", run_scaling)):
            if part in results:
                t0 = time.monotonic()
                try:
                    run(cfg, backends, tmp, results[part])
                finally:
                    results[part]["meta"]["elapsed_s"] = round(time.monotonic() - t0, 1)
    except BenchError as e:
        log(f"error: {e}")
        if not args.keep_tmp:
            log("(run again with --keep-tmp to keep the generated configs and logs)")
        for r in results.values():
            r["error"] = str(e).splitlines()[0]
        status = 1
    except KeyboardInterrupt:
        log("interrupted: stopping everything this run started")
        for r in results.values():
            r["interrupted"] = True
        status = 130
    finally:
        # A second Ctrl-C must not cut the cleanup short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_all()
        if args.keep_tmp:
            log(f"temporary files kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - started
    for part, r in results.items():
        md = write_outputs(r, out_dir, part == "scaling")
        print(md)
    log(f"done in {elapsed:.0f} s; results in {out_dir}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
