"""Prefill baseline for the CUDA restore benchmark (bench/RESULTS.md, "CUDA backend (H200)").

Times the prefill of an 8K-token prompt with PyTorch (eager, bf16, scaled_dot_product_attention with a
causal mask, GQA) for three Llama-architecture shapes with random weights (prefill cost does not depend
on weight values): the reference model kvtc-ref-26m, Mistral NeMo 12B and Llama 3 8B. The time covers every
layer's K/V and the last position's logits, i.e. what restoring a compressed cache replaces.
Prints one JSON object per shape.
"""
import json
import sys

import torch
import torch.nn.functional as F

SHAPES = {
    "ref 8x2x128": dict(layers=8, hidden=512, heads=4, kv_heads=2, head_dim=128, inter=1408, vocab=4096, theta=1e5),
    "nemo 40x8x128": dict(layers=40, hidden=5120, heads=32, kv_heads=8, head_dim=128, inter=14336, vocab=131072,
                          theta=1e6),
    "llama3-8b 32x8x128": dict(layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128, inter=14336,
                               vocab=128256, theta=5e5),
}


def rms_norm(x, w, eps=1e-5):
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def prefill(p, w, ids, cos, sin):
    t = ids.shape[0]
    x = w["embed"][ids]
    kv = []
    for layer in w["layers"]:
        h = rms_norm(x, layer["n1"])
        q = (h @ layer["wq"]).view(t, p["heads"], p["head_dim"]).transpose(0, 1)
        k = (h @ layer["wk"]).view(t, p["kv_heads"], p["head_dim"]).transpose(0, 1)
        v = (h @ layer["wv"]).view(t, p["kv_heads"], p["head_dim"]).transpose(0, 1)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        kv.append((k, v))
        a = F.scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), is_causal=True,
                                           enable_gqa=True)
        x = x + a.squeeze(0).transpose(0, 1).reshape(t, -1) @ layer["wo"]
        h = rms_norm(x, layer["n2"])
        x = x + (F.silu(h @ layer["wg"]) * (h @ layer["wu"])) @ layer["wd"]
    logits = rms_norm(x[-1:], w["norm"]) @ w["lm_head"]
    return logits, kv


def main():
    tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 8192
    dev, dt = "cuda", torch.bfloat16
    torch.manual_seed(0)
    for name, p in SHAPES.items():
        g = lambda *s: torch.randn(*s, device=dev, dtype=dt) * 0.02
        hd, H, KV = p["head_dim"], p["heads"], p["kv_heads"]
        w = {
            "embed": g(p["vocab"], p["hidden"]),
            "norm": torch.ones(p["hidden"], device=dev, dtype=dt),
            "lm_head": g(p["hidden"], p["vocab"]),
            "layers": [
                dict(n1=torch.ones(p["hidden"], device=dev, dtype=dt), n2=torch.ones(p["hidden"], device=dev, dtype=dt),
                     wq=g(p["hidden"], H * hd), wk=g(p["hidden"], KV * hd), wv=g(p["hidden"], KV * hd),
                     wo=g(H * hd, p["hidden"]), wg=g(p["hidden"], p["inter"]), wu=g(p["hidden"], p["inter"]),
                     wd=g(p["inter"], p["hidden"]))
                for _ in range(p["layers"])
            ],
        }
        n_params = sum(v.numel() for l in w["layers"] for v in l.values()) + w["embed"].numel() + w["lm_head"].numel()
        inv = 1.0 / (p["theta"] ** (torch.arange(0, hd, 2, device=dev, dtype=torch.float64) / hd))
        ang = torch.arange(tokens, device=dev, dtype=torch.float64)[:, None] * inv[None]
        cos, sin = ang.cos().to(dt), ang.sin().to(dt)  # [tokens, head_dim / 2], broadcast over heads
        ids = torch.randint(0, p["vocab"], (tokens,), device=dev)
        times = []
        with torch.no_grad():
            for i in range(7):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                prefill(p, w, ids, cos, sin)
                e.record()
                torch.cuda.synchronize()
                if i >= 2:
                    times.append(s.elapsed_time(e) * 1e-3)
        times.sort()
        print(json.dumps(dict(prefill=name, tokens=tokens, params=n_params, median_s=times[len(times) // 2],
                              min_s=times[0], torch=torch.__version__, device=torch.cuda.get_device_name())),
              flush=True)
        del w
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
