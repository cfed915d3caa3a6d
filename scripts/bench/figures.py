"""The figures: what each one measures (a runner per figure), which metrics the report shows and
in which direction they are better, and the loop that runs every candidate through them.

Each runner takes (instance, settings, ...) and returns a sample dict:
    {"metrics": {...}, "errors": {...}} -- errors non-empty when the run was not clean.
A RunError from a runner becomes the sample's "error"; the loop goes on."""

import time

from .common import BALANCER_CPUS, LOAD_CPUS, TLS_CANDIDATES, RunError, log
from .load import hold_and_settle, iperf3, wrk
from .net import warm_up
from .peers import make_candidate
from .procfs import busy_pct, cpu_seconds, cpu_ticks, fd_count, machine_busy_seconds, rss_kib, wakeups
from .stats import fmt
from .strace import run_syscalls


def cpu_block(inst, fn):
    """Run fn() and return (its result, the balancer's CPU seconds meanwhile or None for direct,
    the whole machine's busy CPU seconds meanwhile: the balancer's process, the kernel's work on
    its behalf wherever it ran, and the load and backends, which the report subtracts by
    comparing with `direct`)."""
    pids = inst.pids()
    before, machine_before = cpu_seconds(pids), machine_busy_seconds()
    res = fn()
    machine = machine_busy_seconds() - machine_before
    return res, (cpu_seconds(inst.pids() or pids) - before if pids else None), machine


def per_100k(cpu, requests):
    return None if cpu is None or not requests else cpu / (requests / 1e5)


def per_gb(cpu, nbytes):
    return None if cpu is None or not nbytes else cpu / (nbytes / 1e9)


def request_result(w, cpu, machine, p50=True):
    """A wrk run of small requests: rate, latency, and the CPU per 100k requests."""
    latency = {"p50_ms": w["p50_ms"]} if p50 else {}
    return {"metrics": {"rps": w["rps"], **latency, "p99_ms": w["p99_ms"], "requests": w["requests"], "cpu_s": cpu,
                        "cpu_per_100k": per_100k(cpu, w["requests"]),
                        "machine_per_100k": per_100k(machine, w["requests"])},
            "errors": w["errors"], "raw": w["raw"]}


def download_result(w, cpu, machine):
    """A wrk run of 1 MiB downloads: MiB/s, p99, and the CPU per GB moved (both ways)."""
    moved = w["bytes_read"] + w["bytes_sent"]
    return {"metrics": {"mib_s": w["bytes_read"] / (1 << 20) / w["duration_s"], "p99_ms": w["p99_ms"],
                        "requests": w["requests"], "bytes": moved, "cpu_s": cpu, "cpu_per_gb": per_gb(cpu, moved),
                        "machine_per_gb": per_gb(machine, moved)},
            "errors": w["errors"], "raw": w["raw"]}


def run_keepalive(inst, cfg, **_):
    return request_result(*cpu_block(inst, lambda: wrk(inst.web_port, "/", 50, cfg.duration)))


def run_close(inst, cfg, **_):
    return request_result(*cpu_block(inst, lambda: wrk(inst.web_port, "/", 50, cfg.duration, close=True)))


def run_download(inst, cfg, **_):
    return download_result(*cpu_block(inst, lambda: wrk(inst.web_port, "/1m", 8, cfg.duration)))


def run_tls_close(kind):
    def run(inst, cfg, **_):
        port = inst.tls_ports[kind]
        return request_result(*cpu_block(inst, lambda: wrk(port, "/", 50, cfg.duration, close=True, scheme="https")),
                              p50=False)
    return run


def run_tls_keepalive(inst, cfg, **_):
    port = inst.tls_ports["ecdsa"]
    return request_result(*cpu_block(inst, lambda: wrk(port, "/", 50, cfg.duration, scheme="https")), p50=False)


def run_tls_download(inst, cfg, **_):
    port = inst.tls_ports["ecdsa"]
    return download_result(*cpu_block(inst, lambda: wrk(port, "/1m", 8, cfg.duration, scheme="https")))


