"""The backends every candidate balances to: two nginx HTTP servers (GET / answers "ok\\n",
GET /1m a 1 MiB file) and one iperf3 server, all on the load CPU.

The nginx conf is scripts/nginx-backend.conf.in, the same template scripts/lib.sh renders for
profile.sh and soak.sh; this module fills in its placeholders and nothing more."""

import os
import re

from .common import (HOST, LOAD_CPUS, NGINX, NGINX_BACKEND_TEMPLATE, SMALL_BODY, BIG_SIZE,
                     BenchError, log)
from .net import accepts, free_port, http_get, wait_until
from .procfs import is_listening
from .procs import Child

# With the conf run in the foreground and without a master, the nginx process is the backend:
# stopping that one PID stops it. The same flags as scripts/lib.sh's users pass.
NGINX_FOREGROUND = "daemon off; master_process off;"


def render_nginx_conf(d, port, locations):
    """The backend conf for working directory `d`, listening on HOST:port, serving `locations`
    (nginx location blocks). A placeholder left unfilled means the template and this function
    disagree: that is a bug here, not a runtime condition."""
    text = NGINX_BACKEND_TEMPLATE.read_text()
    for key, value in (("DIR", str(d)), ("PORT", str(port)), ("LOCATIONS", locations)):
        text = text.replace(f"@{key}@", value)
    left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
    if left:
        raise BenchError(f"{NGINX_BACKEND_TEMPLATE}: placeholder(s) {', '.join(left)} not filled in")
    return text


def bench_locations(d):
    """What the benchmark's loads request: / (3-byte body) and /1m (1 MiB, sendfile)."""
    return (f'location / {{ return 200 "{SMALL_BODY.strip()}\\n"; }}\n'
            f"        location = /1m {{ alias {d}/1m.bin; }}")


def nginx_backend_argv(d, conf):
    """The command line of one backend: foreground, no master, every file inside `d`."""
    return [NGINX, "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf), "-g", NGINX_FOREGROUND]


def write_nginx_backend(d, port):
    """Writes d/nginx.conf for a backend on `port`; returns its path. Does not create 1m.bin."""
    conf = d / "nginx.conf"
    conf.write_text(render_nginx_conf(d, port, bench_locations(d)))
    return conf


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
        conf = write_nginx_backend(d, port)
        argv = ["taskset", "-c", LOAD_CPUS] + nginx_backend_argv(d, conf)
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
