"""--dry-run: everything the benchmark does that needs no load, checked in a few seconds, so the
script cannot rot between the rare real runs (`make test` runs it through tests/bench_script.rs).

It builds every selected candidate's config and the backend conf and has the real tools check
them (shunt --check, haproxy -c, nginx -t), feeds the output parsers known outputs (samples.py)
and compares every number, reads this process's own costs through procfs.py, has the holder hold
a few loopback connections, and renders results.md/.json and scaling.md/.json/.png from
synthetic results into a temporary directory. One line per check: ok, skip (a tool is not
installed) or FAIL; the exit status is 1 if anything failed.

Nothing here listens beyond a moment, nothing leaves loopback, and --out is never written."""

import json
import math
import os
import shutil
import socket
import statistics
import tempfile
import time
import traceback
from pathlib import Path

from . import samples
from .backends import nginx_backend_argv, write_nginx_backend
from .cli import machine_meta
from .common import HOST, LOAD_CPUS, NGINX, NGINX_BACKEND_TEMPLATE, RunError
from .figures import METRICS, figures, one_line
from .load import Holder, parse_iperf3, parse_wrk
from .net import free_port
from .peers import make_candidate, worker_gauges
from .procfs import (busy_pct, cpu_seconds, cpu_ticks, established_to, fd_count, is_listening, machine_busy_seconds,
                     rss_kib, wakeups)
from .procs import process_tree, run_cmd, stop_all
from .report import write_outputs
from .samples import ROUNDS, failed_sample, synthetic_figures, synthetic_scaling, synthetic_value
from .scaling import SCALING_METRICS, scaling_label, spread_pct
from .stats import fmt, fmt_ratio
from .strace import best_haproxy, parse_strace

PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


class Skip(Exception):
    """The check cannot run here (a tool is missing): reported, not a failure."""


class Failed(Exception):
    """The check ran and found something wrong; the message says what."""


def expect(what, got, want):
    """Equal, or equal to 1e-9 relative for floats, recursively through dicts."""
    if isinstance(want, dict) and isinstance(got, dict):
        if set(got) != set(want):
            raise Failed(f"{what}: keys {sorted(got)}, expected {sorted(want)}")
        for k in want:
            expect(f"{what}[{k}]", got[k], want[k])
        return
    same = (math.isclose(got, want, rel_tol=1e-9) if isinstance(want, float) and isinstance(got, (int, float))
            else got == want)
    if not same:
        raise Failed(f"{what}: got {got!r}, expected {want!r}")


def expect_in(what, needle, text):
    if needle not in text:
        raise Failed(f"{what} lacks {needle!r}")


class Checks:
    """Runs named checks and prints one line each; counts the outcomes."""

    def __init__(self):
        self.counts = {"ok": 0, "skip": 0, "FAIL": 0}

    def __call__(self, name, fn):
        try:
            detail, status = fn(), "ok"
        except Skip as e:
            detail, status = str(e), "skip"
        except Failed as e:
            detail, status = str(e), "FAIL"
        except Exception as e:  # a crash in the code under test is a failure with its traceback
            detail, status = f"{type(e).__name__}: {e}\n{traceback.format_exc()}", "FAIL"
        self.counts[status] += 1
        print(f"dry-run: {status:4} {name}" + (f": {detail}" if detail else ""), flush=True)


# ------------------------------------------------------------------------------------------------
# Configs


class FakeBackends:
    """Where the candidates' configs point: free loopback ports, nothing listening on them."""

    def __init__(self):
        self.web_ports = [free_port(), free_port()]
        self.iperf_port = free_port()


def need(*tools):
    for tool in tools:
        if not (Path(tool).is_file() if "/" in tool else shutil.which(tool)):
            raise Skip(f"{tool} not found")


def check_backend_conf(tmp):
    d = tmp / "backend-web-a"
    d.mkdir()
    port = free_port()
    conf = write_nginx_backend(d, port)
    text = conf.read_text()
    for line in ("worker_processes 1;", "access_log off;", f"listen 127.0.0.1:{port} backlog=4096;",
                 f"alias {d}/1m.bin;", f"client_body_temp_path {d}/client_body;"):
        expect_in(str(conf), line, text)
    need(NGINX)
    argv = nginx_backend_argv(d, conf)
    argv[1:1] = ["-t", "-q"]
    r = run_cmd(argv, 20)
    if r.returncode != 0:
        raise Failed(f"nginx -t failed on {conf}:\n{r.stdout}{r.stderr}")
    return f"nginx -t -c {conf}"