def run_iperf(streams):
    def run(inst, cfg, **_):
        # How busy the load CPU (iperf3 client and server) was: at 1 stream it, not the balancer,
        # is usually what saturates, and then Gbit/s says more about the load core than the balancer.
        # And how often the balancer went to sleep and was woken (each wake-up costs the waker too).
        load_before, pids = cpu_ticks(LOAD_CPUS), inst.pids()
        wake_before = wakeups(pids)
        r, cpu, machine = cpu_block(inst, lambda: iperf3(inst.iperf_port, streams, cfg.duration))
        load_busy = busy_pct(load_before, cpu_ticks(LOAD_CPUS))
        woke = per_gb(wakeups(pids) - wake_before, r["bytes"]) if pids else None
        return {"metrics": {"gbit_s": r["bits_per_second"] / 1e9, "bytes": r["bytes"], "retransmits": r["retransmits"],
                            "cpu_s": cpu, "cpu_per_gb": per_gb(cpu, r["bytes"]), "load_cpu_busy_pct": load_busy,
                            "machine_per_gb": per_gb(machine, r["bytes"]),
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
    def __init__(self, key, title, runner, proxied_only=False, only=None):
        self.key, self.title, self.runner, self.proxied_only = key, title, runner, proxied_only
        # TLS figures: one HAProxy (its splice options do not apply to TLS), no direct.
        self.only = only

    def runs(self, cand):
        return (cand.proxied or not self.proxied_only) and (self.only is None or cand.name in self.only)


def figures(cfg):
    d = cfg.duration
    return [
        Figure("keepalive", f"wrk -t1 -c50 -d{d}s keep-alive, GET / (3-byte body)", run_keepalive),
        Figure("close", f"wrk -t1 -c50 -d{d}s -H 'Connection: close', GET /", run_close),
        Figure("download", f"wrk -t1 -c8 -d{d}s keep-alive, GET /1m (1 MiB)", run_download),
        Figure("iperf1", f"iperf3 -P 1 -t {d}", run_iperf(1)),
        Figure("iperf4", f"iperf3 -P 4 -t {d}", run_iperf(4)),
        Figure("idle", f"{cfg.idle_conns} idle proxied connections (fresh balancer)", run_idle, proxied_only=True),
        Figure("tls_close_ecdsa", f"wrk -t1 -c50 -d{d}s -H 'Connection: close' over https, ECDSA P-256",
               run_tls_close("ecdsa"), only=TLS_CANDIDATES),
        Figure("tls_close_rsa", f"wrk -t1 -c50 -d{d}s -H 'Connection: close' over https, RSA-2048",
               run_tls_close("rsa"), only=TLS_CANDIDATES),
        Figure("tls_keepalive", f"wrk -t1 -c50 -d{d}s keep-alive over https (ECDSA), GET /", run_tls_keepalive,
               only=TLS_CANDIDATES),
        Figure("tls_download", f"wrk -t1 -c8 -d{d}s keep-alive over https (ECDSA), GET /1m (1 MiB)",
               run_tls_download, only=TLS_CANDIDATES),
    ]


class Metric:
    """One row of the report. With `baseline` (a candidate), every value is shown net of that
    candidate's median: the whole machine's CPU per unit minus what the same load costs it
    straight to the backends (wrk or iperf3 and the backends themselves) is what the balancer
    costs the machine, in its process and in the kernel."""

    def __init__(self, figure, key, title, unit, higher_better, baseline=None):
        self.figure, self.key, self.title, self.unit, self.higher_better = figure, key, title, unit, higher_better
        self.baseline = baseline


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
    Metric("keepalive", "machine_per_100k", "Whole-machine CPU per 100k requests (keep-alive), net of direct",
           "CPU-s", False, baseline="direct"),
    Metric("close", "machine_per_100k", "Whole-machine CPU per 100k requests (Connection: close), net of direct",
           "CPU-s", False, baseline="direct"),
    Metric("download", "machine_per_gb", "Whole-machine CPU per GB (1 MiB downloads), net of direct", "CPU-s", False,
           baseline="direct"),
    Metric("iperf1", "machine_per_gb", "Whole-machine CPU per GB (iperf3, 1 stream), net of direct", "CPU-s", False,
           baseline="direct"),
    Metric("iperf4", "machine_per_gb", "Whole-machine CPU per GB (iperf3, 4 streams), net of direct", "CPU-s", False,
           baseline="direct"),
    # Context, not a score: near 100% the load core, not the balancer, bounds the Gbit/s above.
    Metric("iperf1", "load_cpu_busy_pct", "Load CPU busy during iperf3, 1 stream", "%", None),
    Metric("iperf4", "load_cpu_busy_pct", "Load CPU busy during iperf3, 4 streams", "%", None),
    Metric("iperf1", "wakeups_per_gb", "Balancer sleeps/wake-ups per GB (iperf3, 1 stream)", "per GB", None),
    Metric("tls_close_ecdsa", "rps", "TLS handshakes per second (Connection: close, ECDSA P-256)", "conn/s", True),
    Metric("tls_close_rsa", "rps", "TLS handshakes per second (Connection: close, RSA-2048)", "conn/s", True),
    Metric("tls_keepalive", "rps", "Keep-alive requests per second over TLS", "req/s", True),
    Metric("tls_download", "mib_s", "1 MiB downloads over TLS", "MiB/s", True),
    Metric("tls_close_ecdsa", "cpu_per_100k", "Balancer CPU per 100k TLS connections (ECDSA)", "CPU-s", False),
    Metric("tls_close_rsa", "cpu_per_100k", "Balancer CPU per 100k TLS connections (RSA)", "CPU-s", False),
    Metric("tls_keepalive", "cpu_per_100k", "Balancer CPU per 100k requests over TLS (keep-alive)", "CPU-s", False),
    Metric("tls_download", "cpu_per_gb", "Balancer CPU per GB over TLS (1 MiB downloads)", "CPU-s", False),
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
                    if not fig.runs(cand):
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
