"""Loopback helpers: a fresh free port, polls for readiness, one HTTP GET to warm a balancer,
and an admin endpoint's /metrics."""

import socket
import time

from .common import HOST, RunError

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


def http_exchange(host, port, request, timeout=3.0):
    """Sends `request` and reads the answer to EOF (the request asks for a close): its bytes."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(request.encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def http_get(port, path="/", timeout=3.0):
    """One GET with Connection: close; the status line. Used to warm a balancer up."""
    data = http_exchange(HOST, port, f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n", timeout)
    return data.split(b"\r\n", 1)[0].decode(errors="replace")


def metrics_text(host, port, timeout=3.0):
    """GET /metrics from an admin endpoint: the body (Prometheus text)."""
    data = http_exchange(host, port, f"GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n", timeout)
    return data.partition(b"\r\n\r\n")[2].decode(errors="replace")


def warm_up(port, count=20):
    for _ in range(count):
        status = http_get(port)
        if " 200 " not in status + " ":
            raise RunError(f"warm-up request answered {status!r}")
