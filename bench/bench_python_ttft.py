"""Time to first token from a kvtc file against recomputing the prefill, through kvtc.hf and transformers.

    .venv/bin/python bench/bench_python_ttft.py -c CAL.kvtcal [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]
        [--tokens 1024,2048] [--ratios 8,16] [--repeats 3] [--threads 2]

For each prompt length (a prose test document of ../shared/corpus, cut), it times
  prefill: model(prompt) from an empty DynamicCache, to the first token's logits;
  restore: read the .kvtc file, kvtc.hf.load_cache, then model(last token), to the same logits;
and reports the median of --repeats after one untimed warm-up of each, the split of the restore (decompress vs the one-token forward),
the file size and whether the first token agrees. One JSON line per case on stdout.
"""
from __future__ import annotations

import argparse
import json
import lzma
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

import kvtc
import kvtc.hf

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--calibration", required=True)
    ap.add_argument("--model", default=str(REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--tokens", default="1024,2048")
    ap.add_argument("--ratios", default="8,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shared", default=str(REPO.parent / "shared"))
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (the model, the prefill and the restore on the GPU)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    path = Path(a.model)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.eval().to(a.device)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    cal = kvtc.Calibration.load(a.calibration)
    with lzma.open(Path(a.shared) / "corpus" / "prose.test.txt.xz", "rt", encoding="utf-8") as f:
        text = "\n\n".join(f.read()[:-1].split("\n\x1e\n")[:40])
    all_ids = tok(text, return_tensors="pt").input_ids.to(a.device)

    def sync():
        if a.device != "cpu":
            torch.cuda.synchronize()
    tmp = Path(tempfile.mkdtemp(prefix="kvtc-ttft-"))
    for n in [int(x) for x in a.tokens.split(",")]:
        ids = all_ids[:, :n]
        with torch.no_grad():
            model(ids, past_key_values=DynamicCache(), use_cache=True)  # warm-up: allocator, kernels
            prefill_s = []
            for _ in range(a.repeats):
                sync()
                t0 = time.perf_counter()
                ref = model(ids, past_key_values=DynamicCache(), use_cache=True).logits[0, -1]
                sync()
                prefill_s.append(time.perf_counter() - t0)
            cache = DynamicCache()
            model(ids[:, :-1], past_key_values=cache, use_cache=True)
            for ratio in [float(r) for r in a.ratios.split(",")]:
                file = tmp / f"p{n}-{ratio:g}.kvtc"
                size = kvtc.hf.save_cache(cache, file, cal, ratio)
                model(ids[:, -1:], past_key_values=kvtc.hf.load_cache(file, cal, dtype=torch.float32, device=a.device))
                total_s, load_s = [], []
                for _ in range(a.repeats):
                    sync()
                    t0 = time.perf_counter()
                    restored = kvtc.hf.load_cache(file, cal, dtype=torch.float32, device=a.device)
                    sync()
                    t1 = time.perf_counter()
                    logits = model(ids[:, -1:], past_key_values=restored, use_cache=True).logits[0, -1]
                    sync()
                    total_s.append(time.perf_counter() - t0)
                    load_s.append(t1 - t0)
                raw16 = 2 * 2 * cal.n_layers * cal.n_kv_heads * cal.head_dim * (n - 1)
                print(json.dumps({
                    "tokens": n, "ratio": ratio, "file_bytes": size, "file_ratio": round(raw16 / size, 2),
                    "prefill_s": round(statistics.median(prefill_s), 4),
                    "restore_total_s": round(statistics.median(total_s), 4),
                    "restore_load_cache_s": round(statistics.median(load_s), 4),
                    "speedup": round(statistics.median(prefill_s) / statistics.median(total_s), 2),
                    "first_token_agrees": bool(logits.argmax() == ref.argmax()),
                    "threads": a.threads, "device": a.device,
                    "restore_path": "cuda backend" if a.device != "cpu" and kvtc.cuda_available() else "host",
                }), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
