"""Medians over rounds and how numbers are printed, shared by the run log, the report, the
syscall pick and the plot, so a cell and its log line always agree."""

import statistics


def fmt(x):
    if x is None:
        return "—"
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def fmt_ratio(r):
    return f"{r:.2f}×" if r >= 0.1 else f"{r:.2g}×"


def values(samples, figure, cand, key, conns=None):
    return [s["metrics"][key] for s in samples
            if s["figure"] == figure and s["candidate"] == cand and "metrics" in s
            and s["metrics"].get(key) is not None and (conns is None or s.get("conns_target") == conns)]


def med(vals):
    return statistics.median(vals) if vals else None
