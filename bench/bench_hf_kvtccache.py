"""Time per generated token of kvtc.hf.KVTCCache against a DynamicCache, under each OpenMP wait policy.

    .venv/bin/python bench/bench_hf_kvtccache.py -c CAL.kvtcal [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]
        [--prompt-tokens 420] [--new-tokens 32] [--ratio 8] [--block-tokens 64] [--window-tokens 16]
        [--threads 2] [--policies default,PASSIVE]

KVTCCache restores its compressed tokens at every forward step, with kvtc's OpenBLAS GEMMs between
torch's layers, so torch's OpenMP workers and OpenBLAS's share the cores. libgomp reads OMP_WAIT_POLICY
once, when torch loads, so each policy runs in a process of its own (this script again, with --child):
"default" leaves the variable unset (libgomp spins a while after each parallel region), PASSIVE makes
its workers sleep at once. Each child teacher-forces --new-tokens tokens of the model's own greedy
continuation through a DynamicCache and through a KVTCCache (the setting of tests/python/test_hf_smollm2.py:
blocks of 64, a window of 16), after one untimed warm-up of each, and prints one JSON line: seconds per
step of both, the tokens compressed at the end and how many argmax tokens agree.
"""
from __future__ import annotations

import argparse
import json
import lzma
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(a) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    import kvtc
    import kvtc.hf

    torch.set_num_threads(a.threads)
    path = Path(a.model)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    cal = kvtc.Calibration.load(a.calibration)
    with lzma.open(Path(a.shared) / "corpus" / "prose.test.txt.xz", "rt", encoding="utf-8") as f:
        doc = next(d for d in f.read()[:-1].split("\n\x1e\n") if len(d) > 4 * a.prompt_tokens)
    ids = tok(doc, return_tensors="pt").input_ids[:, :a.prompt_tokens]
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=a.new_tokens, do_sample=False,
                             past_key_values=DynamicCache())[0, ids.shape[1]:]

    @torch.no_grad()
    def run(make_cache):
        """Prefill, then one step per reference token; returns (seconds per step, argmax tokens, cache)."""
        cache = make_cache()
        logits = model(ids, past_key_values=cache, use_cache=True).logits[0, -1]
        out = [int(logits.argmax())]
        t0 = time.perf_counter()
        for i in range(len(ref) - 1):
            logits = model(ref[i].view(1, 1), past_key_values=cache, use_cache=True).logits[0, -1]
            out.append(int(logits.argmax()))
        return (time.perf_counter() - t0) / (len(ref) - 1), out, cache

    def kvtc_cache():
        return kvtc.hf.KVTCCache(cal, a.ratio, block_tokens=a.block_tokens, window_tokens=a.window_tokens)

    run(DynamicCache)  # warm-ups
    run(kvtc_cache)
    plain_s, plain_out, _ = run(DynamicCache)
    kvtc_s, kvtc_out, cache = run(kvtc_cache)
    print(json.dumps({
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"), "threads": a.threads,
        "prompt_tokens": a.prompt_tokens, "steps": len(ref) - 1, "ratio": a.ratio,
        "compressed_tokens_at_end": cache.n_compressed_tokens(), "dynamic_s_per_step": round(plain_s, 5),
        "kvtc_s_per_step": round(kvtc_s, 5), "kvtc_over_dynamic": round(kvtc_s / plain_s, 2),
        "argmax_agree": sum(x == y for x, y in zip(plain_out, kvtc_out)), "of": len(plain_out)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--calibration", required=True)
    ap.add_argument("--model", default=str(REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--shared", default=str(REPO.parent / "shared"))
    ap.add_argument("--prompt-tokens", type=int, default=420)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--ratio", type=float, default=8.0)
    ap.add_argument("--block-tokens", type=int, default=64)
    ap.add_argument("--window-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--policies", default="default,PASSIVE", help="OMP_WAIT_POLICY values, one process each")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a)
        return
    for policy in a.policies.split(","):
        env = dict(os.environ)
        env.pop("OMP_WAIT_POLICY", None)
        if policy != "default":
            env["OMP_WAIT_POLICY"] = policy
        subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], env=env, check=True)


if __name__ == "__main__":
    main()
