"""The load tools and what their output means: wrk (HTTP), iperf3 (bulk TCP), and the holder, a
helper process that keeps N idle connections open through a balancer.

Parsers are separate functions of the tool's text (parse_wrk, parse_iperf3), so --dry-run can
feed them known output. Every tool runs pinned to the load CPU."""

import json
import re
import select
import selectors
import socket
import subprocess
import sys
import time

from .common import ENTRY, HOST, LOAD_CPUS, WRK_TIMEOUT, RunError
from .procfs import established_to, fd_count
from .procs import Child, run_cmd

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


def wrk(port, path, conns, duration, close=False, during=None, scheme="http"):
    """wrk -t1 on the load CPU; `during` is called once halfway through (to sample the balancer).
    scheme "https": over TLS (wrk does not verify the certificate)."""
    argv = ["taskset", "-c", LOAD_CPUS, "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", WRK_TIMEOUT]
    if close:
        argv += ["-H", "Connection: close"]
    url = f"{scheme}://{HOST}:{port}{path}"
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


def parse_iperf3(data):
    """The client's totals from iperf3 -J output (already decoded, without an "error"): what the
    server received, and the client's retransmits."""
    end = data["end"]
    return {
        "bits_per_second": end["sum_received"]["bits_per_second"],
        "bytes": end["sum_received"]["bytes"],
        "seconds": end["sum_received"]["seconds"],
        "retransmits": end.get("sum_sent", {}).get("retransmits"),
    }


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
        return parse_iperf3(data)
    raise AssertionError("unreachable")


class Holder:
    """N idle connections through a balancer, held by a helper process on the load CPU."""

    def __init__(self, port, n, log_path):
        argv = ["taskset", "-c", LOAD_CPUS, sys.executable, str(ENTRY), "--hold-helper", HOST, str(port), str(n)]
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
