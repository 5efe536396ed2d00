#!/usr/bin/env python3
"""Paired differences between two methods of one `kvtc eval` / `kvtc eval-merge` JSON report.

usage: bench/eval_paired.py REPORT.json [--a kvtc3] [--b kvtc] [--pairs 8:8,8.6:8,16:16]

`kvtc eval` pairs each method with the uncompressed model only. This pairs method A at one target
with method B at another over the trials both scored (the same prompts), per task: top-1 agreement
(points) and KL divergence from the uncompressed model (nats per token; fidelity tasks only), each as A - B with the
eval's interval for mean-scored tasks, mean +- 1.96 sd / sqrt(n) of the per-trial differences. A pair
`8.6:8` compares A at 8.6x with B at 8x, e.g. two codecs at equal stored size where one of them
overshoots its target. One markdown row per (task, pair) with both achieved ratios.
"""
import argparse
import json
import math


def find(rows, task, method, target):
    for r in rows:
        if r["task"] == task and r["method"] == method and abs(r["target_ratio"] - target) < 1e-9:
            return r
    return None


def paired(a, b, key):
    if any(key not in t for t in a["trials"] + b["trials"]):
        return None  # e.g. KL on a task scored by retrieval only
    bt = {t["trial"]: t[key] for t in b["trials"]}
    diffs = [t[key] - bt[t["trial"]] for t in a["trials"] if t["trial"] in bt]
    n = len(diffs)
    if n == 0:
        return None
    m = sum(diffs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in diffs) / (n - 1)) if n > 1 else 0.0
    h = 1.959964 * sd / math.sqrt(n)
    return m, m - h, m + h, n


def signed(x, digits):
    return ("+" if x >= 0 else "\u2212") + f"{abs(x):.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report")
    ap.add_argument("--a", default="kvtc3")
    ap.add_argument("--b", default="kvtc")
    ap.add_argument("--pairs", default="8:8,16:16", help="A_TARGET:B_TARGET,...")
    args = ap.parse_args()
    rows = json.load(open(args.report))["results"]
    pairs = [tuple(float(x) for x in p.split(":")) for p in args.pairs.split(",") if p]
    tasks = sorted({r["task"] for r in rows}, key=lambda t: ("code" in t, t))
    print(f"| task | {args.a} / {args.b} target | achieved | top-1 {args.a} / {args.b} | {args.a} \u2212 {args.b}, "
          f"points [95%] | KL {args.a} / {args.b} | KL {args.a} \u2212 {args.b} [95%] | n |")
    print("|---|---|---|---|---|---|---|---|")
    for t in tasks:
        for ta, tb in pairs:
            a, b = find(rows, t, args.a, ta), find(rows, t, args.b, tb)
            if a is None or b is None:
                continue
            s, k = paired(a, b, "score"), paired(a, b, "kl")
            if s is None:
                continue
            kl = (f"{a['kl']:.4f} / {b['kl']:.4f} | {signed(k[0], 4)} [{signed(k[1], 4)}, {signed(k[2], 4)}]"
                  if k is not None else "- | -")
            print(f"| {t} | {ta:g}x / {tb:g}x | {a['achieved_ratio']:.2f}x / {b['achieved_ratio']:.2f}x | "
                  f"{a['score']:.2f} / {b['score']:.2f} | {signed(s[0], 2)} [{signed(s[1], 2)}, {signed(s[2], 2)}] | "
                  f"{kl} | {s[3]} |")


if __name__ == "__main__":
    main()
