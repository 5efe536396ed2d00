#!/usr/bin/env python3
"""Markdown tables of a `kvtc eval` / `kvtc eval-merge` JSON report, as bench/RESULTS.md shows them.

usage: bench/eval_table.py REPORT.json [--tasks passkey_1k,...] [--summary | --metric ppl|kl]

Per task, one row per method and one column per target ratio. A cell is the score, the paired
difference from the uncompressed model on the same trials with its 95% interval, and the achieved
ratio over the compressed tokens: `97.7 (-1.0 [-2.6, +0.5]) @16.8x`. A setting that several targets
share (a discrete knob: KIVI's 2 bits, q4_0) is shown once, under the target nearest the ratio it
achieves. A method run on other trials than the uncompressed row has its n beside its name, or in
each cell where its cells differ. --summary prints instead, per task and target, kvtc's difference
with its interval and the best baseline's (the highest score among methods whose achieved ratio is
at least 0.9 times the target). --metric ppl or kl prints, for the fidelity tasks,
the perplexity of the continuation or the KL divergence from the uncompressed model's next-token
distribution (nats per token) instead of the score.
"""
import argparse
import math
import json
import sys


def signed(x):
    return ("+" if x >= 0 else "\u2212") + f"{abs(x):.1f}"


def ratio(r):
    # An eviction method that keeps none of the compressed tokens stores nothing for them: the report's
    # ratio is then 0 (no finite value).
    return f"@{r['achieved_ratio']:.1f}\u00d7" if r["achieved_ratio"] > 0 else "@(none kept)"


def cell(r, metric):
    if metric:
        v = r.get(metric)
        return "" if v is None else (f"{v:.3f}" if metric == "ppl" else f"{v:.4f}") + (
            f" {ratio(r)}" if r["method"] != "none" else "")
    if "delta_vs_none" not in r:
        return f"{r['score']:.1f}"
    lo, hi = r["delta_ci95"]
    return f"{r['score']:.1f} ({signed(r['delta_vs_none'])} [{signed(lo)}, {signed(hi)}]) {ratio(r)}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report")
    ap.add_argument("--tasks", default="")
    ap.add_argument("--summary", action="store_true")
    ap.add_argument("--metric", choices=["ppl", "kl"], default="")
    a = ap.parse_args()
    doc = json.load(open(a.report))
    rows = doc["results"]
    tasks = a.tasks.split(",") if a.tasks else list(dict.fromkeys(r["task"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "none"))
    targets = sorted({r["target_ratio"] for r in rows if r["method"] != "none"})
    out = sys.stdout
    if a.summary:
        out.write("| task (uncompressed) | " + " | ".join(f"{t:g}\u00d7: kvtc / best baseline" for t in targets) + " |\n")
        out.write("|---" * (len(targets) + 1) + "|\n")
    for task in tasks:
        by = {(r["method"], r["target_ratio"]): r for r in rows if r["task"] == task}
        none = next((r for r in rows if r["task"] == task and r["method"] == "none"), None)
        if none is None or (a.metric and a.metric not in none):
            continue
        head = f"{task} ({none['score']:.1f} [{none['ci95'][0]:.1f}, {none['ci95'][1]:.1f}], n {none['n']})"
        if a.metric:
            head = f"{task} ({a.metric} uncompressed {cell(none, a.metric)}, n {none['n']})"
        if a.summary:
            cells = []
            for t in targets:
                k = by.get(("kvtc", t))
                base = [r for (m, tt), r in by.items() if tt == t and m not in ("kvtc", "none")
                        and r["achieved_ratio"] >= 0.9 * t]
                best = max(base, key=lambda r: r["score"], default=None)
                ks = (f"{signed(k['delta_vs_none'])} [{signed(k['delta_ci95'][0])}, {signed(k['delta_ci95'][1])}]"
                      f" @{k['achieved_ratio']:.1f}" if k else "\u2013")
                bs = (f"{best['method']} {signed(best['delta_vs_none'])} @{best['achieved_ratio']:.1f}"
                      if best else "none reach it")
                cells.append(f"{ks} / {bs}")
            out.write(f"| {head} | " + " | ".join(cells) + " |\n")
            continue
        out.write(f"\n**{head}**\n\n| method | " + " | ".join(f"{t:g}\u00d7" for t in targets) + " |\n")
        out.write("|---" * (len(targets) + 1) + "|\n")
        for m in methods:
            if not any((m, t) in by for t in targets):
                continue
            # A setting that several targets share (a discrete knob) is shown once, under the target
            # nearest its achieved ratio.
            shown = {}
            for t in targets:
                r = by.get((m, t))
                if r is None:
                    continue
                best = shown.get(r["setting"])
                achieved = r["achieved_ratio"] if r["achieved_ratio"] > 0 else t
                if best is None or abs(math.log(t / achieved)) < abs(math.log(best / achieved)):
                    shown[r["setting"]] = t
            cells = [by[(m, t)] if (m, t) in by and shown[by[(m, t)]["setting"]] == t else None for t in targets]
            n = {r["n"] for r in cells if r}
            # One n for the row goes beside the name (when it is not the uncompressed row's); a row whose
            # cells have different n gives each cell its own.
            cols = [(cell(r, a.metric) + (f" n {r['n']}" if len(n) > 1 else "")) if r else "" for r in cells]
            label = m if n == {none["n"]} or len(n) > 1 else f"{m} (n {n.pop()})"
            out.write(f"| {label} | " + " | ".join(cols) + " |\n")


if __name__ == "__main__":
    main()
