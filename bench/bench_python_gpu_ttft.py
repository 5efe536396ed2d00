"""Time to first token on a GPU: a kvtc file restored by the CUDA backend against recomputing the prefill,
for Llama-family shapes with random weights (transformers, bf16, SDPA), through kvtc.hf.load_cache.

    python3 bench/bench_python_gpu_ttft.py [--shapes smollm2,llama3.2-1b] [--tokens 2048,8192] [--ratios 16,20]

Per shape: a random-weight model, a calibration from its own caches of random tokens (Calibration.fit on
4 sequences of 2,048 tokens), then per prompt length and ratio: prefill = model(prompt) from an empty
cache to the last position's logits; restore = load_cache(file, device="cuda") (the file is in the page
cache; entropy decoding, reconstruction and RoPE on the GPU) + one forward step for the last token. The
weights are random, so this measures time only; median of --repeats after a warm-up. JSON lines on stdout.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

import kvtc
import kvtc.hf

SHAPES = {
    # SmolLM2-135M: 30 layers x 3 KV heads x 64 (p = 5,760)
    "smollm2": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    intermediate_size=1536, vocab_size=49152, rope_theta=1e5, head_dim=64),
    # Llama 3.2 1B: 16 layers x 8 KV heads x 64 (p = 8,192)
    "llama3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                        intermediate_size=8192, vocab_size=128256, rope_theta=5e5, head_dim=64),
}


def timed(fn, repeats):
    out, ts = None, []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return out, statistics.median(ts)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="smollm2,llama3.2-1b")
    ap.add_argument("--tokens", default="2048,8192")
    ap.add_argument("--ratios", default="16,20")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    dev = torch.device("cuda")
    tmp = Path(tempfile.mkdtemp(prefix="kvtc-gpu-ttft-"))
    assert kvtc.cuda_available(), "this build has no CUDA backend or no GPU"
    for shape in a.shapes.split(","):
        torch.manual_seed(0)
        cfg = LlamaConfig(max_position_embeddings=16384, **SHAPES[shape])
        model = LlamaForCausalLM(cfg).to(dev, torch.bfloat16).eval()
        vocab = cfg.vocab_size

        def caches():
            for _ in range(4):
                ids = torch.randint(0, vocab, (1, 2048), device=dev)
                pkv = model(ids, use_cache=True).past_key_values
                yield ([l.keys[0].cpu() for l in pkv.layers], [l.values[0].cpu() for l in pkv.layers])

        t0 = time.perf_counter()
        ratios = [float(r) for r in a.ratios.split(",")]
        cal = kvtc.Calibration.fit(caches(), ratios, rope_theta=SHAPES[shape]["rope_theta"], model_name=shape)
        cal_s = time.perf_counter() - t0
        for n in [int(x) for x in a.tokens.split(",")]:
            ids = torch.randint(0, vocab, (1, n), device=dev)
            model(ids, past_key_values=DynamicCache(), use_cache=True)  # warm-up
            ref, prefill_s = timed(lambda: model(ids, past_key_values=DynamicCache(), use_cache=True).logits[0, -1],
                                   a.repeats)
            cache = DynamicCache()
            model(ids[:, :-1], past_key_values=cache, use_cache=True)
            for ratio in ratios:
                file = tmp / f"{shape}-{n}-{ratio:g}.kvtc"
                size = kvtc.hf.save_cache(cache, file, cal, ratio)

                def restore():
                    c = kvtc.hf.load_cache(file, cal, dtype=torch.bfloat16, device=dev)
                    return model(ids[:, -1:], past_key_values=c, use_cache=True).logits[0, -1]

                restore()  # warm-up (device calibration upload, buffers)
                _, load_s = timed(lambda: kvtc.hf.load_cache(file, cal, dtype=torch.bfloat16, device=dev), a.repeats)
                logits, total_s = timed(restore, a.repeats)
                raw16 = 2 * 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * (n - 1)
                print(json.dumps({
                    "shape": shape, "p": cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim,
                    "tokens": n, "ratio": ratio, "file_bytes": size, "file_ratio": round(raw16 / size, 2),
                    "prefill_ms": round(prefill_s * 1e3, 2), "restore_ms": round(total_s * 1e3, 2),
                    "load_cache_ms": round(load_s * 1e3, 2), "prefill_over_restore": round(prefill_s / total_s, 2),
                    "first_token_agrees": bool(logits.argmax() == ref.argmax()), "calibration_s": round(cal_s, 1),
                    "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                }), flush=True)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
