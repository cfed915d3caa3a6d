"""The command line and the run as a whole: arguments, the Settings they give, the tools and
machine facts the report's header needs, and main(), which starts the backends, runs the parts,
always stops what it started and always writes what it has."""

import argparse
import datetime
import os
import platform
import resource
import shutil
import signal
import tempfile
import time
from pathlib import Path

from .backends import Backends
from .common import (CANDIDATES, HAPROXY, OPTIONAL_CANDIDATES, NGINX, ROOT, SCALING_CANDIDATES, SHUNT_BIN,
                     STREAM_MODULE, BenchError, RunError, log)
from .figures import run_figures
from .load import hold_helper
from .procs import run_cmd, stop_all
from .report import write_outputs
from .scaling import run_scaling


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
        known_candidates = CANDIDATES + OPTIONAL_CANDIDATES
        if only:
            unknown = [c for c in only if c not in known_candidates]
            if unknown:
                raise BenchError(f"--only: unknown candidate(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(known_candidates)}")
        self.candidates = [c for c in known_candidates if (c in only if only else c in CANDIDATES)]
        known = ["keepalive", "close", "download", "iperf1", "iperf4", "idle", "syscalls",
                 "tls_close_ecdsa", "tls_close_rsa", "tls_keepalive", "tls_download"]
        self.only_figures = [f.strip() for f in args.figures.split(",")] if args.figures else known
        unknown = [f for f in self.only_figures if f not in known]
        if unknown:
            raise BenchError(f"--figures: unknown figure(s) {', '.join(unknown)}; known: {', '.join(known)}")
        self.scaling_candidates = [c for c in SCALING_CANDIDATES if not only or c in only]

    def as_dict(self):
        return {k: v for k, v in vars(self).items()}


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


def parse_args(argv, doc):
    p = argparse.ArgumentParser(prog="bench.py", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 round, 3 s runs, 2000 idle connections (about 2 minutes)")
    p.add_argument("--rounds", type=int, help="rounds per figure (default 3; 1 with --quick)")
    p.add_argument("--only", help=f"comma-separated candidates (default all: {','.join(CANDIDATES)}; "
                   f"also: {','.join(OPTIONAL_CANDIDATES)})")
    p.add_argument("--figures", help="comma-separated subset of keepalive,close,download,iperf1,iperf4,idle,syscalls,"
                        "tls_close_ecdsa,tls_close_rsa,tls_keepalive,tls_download")
    p.add_argument("--scaling", action="store_true", help="run only the 2-worker scaling part")
    p.add_argument("--all", action="store_true", help="run the figures, then the scaling part")
    p.add_argument("--out", default=str(ROOT / "target" / "bench"), help="output directory (default target/bench/)")
    p.add_argument("--duration", type=int, help="seconds per wrk/iperf3 run (default 10; 3 with --quick)")
    p.add_argument("--idle-conns", type=int, help="connections for the idle figure (default 5000; 2000 with --quick)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (configs, logs)")
    p.add_argument("--dry-run", action="store_true",
                   help="run no load: check the selected candidates' configs with their tools, the output "
                        "parsers on known samples and the reports on synthetic results (a few seconds; "
                        "--out is not written)")
    p.add_argument("--hold-helper", nargs=3, metavar=("HOST", "PORT", "N"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def new_results(meta, cfg, part):
    return {"part": part, "meta": dict(meta), "settings": cfg.as_dict(), "samples": [], "notes": []}


def main(argv, doc):
    args = parse_args(argv, doc)
    if args.hold_helper:
        host, port, n = args.hold_helper
        return hold_helper(host, int(port), int(n))
    # Explicitly: a shell starting us in the background would otherwise leave SIGINT ignored.
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    try:
        cfg = Settings(args)
        if args.dry_run:
            # Imported here, not at the top: the dry run imports this module (machine_meta,
            # new_results), and a real run needs none of it.
            from .dryrun import dry_run
            return dry_run(cfg, argv, keep_tmp=args.keep_tmp)
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
