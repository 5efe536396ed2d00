"""Does the coefficients' layout slow the bf16 restore GEMM? (bench/RESULTS.md, "Time to first token
for both shapes and both codecs": codec 3's bf16 restore ran at 3.2x its floor, codec 2's at 1.24x.)

One layer and stream of the restore, as src/cuda/gpu_decoder.cpp calls cuBLAS: per KV head h, the
column-major product c_h[D x m] = basis_h[D x kept] * coef, fp32 output, batched over the heads. Codec
2's coefficients are token-major ([m][kept]: coef is kept x m column-major, "NN"); codec 3's are
component-major ([kept][m]: coef is the transpose of an m x kept matrix, "NT"). Both are timed here
through PyTorch's cuBLAS bf16 batched GEMM with the same strides (bf16 output here, fp32 there), for
the NeMo 12B and Llama 3 8B restores of kvtc_bench_cuda (8192 tokens minus the 132 exact ones; kept
components per stream from that run's codec 3 rows), with the layer's whole restore (every head, both streams, all layers)
extrapolated from one layer. Prints one JSON object per case.

Also timed, at the same shapes: the same bf16 products as one GEMM over the layer's H * D features
(M = 1024 instead of a batch of 8 GEMMs with M = 128; the restore's form since this bench), and the
FP8 reconstruction GEMM (torch._scaled_mm: E4M3 inputs, per-tensor scales, the "TN" form cuBLASLt
needs) with fp32 or bf16 output, with and without a bias (the mean) and fast accumulation.

  python3 bench/bench_restore_gemm_layout.py [tokens]
"""
import json
import sys

import torch

# (name, layers, kv_heads, head_dim, kept components per stream); kept is codec 3's at 16.55x in the
# 2026-12-07 run (its GEMM floor of 16.6 ms over 40 layers x 2 streams at 766 TFLOP/s).
CASES = [("nemo 40x8x128", 40, 8, 128, 9700), ("llama3-8b 32x8x128", 32, 8, 128, 7700)]


def time_ms(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main():
    tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 8192
    m = tokens - 132
    dev = torch.device("cuda")
    for name, layers, heads, d, kept in CASES:
        # The basis of one layer's heads: rows of D features, as [heads][kept][D] row-major = each head's
        # D x kept column-major block (the calibration's [kept][p] slice at this layer).
        basis = torch.randn(heads, kept, d, device=dev, dtype=torch.bfloat16)
        token_major = torch.randn(m, kept, device=dev, dtype=torch.bfloat16)         # codec 2
        component_major = token_major.t().contiguous()                             # codec 3: [kept][m]

        def nn():  # c_h^T [m x D] = coef [m x kept] @ basis_h [kept x D], coef read row-major
            return torch.matmul(token_major.unsqueeze(0).expand(heads, m, kept), basis)

        def nt():  # the same product with coef read from its transpose (component-major storage)
            return torch.matmul(component_major.t().unsqueeze(0).expand(heads, m, kept), basis)

        basis_all = basis.permute(1, 0, 2).reshape(kept, heads * d).contiguous()  # [kept][H*D] of the layer

        def one_nn():  # [m x kept] @ [kept x H*D]: one GEMM for every head, token-major output
            return torch.matmul(token_major, basis_all)

        def one_nt():
            return torch.matmul(component_major.t(), basis_all)

        flops = 2.0 * m * kept * d * heads

        def report(label, fn, scale=1):
            try:
                ms = time_ms(fn) / scale
            except Exception as e:  # a variant this PyTorch or card lacks
                print(json.dumps({"case": name, "layout": label, "error": str(e)[:200]}))
                return
            print(json.dumps({"case": name, "layout": label, "tokens": m, "kept": kept, "layer_stream_ms": round(ms, 4),
                              "restore_all_ms_extrapolated": round(ms * layers * 2, 2),
                              "TFLOPs": round(flops / ms * 1e-9, 1), "device": torch.cuda.get_device_name()}))

        for label, fn in (("token-major (codec 2, NN)", nn), ("component-major (codec 3, NT)", nt),
                          ("one GEMM, token-major", one_nn), ("one GEMM, component-major", one_nt)):
            report(label, fn)
        # FP8: kept padded to a multiple of 16; a = coefficients [m][kept] row-major, b = the basis as a
        # column-major [kept x H*D] (stored [H*D][kept]).
        k16 = (kept + 15) // 16 * 16
        a8 = torch.randn(m, k16, device=dev).to(torch.float8_e4m3fn)
        b8 = torch.randn(heads * d, k16, device=dev).to(torch.float8_e4m3fn).t()
        one_scale = torch.ones((), device=dev, dtype=torch.float32)
        bias = torch.randn(heads * d, device=dev, dtype=torch.bfloat16)
        for out_dtype in (torch.float32, torch.bfloat16):
            for fast in (False, True):
                label = f"FP8 out {str(out_dtype).split('.')[-1]}{' fast-accum' if fast else ''}"
                report(label, lambda o=out_dtype, f=fast: torch._scaled_mm(a8, b8, one_scale, one_scale, out_dtype=o,
                                                                          use_fast_accum=f))
        report("FP8 out bfloat16 + bias", lambda: torch._scaled_mm(a8, b8, one_scale, one_scale, bias=bias,
                                                                 out_dtype=torch.bfloat16))
        # Several layers in one GEMM (M = G * H * D): what larger GEMMs would gain, at the cost of layer
        # readiness in groups of G.
        for g in (2, 4, 8):
            bg = torch.randn(g * heads * d, k16, device=dev).to(torch.float8_e4m3fn).t()
            report(f"FP8 out bfloat16, {g} layers per GEMM (ms per layer)",
                   lambda bg=bg: torch._scaled_mm(a8, bg, one_scale, one_scale, out_dtype=torch.bfloat16), scale=g)
            del bg
        del a8, b8, basis, token_major, component_major, basis_all
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