def check_candidate_conf(name, workers, backends, tmp):
    cand = make_candidate(name)
    d, _, _, conf = cand.write_config(backends, tmp, workers)
    need(*cand.tools)
    cand.check_config(conf, d)  # BenchError with the tool's output if it refuses
    return " ".join(str(a) for a in cand.check_argv(conf, d))


# ------------------------------------------------------------------------------------------------
# Parsers and formatting


def check_wrk():
    for name, text, want in samples.WRK:
        expect(f"wrk sample {name!r}", parse_wrk(text), want)
    for name, text in samples.WRK_BAD:
        try:
            parse_wrk(text)
        except RunError:
            continue
        raise Failed(f"wrk sample {name!r} was accepted")
    return f"{len(samples.WRK)} samples read exactly, {len(samples.WRK_BAD)} bad outputs refused"


def check_iperf3():
    expect("iperf3 sample", parse_iperf3(json.loads(samples.IPERF3)), samples.IPERF3_WANT)
    return "sum_received and retransmits read exactly"


def check_strace():
    calls, errors = parse_strace(samples.STRACE)
    expect("strace sample calls", calls, samples.STRACE_CALLS)
    expect("strace sample errors", errors, samples.STRACE_ERRORS)
    return f"{len(calls)} syscalls read exactly, the total line skipped"


