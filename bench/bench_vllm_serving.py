"""Serving on the CPU with vLLM and SmolLM2: time to first token of a request whose prefix is restored by
kvtc's connector from each store tier, against recomputing it; and how many such prefixes a host-memory
budget holds with and without kvtc.

    .venv/bin/python bench/bench_vllm_serving.py --calibration CAL [--prefixes 2048,4096,8000] \
        [--ratio 16] [--repeats 3] [--redis-socket PATH] [--out bench/out/vllm_serving.json]

Each engine runs in its own process (tests/python/vllm_scenario.py), with fp32 weights and KV:
- "prefill":  no connector; the reader's whole prompt is computed (vLLM's prefix cache dropped first);
- "host":     the connector; a writer request fills the store, vLLM's prefix cache is dropped, the
              reader's prefix comes from the host tier;
- "disk":     a second engine process, with an empty host tier, reads the prefix the "host" run wrote
              to the disk tier (write-through); later repeats hit host after promotion;
- "redis":    the same from a Redis server only (--redis-socket), when given: the "host" run wrote
              through to it as well.
Time to first token is the wall time of LLM.generate for one request with one output token. The
reader's prompt is the prefix and a 12-token question. Prints a Markdown table; writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "tests" / "python" / "vllm_scenario.py"
BYTES_PER_TOKEN_16BIT = 2 * 30 * 3 * 64 * 2  # SmolLM2: K and V, 30 layers x 3 KV heads x 64 dims, 2 bytes


def run(name: str, work: Path, args: list[str]) -> dict:
    out = work / f"{name}.json"
    log = work / f"{name}.log"
    cmd = [sys.executable, str(SCENARIO), "--out", str(out), "--dtype", "float32", "--continuation-tokens", "2",
           *args]
    print(f"[{name}] {' '.join(cmd[2:])}", flush=True)
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.exit(f"{name} failed ({rc}); see {log}:\n" + log.read_text()[-3000:])
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calibration", required=True)
    ap.add_argument("--model", default=str(REPO / "models" / "SmolLM2-135M-Instruct"))
    ap.add_argument("--shared", default=str(REPO.parent / "shared"))
    ap.add_argument("--prefixes", default="2048,4096,8000")
    ap.add_argument("--ratio", type=float, default=16.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--redis-socket")
    ap.add_argument("--budget-gib", type=float, default=4.0)
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "vllm_serving.json"))
    args = ap.parse_args()
    results = []
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for prefix in [int(p) for p in args.prefixes.split(",")]:
            common = ["--model", args.model, "--shared", args.shared, "--prefix-tokens", str(prefix),
                      "--repeats", str(args.repeats)]
            kv = ["--calibration", args.calibration, "--ratio", str(args.ratio)]
            store = work / f"store-{prefix}"
            row = {"prefix_tokens": prefix}
            row["prefill"] = run(f"prefill-{prefix}", work, common + ["--no-writer"])
            cont = ["--continuation", str(work / f"prefill-{prefix}.json")]
            # A prefix of its own per run: blocks left in the server by an earlier run must not be found.
            redis = (["--redis-socket", args.redis_socket, "--redis-prefix", f"bench:{os.getpid()}:{prefix}:"]
                     if args.redis_socket else [])
            # The writer's store writes through to disk (and Redis); each reader process has one tier only.
            row["host"] = run(f"host-{prefix}", work, common + kv + cont + ["--store-dir", str(store)] + redis)
            row["disk"] = run(f"disk-{prefix}", work, common + kv + cont + ["--store-dir", str(store), "--no-writer"])
            if args.redis_socket:
                row["redis"] = run(f"redis-{prefix}", work, common + kv + cont + redis + ["--no-writer"])
            results.append(row)
            Path(args.out).write_text(json.dumps(results, indent=1))  # after each prefix: a failure keeps the rest

    tiers = ["host", "disk"] + (["redis"] if args.redis_socket else [])
    print(f"\nTime to first token (s), {args.ratio:g}x, median of {args.repeats} repeats where marked; "
          "speed-up = prefill / restore")
    head = "| prefix tokens | prefill | " + " | ".join(f"{t} (first)" for t in tiers) + " | host (repeats) | speed-up (host repeats) |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for row in results:
        pre = statistics.median([row["prefill"]["first_reader_s"]] + row["prefill"]["repeats_s"])
        rep = statistics.median(row["host"]["repeats_s"]) if row["host"]["repeats_s"] else float("nan")
        firsts = " | ".join(f"{row[t]['first_reader_s']:.2f}" for t in tiers)
        print(f"| {row['prefix_tokens']} | {pre:.2f} | {firsts} | {rep:.2f} | {pre / rep:.1f}x |")
    print(f"\nPrefixes in {args.budget_gib:g} GiB of host memory")
    print("| prefix tokens | 16-bit KV per prefix (MB) | kvtc per prefix (MB) | prefixes without kvtc | with kvtc |")
    print("|---|---|---|---|---|")
    budget = args.budget_gib * (1 << 30)
    for row in results:
        conn = row["host"]["connector"]
        raw = row["prefix_tokens"] * BYTES_PER_TOKEN_16BIT
        per_token = conn["bytes_saved"] / (conn["blocks_saved"] * row["host"]["block_size"])
        comp = per_token * row["prefix_tokens"]
        print(f"| {row['prefix_tokens']} | {raw / 1e6:.1f} | {comp / 1e6:.2f} | {int(budget // raw)} | "
              f"{int(budget // comp)} |")
    print("\nRestore stages in the host run (s, all readers): " + ", ".join(
        f"{r['prefix_tokens']}: fetch+decode {r['host']['connector']['fetch_decode_s']:.2f}, reconstruct "
        f"{r['host']['connector']['restore_s']:.2f}, save {r['host']['connector']['save_s']:.2f}" for r in results))


if __name__ == "__main__":
    main()
