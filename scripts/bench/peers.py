"""The candidates: shunt, HAProxy (mode tcp, three splice modes), nginx stream, and `direct` (no
balancer). A Candidate writes its config, has the tool check it, and starts itself; the result is
an Instance that knows where to send load and which processes to account for.

Every candidate fronts the same backends (backends.py) on two listeners: web (round robin over
the two nginx servers) and iperf (one server, so iperf3's control and data connections meet);
the proxies also terminate TLS in front of web on two more, one with an ECDSA P-256 and one with
an RSA-2048 certificate (tls.py)."""

import os

from .common import (BALANCER_CPUS, HAPROXY, HOST, NGINX, SHUNT_ALT_BIN, SHUNT_BIN, STREAM_MODULE,
                     BenchError, RunError)
from .net import accepts, free_port, metrics_text, wait_until
from .procfs import is_listening, socket_count
from .procs import Child, process_tree, run_cmd
from .tls import bench_certs


class Instance:
    def __init__(self, name, web_port, iperf_port, child=None, conf=None, tls_ports=None):
        self.name = name
        self.web_port = web_port
        self.iperf_port = iperf_port
        self.child = child
        self.conf = conf
        # {"ecdsa": port, "rsa": port}: web behind TLS termination (none for direct).
        self.tls_ports = tls_ports or {}

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

    def worker_sessions(self):
        """Sessions per worker, where the candidate can tell (None where it cannot)."""
        return self.sessions_per_worker() if self.sessions_per_worker else None

    sessions_per_worker = None  # set by the candidate that can count them


class Candidate:
    proxied = True
    conf_name = "bench.conf"
    # The tool that checks and runs the config: --dry-run skips the check when it is missing.
    tools = ()
    _launches = 0

    def __init__(self, name):
        self.name = name

    def config(self, d, web_port, iperf_port, backends, workers):
        raise NotImplementedError

    def check_argv(self, conf, d):
        raise NotImplementedError

    def run_argv(self, conf, d):
        raise NotImplementedError

    def write_config(self, backends, tmp, workers=1):
        """A fresh directory under tmp with the config in it: (dir, web port, iperf port, conf).
        The TLS listeners' ports are in self.tls_ports, their certificates in self.certs."""
        Candidate._launches += 1
        d = tmp / f"{self.name}-{Candidate._launches}"
        d.mkdir()
        web_port, iperf_port = free_port(), free_port()
        self.tls_ports = {"ecdsa": free_port(), "rsa": free_port()}
        self.certs = bench_certs(tmp)
        conf = d / self.conf_name
        conf.write_text(self.config(d, web_port, iperf_port, backends, workers))
        return d, web_port, iperf_port, conf

    def sessions_counter(self, inst, workers):
        """A function giving `inst`'s sessions per worker, or None where they cannot be told apart."""
        return None

    def check_config(self, conf, d):
        """The tool's own check of the config (starts nothing); BenchError with its output if not."""
        try:
            r = run_cmd(self.check_argv(conf, d), 20)
        except RunError as e:
            raise BenchError(f"{self.name}: configuration check hung: {e}")
        if r.returncode != 0:
            raise BenchError(f"{self.name}: configuration check failed ({conf}):\n{r.stdout}{r.stderr}")

    def launch(self, backends, tmp, workers=1, cpus=BALANCER_CPUS):
        d, web_port, iperf_port, conf = self.write_config(backends, tmp, workers)
        self.check_config(conf, d)
        child = Child(self.name, ["taskset", "-c", cpus] + self.run_argv(conf, d), d / "stderr.log")
        inst = Instance(self.name, web_port, iperf_port, child, conf, dict(self.tls_ports))
        inst.sessions_per_worker = self.sessions_counter(inst, workers)
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
    def __init__(self, name, bind_options="", binary=SHUNT_BIN):
        super().__init__(name)
        # Added to the web and TLS binds (clients that speak first), e.g. " defer_accept".
        self.bind_options = bind_options
        self.binary = str(binary)
        self.tools = (self.binary,)

    def config(self, d, web_port, iperf_port, backends, workers):
        a, b = backends.web_ports
        # With several workers, the admin endpoint says how the sessions spread over them.
        self.admin_port = free_port() if workers > 1 else None
        admin = f"admin          {HOST}:{self.admin_port}\n" if self.admin_port else ""
        return f"""# shunt bench (generated by scripts/bench.py)
workers        {workers}
{admin}log            warn    # no line per session: HAProxy and nginx stream log nothing here either
drain_timeout  1s      # stopped by signal at the end of a measurement; nothing to drain

service web
  bind         {HOST}:{web_port}{self.bind_options}
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
""" + "".join(f"""
service tls-{kind}
  bind         {HOST}:{port}{self.bind_options}
  tls          cert {self.certs[kind].cert} key {self.certs[kind].key}
  balance      roundrobin
  server       web-a {HOST}:{a}
  server       web-b {HOST}:{b}
  timeout      connect 5s
  timeout      idle 10m
""" for kind, port in self.tls_ports.items())

    def check_argv(self, conf, d):
        return [self.binary, "--check", "-c", str(conf)]

    def sessions_counter(self, inst, workers):
        port = self.admin_port
        if port is None:
            return None
        return lambda: worker_gauges(metrics_text(HOST, port), "shunt_worker_sessions", workers)

    def run_argv(self, conf, d):
        return [self.binary, "-c", str(conf)]


