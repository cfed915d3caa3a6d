"""System calls per response: strace -c attached to every thread of the balancer during a short
keep-alive run. strace slows the balancer a lot; this run counts calls, it is not timed.

parse_strace reads the `strace -c` summary table, so --dry-run can feed it known output."""

import os
import re
import signal
import statistics
import subprocess
import time

from .common import LOAD_CPUS, RunError, log
from .load import wrk
from .net import wait_until
from .procs import Child
from .stats import values


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
