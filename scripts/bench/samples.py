"""What --dry-run feeds the code instead of a real run.

Known outputs of the load tools, with what their parsers must read from them: dryrun.py gives
these to parse_wrk, parse_iperf3 and parse_strace and compares every number. The texts follow the
tools' own formats (wrk 4.1 with --latency, iperf3 3.12 -J trimmed to the fields read, strace 6.1
-c -f); a format change in a new tool version belongs here first.

Synthetic results, shaped like a real run's, for the report renderers: every value follows from
(candidate, round) through synthetic_value, so dryrun.py knows what each table cell must say."""

from .cli import new_results
from .figures import METRICS, figures
from .peers import make_candidate
from .plot import PLOT_PANELS
from .scaling import SCALING_METRICS
from .strace import SYSCALL_LOADS

MiB, GiB = 1 << 20, 1 << 30

# (name, wrk output, what parse_wrk must return). Keep-alive, clean; then Connection: close with
# every kind of error wrk reports, a minute-long run and sizes in GB.
WRK = [
    ("keep-alive", """\
Running 10s test @ http://127.0.0.1:40123/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   511.34us  190.21us   5.91ms   92.15%
    Req/Sec    97.88k     4.23k  104.01k    76.19%
  Latency Distribution
     50%  480.00us
     75%  540.00us
     90%  640.00us
     99%    1.21ms
  974766 requests in 10.00s, 137.45MB read
Requests/sec:  97466.51
Transfer/sec:     13.74MB
""", {"requests": 974766, "duration_s": 10.0, "bytes_read": 137.45 * MiB, "rps": 97466.51,
      "transfer_per_s": 13.74 * MiB, "p50_ms": 0.48, "p99_ms": 1.21, "errors": {}}),
    ("close, with errors", """\
Running 1m test @ http://127.0.0.1:40123/1m
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.36ms    8.12ms   1.02s    99.12%
    Req/Sec     3.58k   210.33     4.01k    71.00%
  Latency Distribution
     50%    1.05ms
     75%    1.32ms
     90%    2.10ms
     99%    1.01s
  213956 requests in 1.00m, 1.23GB read
  Socket errors: connect 0, read 12, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:   3565.93
Transfer/sec:     20.99MB
""", {"requests": 213956, "duration_s": 60.0, "bytes_read": 1.23 * GiB, "rps": 3565.93,
      "transfer_per_s": 20.99 * MiB, "p50_ms": 1.05, "p99_ms": 1010.0,
      "errors": {"read": 12, "timeout": 3, "non2xx": 7}}),
]

# Outputs parse_wrk must refuse (RunError), not read as numbers.
WRK_BAD = [
    ("no request completed", WRK[0][1].replace("974766 requests", "0 requests")),
    ("cut short", WRK[0][1].split("Requests/sec")[0]),
]

IPERF3 = """\
{
  "start": {"connected": [{"socket": 5, "local_host": "127.0.0.1", "remote_port": 40124}],
            "test_start": {"protocol": "TCP", "num_streams": 4, "duration": 10}},
  "intervals": [],
  "end": {
    "streams": [],
    "sum_sent": {"start": 0, "end": 10.000041, "seconds": 10.000041, "bytes": 18253611008,
                 "bits_per_second": 14602828979.3, "retransmits": 12, "sender": true},
    "sum_received": {"start": 0, "end": 10.04, "seconds": 10.04, "bytes": 18251120640,
                     "bits_per_second": 14542725609.6, "sender": true},
    "cpu_utilization_percent": {"host_total": 61.2, "remote_total": 70.4}
  }
}
"""
IPERF3_WANT = {"bits_per_second": 14542725609.6, "bytes": 18251120640, "seconds": 10.04, "retransmits": 12}

STRACE = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 42.18    0.512345           5    102345           epoll_wait
 30.02    0.364512           3    110234           writev
 20.11    0.244210           2    110120     51234 read
  7.69    0.093412           1     51234           recvfrom
  0.00    0.000010          10         1         1 accept4
------ ----------- ----------- --------- --------- ----------------
100.00    1.214489           3    373934     51235 total
"""
STRACE_CALLS = {"epoll_wait": 102345, "writev": 110234, "read": 110120, "recvfrom": 51234, "accept4": 1}
STRACE_ERRORS = {"read": 51234, "accept4": 1}


# ------------------------------------------------------------------------------------------------
# Synthetic results

ROUNDS = 3  # enough for a median that differs from min and max


def synthetic_value(i, rnd):
    """Candidate number i's value in round rnd: medians, mins and maxes all differ."""
    return float((i + 1) * 100 * rnd)


def failed_sample(i, rnd, n_cands):
    """One failed run (the last candidate's last round), so the error paths are rendered too."""
    return i == n_cands - 1 and rnd == ROUNDS


def synthetic_figures(cfg, meta):
    results = new_results(meta, cfg, "figures")
    results["settings"]["rounds"] = ROUNDS
    cands = cfg.candidates
    for fig in figures(cfg):
        if fig.key not in cfg.only_figures:
            continue
        for rnd in range(1, ROUNDS + 1):
            for i, c in enumerate(cands):
                if fig.proxied_only and not make_candidate(c).proxied:
                    continue
                s = {"figure": fig.key, "candidate": c, "round": rnd}
                if failed_sample(i, rnd, len(cands)):
                    s["error"] = "synthetic failure\nsecond line"
                else:
                    s["metrics"] = {m.key: synthetic_value(i, rnd) for m in METRICS if m.figure == fig.key}
                    s["errors"] = {"timeout": 3} if (i, rnd) == (0, 1) else {}
                results["samples"].append(s)
    if "syscalls" in cfg.only_figures:
        sc = {"requests": 1000, "syscalls": 2500, "per_request": 2.5, "top": [["epoll_wait", 1500, 1.5]]}
        results["syscalls"] = {load: {c: dict(sc) for c in cands if c != "direct"} for load, *_ in SYSCALL_LOADS}
    results["notes"].append("synthetic results of --dry-run")
    return results


def synthetic_scaling(cfg, meta):
    results = new_results(meta, cfg, "scaling")
    results["settings"]["rounds"] = ROUNDS
    keys = {m.key for m in SCALING_METRICS} | {key for key, _ in PLOT_PANELS}
    for n in cfg.scaling_levels:
        for rnd in range(1, ROUNDS + 1):
            for i, c in enumerate(cfg.scaling_candidates):
                s = {"figure": "scaling", "candidate": c, "conns_target": n, "round": rnd}
                s["metrics"] = {k: synthetic_value(i, rnd) * n / 1000 for k in keys}
                s["errors"] = {"not_proxied": 2} if (i, rnd, n) == (0, 1, cfg.scaling_levels[0]) else {}
                results["samples"].append(s)
    return results
