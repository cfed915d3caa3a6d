"""The report: results.md from the figures' results, scaling.md from the scaling part's, and
write_outputs, which puts them (with results.json / scaling.json and the plot) in --out.

Everything here is a function of a results dict (as saved in the JSON), never of a live run, so
--dry-run renders it from synthetic results."""

import json

from .common import BALANCER_CPUS, LOAD_CPUS, PEERS, SCALING_CPUS
from .figures import METRICS, figures
from .plot import plot_gnuplot
from .scaling import SCALING_METRICS, scaling_label
from .stats import fmt, fmt_ratio, med, values
from .strace import SYSCALL_LOADS


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


def metric_values(samples, metric, cand):
    """The values of `metric` for `cand`, net of the baseline's median when the metric has one
    (none for the baseline itself: its row shows the raw median as the reference; none at all
    when the baseline did not run)."""
    vals = values(samples, metric.figure, cand, metric.key)
    if metric.baseline is None or cand == metric.baseline:
        return vals
    base = med(values(samples, metric.figure, metric.baseline, metric.key))
    return [] if base is None else [v - base for v in vals]


def metric_table(samples, metric, cands):
    better = {True: "higher is better", False: "lower is better", None: "context, not a score"}[metric.higher_better]
    lines = [f"### {metric.title} ({metric.unit}) — {better}", ""]
    peers = [p for p in PEERS if p in cands and metric_values(samples, metric, p)]
    head = ["candidate", "median", "min–max", "runs"] + [f"vs {p}" for p in peers] + ["errors"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cands:
        runs = [s for s in samples if s["figure"] == metric.figure and s["candidate"] == c]
        if not runs:
            continue
        vals = metric_values(samples, metric, c)
        m = med(vals)
        failed = any(s.get("error") for s in runs)
        row = [f"**{c}**" if c == "shunt" else c, fmt(m),
               f"{fmt(min(vals))}–{fmt(max(vals))}" if vals else "—",
               f"{len(vals)}/{len(runs)}" if vals or failed else "—"]
        for p in peers:
            pm = med(metric_values(samples, metric, p))
            base = c == metric.baseline
            row.append("—" if p == c or base or m is None or not pm or pm < 0 else fmt_ratio(m / pm))
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
            v = med(metric_values(samples, m, c))
            flag = " ⚠" if error_notes(samples, m.figure, c) else ""
            base = " (baseline)" if c == m.baseline and v is not None else ""
            row.append(fmt(v) + base + flag)
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
        "whole-machine CPU is every CPU's busy time from /proc/stat over the run (softirq and kworkers "
        "included: the kernel's work for the balancer is charged to whoever runs, mostly the load core), "
        "net of the same load straight to the backends (`direct`, its row the baseline); "
        "RSS is VmRSS summed over the balancer's processes.",
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


def write_outputs(results, out_dir, scaling):
    """{results,scaling}.json and .md in out_dir (and scaling.png when gnuplot can draw it);
    returns the markdown."""
    stem = "scaling" if scaling else "results"
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    if scaling:
        plot = None
        if any("metrics" in s for s in results["samples"]):
            plot = plot_gnuplot(results, out_dir)
        md = scaling_markdown(results, plot.name if plot else None)
    else:
        md = figures_markdown(results)
    (out_dir / f"{stem}.md").write_text(md)
    return md
