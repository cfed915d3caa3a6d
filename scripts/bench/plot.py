"""scaling.png: five panels (RSS, RSS per connection, CPU per 100k requests, p99 latency, and how
far a worker's sessions are from the mean) against the number of held connections, one line per candidate with min–max error bars, drawn by gnuplot.

Without gnuplot there is no plot (scaling.md then has no image link): scripts/bench.sh installs
gnuplot-nox, and a hand-drawn substitute was one more thing to keep working."""

import shutil

from .common import RunError, log
from .procs import run_cmd
from .scaling import scaling_label
from .stats import med, values

PLOT_PANELS = [("rss_mib", "Balancer RSS holding the connections (MiB)"),
               ("kib_per_conn", "RSS per held connection (KiB)"),
               ("cpu_per_100k", "Balancer CPU-s per 100k requests (wrk -c50 on top)"),
               ("p99_ms", "p99 latency, wrk -c50 keep-alive (ms)"),
               # HAProxy's threads share their sessions: no line for it here.
               ("spread_pct", "Sessions per worker: largest gap from the mean (%)")]


def plot_series(results):
    """{candidate: {metric: [(conns, median, min, max), ...]}}"""
    cfg, samples = results["settings"], results["samples"]
    series = {}
    for c in cfg["scaling_candidates"]:
        series[c] = {}
        for key, _ in PLOT_PANELS:
            pts = []
            for n in cfg["scaling_levels"]:
                vals = values(samples, "scaling", c, key, conns=n)
                if vals:
                    pts.append((n, med(vals), min(vals), max(vals)))
            series[c][key] = pts
    return series


def plot_gnuplot(results, out_dir):
    """Writes scaling-CANDIDATE.dat, scaling.gp and scaling.png in out_dir; the PNG's path, or
    None (said in the log) when gnuplot is missing or fails with both terminals."""
    series = plot_series(results)
    if not shutil.which("gnuplot"):
        log("gnuplot not found: no scaling plot (scripts/bench.sh installs gnuplot-nox)")
        return None
    files = {}
    for c, per in series.items():
        path = out_dir / f"scaling-{c}.dat"
        rows = ["# conns " + " ".join(f"{k} {k}_min {k}_max" for k, _ in PLOT_PANELS)]
        levels = results["settings"]["scaling_levels"]
        for n in levels:
            cols = []
            for key, _ in PLOT_PANELS:
                pt = next((p for p in per[key] if p[0] == n), None)
                cols += [str(v) for v in pt[1:]] if pt else ["NaN"] * 3
            rows.append(f"{n} " + " ".join(cols))
        path.write_text("\n".join(rows) + "\n")
        files[c] = path
    png = out_dir / "scaling.png"
    xmax = max(results["settings"]["scaling_levels"]) * 1.08
    script = []
    for i, (key, title) in enumerate(PLOT_PANELS):
        col = 2 + 3 * i
        plots = ", ".join(f"'{files[c]}' using 1:{col}:{col + 1}:{col + 2} with yerrorlines lw 2 title '{scaling_label(c)}'"
                          for c in files)
        quoted = title.replace("'", "''")  # gnuplot's single-quoted strings double a quote
        script += [f"set title '{quoted}'", f"plot {plots}"]
    body = "\n".join(script)
    # pngcairo draws better; the plain png terminal is there for gnuplot builds without cairo.
    for terminal in ("pngcairo size 1800,900 font ',10'", "png size 1800,900"):
        gp = f"""set terminal {terminal}
set output '{png}'
set multiplot layout 2,3 title 'shunt vs HAProxy vs nginx, 2 workers: cost as held connections grow ({results["meta"]["date"]})'
set termoption noenhanced
set grid
set key top left
set offsets 0, 0, graph 0.3, 0
set xlabel 'idle connections held through the balancer'
set xrange [0:{xmax}]
set yrange [0:*]
{body}
unset multiplot
"""
        (out_dir / "scaling.gp").write_text(gp)
        try:
            r = run_cmd(["gnuplot", str(out_dir / "scaling.gp")], 60)
        except RunError:
            continue
        if r.returncode == 0 and png.exists() and png.stat().st_size > 0:
            return png
        log(f"gnuplot with terminal {terminal.split()[0]} failed: {r.stderr.strip()[:300]}")
    return None
