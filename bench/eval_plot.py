#!/usr/bin/env python3
"""Plot of score lost against the uncompressed model, per method, over the achieved ratio, from one or
more `kvtc eval` / `kvtc eval-merge` JSON reports (drawn by gnuplot, Debian's gnuplot-nox).

usage: bench/eval_plot.py OUT.png REPORT.json [REPORT.json ...] [--tasks fidelity_prose_1k,...]

Each point is a cell's paired difference from the uncompressed model on that cell's own trials, with
its 95% interval as an error bar (`kvtc eval` computes both), at the ratio the method achieved over
the compressed tokens. Reports may hold different methods over different trials (runs that
`kvtc eval-merge` cannot pool because they share trials); where two reports hold the same task,
method and target (for a fixed setting: the same achieved ratio), the one with more trials is drawn.
One panel per task, log-2 ratio axis.
"""
import argparse
import json
import subprocess
import sys


def cells(paths, tasks):
    best = {}
    for path in paths:
        for r in json.load(open(path))["results"]:
            if r["method"] == "none" or "delta_vs_none" not in r or r["achieved_ratio"] <= 0:
                continue
            if tasks and r["task"] not in tasks:
                continue
            # A setting several targets share (KIVI's 2 bits) achieves one ratio: one point.
            key = (r["task"], r["method"], r["target_ratio"] if r["method"].startswith("kvtc") else
                   round(r["achieved_ratio"], 2))
            if key not in best or r["n"] > best[key]["n"]:
                best[key] = r
    return best


def gnuplot_script(best, out):
    tasks = list(dict.fromkeys(k[0] for k in sorted(best)))
    cols = min(2, len(tasks))
    rows = (len(tasks) + cols - 1) // cols
    s = [f"set terminal pngcairo size {640 * cols},{440 * rows} font 'sans,9' noenhanced",
         f"set output '{out}'", f"set multiplot layout {rows},{cols}", "set logscale x 2",
         "set xlabel 'achieved ratio over the compressed tokens'",
         "set ylabel 'points against uncompressed (95% interval)'", "set key outside right", "set grid"]
    for task in tasks:
        methods = list(dict.fromkeys(k[1] for k in sorted(best) if k[0] == task))
        plots = []
        for i, m in enumerate(methods):
            pts = sorted((r["achieved_ratio"], r["delta_vs_none"], *r["delta_ci95"])
                         for k, r in best.items() if k[0] == task and k[1] == m)
            s.append(f"$d{i} << EOD")
            s += [f"{x:g} {d:g} {lo:g} {hi:g}" for x, d, lo, hi in pts]
            s.append("EOD")
            plots.append(f"$d{i} using 1:2:3:4 with yerrorlines title '{m}'")
        s.append(f"set title '{task}'")
        s.append("plot " + ", ".join(plots) + ", 0 with lines dashtype 2 lc rgb 'black' title 'uncompressed'")
    s.append("unset multiplot")
    return "\n".join(s) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--tasks", default="")
    a = ap.parse_args()
    best = cells(a.reports, set(a.tasks.split(",")) if a.tasks else set())
    if not best:
        sys.exit("eval_plot: no cells with a paired difference in these reports")
    p = subprocess.run(["gnuplot"], input=gnuplot_script(best, a.out), text=True, capture_output=True)
    if p.returncode != 0:
        sys.exit("eval_plot: gnuplot failed: " + p.stderr.strip())
    print(f"wrote {a.out}: {len(best)} cells")


if __name__ == "__main__":
    main()