class HAProxy(Candidate):
    """mode tcp; splice: None (off, HAProxy's default), "auto" or "forced"."""

    tools = (HAPROXY,)
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
""" + "".join(f"""
frontend tls-{kind}
    bind {HOST}:{port} ssl crt {self.certs[kind].combined}
    default_backend web
""" for kind, port in self.tls_ports.items())

    def check_argv(self, conf, d):
        return [HAPROXY, "-c", "-q", "-f", str(conf)]

    def run_argv(self, conf, d):
        return [HAPROXY, "-db", "-f", str(conf)]


class NginxStream(Candidate):
    conf_name = "nginx.conf"
    tools = (NGINX, STREAM_MODULE)

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
""" + "".join(f"""    server {{
        listen {HOST}:{port} ssl backlog=4096{reuse};
        ssl_certificate {self.certs[kind].cert};
        ssl_certificate_key {self.certs[kind].key};
        ssl_session_cache shared:tls{kind}:10m;
        ssl_protocols TLSv1.2 TLSv1.3;  # 1.22 offers no TLS 1.3 by default (1.23.4 does)
        proxy_pass web;
    }}
""" for kind, port in self.tls_ports.items()) + """}
"""

    def check_argv(self, conf, d):
        return [NGINX, "-t", "-q", "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]

    def sessions_counter(self, inst, workers):
        if workers < 2:
            return None
        # Each worker is a process: its client and server sockets, halved, less its listeners.
        listeners = 2 + len(self.tls_ports)
        return lambda: [max(0, (socket_count(p) - listeners) // 2) for p in inst.pids()[1:]]

    def run_argv(self, conf, d):
        return [NGINX, "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)]


def worker_gauges(text, name, workers):
    """The samples `name{worker="0"}`… of a Prometheus text, in worker order (0 where missing)."""
    values = {}
    for line in text.splitlines():
        if line.startswith(name + '{worker="'):
            key, _, value = line.partition(" ")
            values[int(key[len(name) + 9:].split('"')[0])] = float(value)
    return [values.get(i, 0.0) for i in range(workers)]


def alt_binary():
    if not SHUNT_ALT_BIN:
        raise BenchError("shunt-alt measures the build SHUNT_ALT_BIN names: set it to a shunt binary")
    if not os.path.isfile(SHUNT_ALT_BIN):
        raise BenchError(f"SHUNT_ALT_BIN={SHUNT_ALT_BIN}: no such file")
    return SHUNT_ALT_BIN


def make_candidate(name):
    return {
        "direct": lambda: Direct(name),
        "shunt": lambda: Shunt(name),
        "shunt-defer-accept": lambda: Shunt(name, " defer_accept"),
        "shunt-alt": lambda: Shunt(name, binary=alt_binary()),
        "haproxy": lambda: HAProxy(name, None),
        "haproxy-splice-auto": lambda: HAProxy(name, "auto"),
        "haproxy-splice": lambda: HAProxy(name, "forced"),
        "nginx": lambda: NginxStream(name),
    }[name]()