def check_strace_live(tmp):
    """This machine's strace, on `true`: its -c table must still be what parse_strace reads."""
    need("strace")
    out = tmp / "strace-true.txt"
    r = run_cmd(["strace", "-c", "-f", "-o", str(out), "true"], 10)
    if r.returncode != 0 or not out.exists():
        raise Skip(f"strace cannot trace here: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    calls, _ = parse_strace(out.read_text())
    if "execve" not in calls:
        raise Failed(f"parse_strace read {calls} from `strace -c true`, without execve:\n{out.read_text()}")
    return f"{sum(calls.values())} calls in {len(calls)} kinds"


def check_format():
    for x, want in ((None, "—"), (123456.7, "123,457"), (123.4, "123"), (12.34, "12.3"), (1.234, "1.23"),
                    (0.01234, "0.0123")):
        expect(f"fmt({x})", fmt(x), want)
    expect("fmt_ratio(0.666)", fmt_ratio(0.666), "0.67×")
    expect("fmt_ratio(0.05)", fmt_ratio(0.05), "0.05×")
    line = one_line({"metrics": {"rps": 97466.51, "p99_ms": 1.21, "cpu_s": None}, "errors": {"read": 12}})
    expect("one_line", line, "97,467 req/s, 1.21 ms p99, ERRORS {'read': 12}")
    text = ('# TYPE shunt_worker_sessions gauge\nshunt_worker_sessions{worker="1"} 498\n'
            'shunt_worker_sessions{worker="0"} 502\nshunt_worker_timers{worker="0"} 9\n')
    expect("worker_gauges", worker_gauges(text, "shunt_worker_sessions", 3), [502.0, 498.0, 0.0])
    expect("spread_pct", spread_pct([502.0, 498.0]), 0.4)
    expect("spread_pct of nothing", spread_pct([0, 0]), None)
    return "fmt, fmt_ratio, the run log's one_line, per-worker sessions and their spread"


# ------------------------------------------------------------------------------------------------
# This process through procfs.py, and the holder


def check_procfs():
    me = [os.getpid()]
    t = os.times()
    cpu = cpu_seconds(me)
    if abs(cpu - (t.user + t.system)) > 0.1:
        raise Failed(f"cpu_seconds {cpu} vs os.times {t.user + t.system}")
    # statm counts the same resident pages; a few may come or go between the two reads.
    rss, statm = rss_kib(me), int(Path("/proc/self/statm").read_text().split()[1]) * PAGE_KIB
    if rss <= 0 or abs(rss - statm) > 1024:
        raise Failed(f"rss_kib {rss} KiB, /proc/self/statm {statm} KiB")
    # The whole machine was busy at least while this process spun on it.
    machine, spun = machine_busy_seconds(), cpu_seconds(me)
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        pass
    busy, spun = machine_busy_seconds() - machine, cpu_seconds(me) - spun
    if busy < spun - 0.02:
        raise Failed(f"machine_busy_seconds grew {busy:.2f} s while this process used {spun:.2f} s")
    woke = wakeups(me)
    time.sleep(0.01)  # a sleep is a voluntary context switch
    if wakeups(me) <= woke:
        raise Failed("wakeups did not grow across a sleep")
    before, ticks = fd_count(me), cpu_ticks("0")
    with socket.socket() as lsn:
        lsn.bind((HOST, 0))
        lsn.listen(4)
        port = lsn.getsockname()[1]
        if fd_count(me) != before + 1:
            raise Failed(f"fd_count {fd_count(me)} after one socket, {before} before")
        if not is_listening(port):
            raise Failed(f"is_listening({port}) is false for a listening socket")
        with socket.create_connection((HOST, port)):
            if established_to([port]) < 1:
                raise Failed(f"established_to([{port}]) misses a connection")
    pct = busy_pct(ticks, cpu_ticks("0"))
    if pct is not None and not 0 <= pct <= 100:
        raise Failed(f"busy_pct {pct}")
    return f"cpu {cpu:.2f} s, RSS {rss} KiB, {before} fds, {woke} wake-ups"


def check_holder(tmp):
    """bench.py --hold-helper, as the idle and scaling figures start it, on a loopback listener."""
    need("taskset")
    if int(LOAD_CPUS) not in os.sched_getaffinity(0):
        raise Skip(f"CPU {LOAD_CPUS} (the load CPU) is not available here")
    with socket.socket() as lsn:
        lsn.bind((HOST, 0))
        lsn.listen(16)  # the kernel completes the handshakes; nobody needs to accept
        port = lsn.getsockname()[1]
        holder = Holder(port, 3, tmp / "holder.log")
        try:
            got = holder.wait_connected(10)
            expect("holder report", got, {"connected": 3, "failed": 0})
            if holder.child.pid not in process_tree(os.getpid()):
                raise Failed("process_tree of this process misses the holder")
            if established_to([port]) < 3:
                raise Failed("fewer than 3 connections established to the listener")
        finally:
            holder.close()
    return "3 connections held and released"


# ------------------------------------------------------------------------------------------------
# Reports from synthetic results

# The report's header when machine_meta itself failed, so the renderers are still checked.
UNKNOWN_MACHINE = {"date": "?", "kernel": "?", "cpu": "?", "cores": 0, "nofile": 0, "command": "?",
                   "versions": {}}


def check_machine(argv, meta):
    """machine_meta, as the report's header reads it; fills `meta` for the renderers."""
    need("lscpu")  # a real run checks for it first (check_tools); machine_meta assumes it
    meta.update(machine_meta(argv))
    if not meta["versions"] or not meta["date"]:
        raise Failed(f"machine_meta gave {meta}")
    return "; ".join(f"{k} {v}" for k, v in meta["versions"].items())


def check_figures_report(cfg, meta, out):
    results = synthetic_figures(cfg, meta)
    proxied_only = {f.key: f.proxied_only for f in figures(cfg)}
    md = write_outputs(results, out, scaling=False)
    expect("results.md on disk", (out / "results.md").read_text(), md)
    cands = cfg.candidates
    for line in ("# shunt benchmark", "## Summary (medians)", "## Notes", "- synthetic results of --dry-run"):
        expect_in("results.md", line, md)
    shown = [m for m in METRICS if m.figure in cfg.only_figures]
    def synthetic_median(i):
        return statistics.median(synthetic_value(i, r) for r in range(1, ROUNDS + 1) if not failed_sample(i, r, len(cands)))

    for m in shown:
        cells = []
        for i, c in enumerate(cands):
            ran = not (proxied_only[m.figure] and not make_candidate(c).proxied)
            flagged = ran and (i == 0 or i == len(cands) - 1)
            v, tag = synthetic_median(i), ""
            if m.baseline == c:
                tag = " (baseline)"
            elif m.baseline is not None:
                # Net of the baseline's median; no baseline in this run, no value.
                v = v - synthetic_median(cands.index(m.baseline)) if m.baseline in cands else None
            cells.append((fmt(v) + tag if ran else "—") + (" ⚠" if flagged else ""))
        arrow = {True: "↑", False: "↓", None: "·"}[m.higher_better]
        expect_in("results.md summary", f"| {m.title} ({m.unit}) | {arrow} | " + " | ".join(cells) + " |", md)
    if shown and len(cands) > 1:
        expect_in("results.md details", "FAILED (synthetic failure)", md)
    if "syscalls" in cfg.only_figures and len(cands) > 1:
        expect_in("results.md", "## System calls", md)
    back = json.loads((out / "results.json").read_text())
    expect("results.json samples", len(back["samples"]), len(results["samples"]))
    variants = [c for c in ("haproxy", "haproxy-splice-auto", "haproxy-splice") if c in cands]
    if variants and "keepalive" in cfg.only_figures and variants[-1] != cands[-1]:
        expect("best_haproxy", best_haproxy(results, cands, "keepalive", "rps"), variants[-1])
    return f"{len(shown)} metrics, {len(cands)} candidates, {len(results['samples'])} samples"


def check_scaling_report(cfg, meta, out, rendered):
    """Appends the markdown to `rendered`, for the plot's check."""
    if not cfg.scaling_candidates:
        raise Skip("no scaling candidate selected (--only)")
    results = synthetic_scaling(cfg, meta)
    md = write_outputs(results, out, scaling=True)
    expect_in("scaling.md", "# shunt benchmark: scaling with 2 workers", md)
    expect_in("scaling.md", "| candidate | " + " | ".join(f"{n:,} conns" for n in cfg.scaling_levels) + " |", md)
    for i, c in enumerate(cfg.scaling_candidates):
        cells = []
        for n in cfg.scaling_levels:
            v = [synthetic_value(i, r) * n / 1000 for r in range(1, ROUNDS + 1)]
            cells.append(f"{fmt(v[1])} ({fmt(v[0])}–{fmt(v[2])})")
        expect_in("scaling.md", f"| {scaling_label(c)} | " + " | ".join(cells) + " |", md)
    expect_in("scaling.md", f"- {cfg.scaling_candidates[0]} at {cfg.scaling_levels[0]:,} conns, round 1", md)
    back = json.loads((out / "scaling.json").read_text())
    expect("scaling.json samples", len(back["samples"]), len(results["samples"]))
    rendered.append(md)
    return f"{len(SCALING_METRICS)} metrics, {len(cfg.scaling_candidates)} candidates, {len(results['samples'])} samples"


def check_plot(md, out):
    png = out / "scaling.png"
    linked = "](scaling.png)" in md
    if not shutil.which("gnuplot"):
        if linked or png.exists():
            raise Failed("no gnuplot, yet scaling.md links a plot or scaling.png exists")
        raise Skip("gnuplot not installed (scripts/bench.sh installs gnuplot-nox): scaling.md has no plot")
    if not png.is_file() or png.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        raise Failed(f"gnuplot did not write a PNG; see {out / 'scaling.gp'}")
    if not linked:
        raise Failed("scaling.md does not link scaling.png")
    return f"{png.stat().st_size:,} bytes, linked from scaling.md"


# ------------------------------------------------------------------------------------------------


def dry_run(cfg, argv, keep_tmp=False):
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="shunt-bench-dry-"))
    out = tmp / "out"
    out.mkdir()
    check = Checks()
    try:
        backends = FakeBackends()
        check(f"nginx backend conf ({NGINX_BACKEND_TEMPLATE.name})", lambda: check_backend_conf(tmp))
        parts = ([(1, cfg.candidates)] if cfg.figures else []) + ([(2, cfg.scaling_candidates)] if cfg.scaling else [])
        for workers, names in parts:
            for name in names:
                if make_candidate(name).proxied:
                    check(f"config {name}, workers {workers}",
                          lambda: check_candidate_conf(name, workers, backends, tmp))
        check("wrk parser", check_wrk)
        check("iperf3 parser", check_iperf3)
        check("strace parser", check_strace)
        check("strace parser on this machine's strace", lambda: check_strace_live(tmp))
        check("number formatting", check_format)
        check("procfs accounting", check_procfs)
        check("hold helper (bench.py --hold-helper)", lambda: check_holder(tmp))
        meta = dict(UNKNOWN_MACHINE)
        check("machine facts", lambda: check_machine(argv, meta))
        check("results.md and results.json", lambda: check_figures_report(cfg, meta, out))
        scaling_md = []
        check("scaling.md and scaling.json", lambda: check_scaling_report(cfg, meta, out, scaling_md))
        if scaling_md:
            check("scaling.png", lambda: check_plot(scaling_md[0], out))
    finally:
        stop_all()
        if keep_tmp:
            print(f"dry-run: files kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    n = check.counts
    print(f"dry-run: {n['ok']} ok, {n['skip']} skipped, {n['FAIL']} failed in {time.monotonic() - started:.1f} s")
    return 1 if n["FAIL"] else 0
