"""The scaling part (--scaling, --all): each candidate with 2 workers on both cores, a fresh
instance per level holding 1k, 4k and 8k idle connections while wrk -c50 runs on top. What it
measures and the metrics its report shows; the report itself is report.py's."""

import time

from .common import SCALING_CPUS, RunError, log
from .figures import Metric, cpu_block, per_100k
from .load import hold_and_settle, wrk
from .net import warm_up
from .peers import make_candidate
from .procfs import fd_count, rss_kib
from .stats import fmt

SCALING_METRICS = [
    Metric("scaling", "kib_per_conn", "Balancer RSS per held connection", "KiB", False),
    Metric("scaling", "rss_mib", "Balancer RSS holding the connections", "MiB", False),
    Metric("scaling", "rss_loaded_mib", "Balancer RSS with wrk -c50 running on top", "MiB", False),
    Metric("scaling", "fds_per_conn", "Balancer descriptors per held connection", "fds", False),
    Metric("scaling", "rps", "wrk -c50 keep-alive requests per second", "req/s", True),
    Metric("scaling", "p50_ms", "wrk -c50 keep-alive p50 latency", "ms", False),
    Metric("scaling", "p99_ms", "wrk -c50 keep-alive p99 latency", "ms", False),
    Metric("scaling", "cpu_per_100k", "Balancer CPU per 100k requests", "CPU-s", False),
    Metric("scaling", "spread_pct", "Largest gap of a worker's sessions from the mean (held connections)", "%",
           False),
]


def spread_pct(per_worker):
    """How far the most distant worker is from the mean, in percent of it (None: not known)."""
    if not per_worker or sum(per_worker) == 0:
        return None
    mean = sum(per_worker) / len(per_worker)
    return 100.0 * max(abs(n - mean) for n in per_worker) / mean


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
        per_worker = inst.worker_sessions()
        loaded = {}

        def sample_under_load():
            loaded["rss"], loaded["fds"] = rss_kib(inst.pids()), fd_count(inst.pids())

        w, cpu, _ = cpu_block(inst, lambda: wrk(inst.web_port, "/", 50, cfg.scaling_duration, during=sample_under_load))
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
                            "cpu_per_100k": per_100k(cpu, w["requests"]), "per_worker": per_worker,
                            "spread_pct": spread_pct(per_worker)},
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
                       f"{fmt(m['cpu_per_100k'])} CPU-s/100k, per worker {m['per_worker']}" if m else "")
                    + (f" ERRORS {sample['errors']}" if sample.get("errors") else "")
                    + (f" FAILED: {sample['error']}" if sample.get("error") else ""))
