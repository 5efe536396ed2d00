"""What block mode costs: one cache compressed whole against the same tokens compressed in blocks.

    .venv/bin/python bench/bench_block_mode.py -c CAL.kvtcal CACHE.safetensors ... [--ratios 8,16,32]
        [--blocks 16,64,256] [--codec 2|3]

Whole: tokens [0, T) in one container with the calibration's sinks exact and no exact window (the
window would be exact in a block store too only until it fills a block). Blocks: kvtc.compress_block
over [0, B), [B, 2B), ...: the first block keeps the sinks, no other token is exact, every block is
coded independently at its true positions. Reports bytes (containers summed), the ratio over the raw
16-bit cache, and K and V relative MSE over tokens [sinks, T), one JSON line per case.
"""
from __future__ import annotations

import argparse
import json

import torch
from safetensors import safe_open

import kvtc


def rel_mse(restored: torch.Tensor, ref: torch.Tensor, t0: int) -> float:
    d = (restored[:, :, t0:].float() - ref[:, :, t0:].float()) ** 2
    return float(d.sum() / (ref[:, :, t0:].float() ** 2).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--calibration", required=True)
    ap.add_argument("caches", nargs="+")
    ap.add_argument("--ratios", default="8,16,32")
    ap.add_argument("--blocks", default="16,64,256")
    ap.add_argument("--codec", type=int, default=2, help="2: groups + DEFLATE; 3: ECSQ + rANS")
    a = ap.parse_args()
    cal = kvtc.Calibration.load(a.calibration)
    sinks = cal.n_sink_tokens
    for path in a.caches:
        with safe_open(path, "pt") as f:
            keys = torch.stack([f.get_tensor(f"k.{l}") for l in range(cal.n_layers)])
            values = torch.stack([f.get_tensor(f"v.{l}") for l in range(cal.n_layers)])
        n = keys.shape[2]
        raw16 = 2 * keys.numel() * 2
        for ratio in [float(r) for r in a.ratios.split(",")]:
            cases = [("whole", n)] + [(f"blocks of {b}", int(b)) for b in a.blocks.split(",")]
            for name, b in cases:
                k_out = torch.zeros_like(keys)
                v_out = torch.zeros_like(values)
                total = 0
                if name == "whole":
                    data = kvtc.compress(cal, keys, values, ratio, exact_window=0, codec=a.codec)
                    total = len(data)
                    kvtc.decompress_into(cal, data, k_out, v_out)
                else:
                    for start in range(0, n, b):
                        data = kvtc.compress_block(cal, keys, values, start, min(start + b, n), ratio, codec=a.codec)
                        total += len(data)
                        kvtc.decompress_into(cal, data, k_out, v_out)
                print(json.dumps({
                    "cache": path.rsplit("/", 1)[-1], "tokens": n, "codec": a.codec, "target": ratio, "mode": name,
                    "bytes": total, "ratio": round(raw16 / total, 2),
                    "k_rel_mse": round(rel_mse(k_out, keys, sinks), 6), "v_rel_mse": round(rel_mse(v_out, values, sinks), 6),
                }), flush=True)


if __name__ == "__main__":
    main()
