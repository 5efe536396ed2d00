"""Time to first token on a GPU: a kvtc file restored by the CUDA backend against recomputing the prefill,
for Llama-family shapes with random weights (transformers, bf16, SDPA), through kvtc.hf.load_cache.

    python3 -u bench/bench_python_gpu_ttft.py [--shapes smollm2,llama3.2-1b] [--tokens 2048,8192]
        [--ratios 16,20] [--calib-tokens 2048] [--budget 420] [--shape-timeout 240]

Each shape runs in a child process with a timeout (--shape-timeout, and never past --budget seconds
from the start), so one slow stage costs that shape only; a shape that runs out of time prints a JSON
line with "error". Progress goes to stderr, flushed, with the seconds since the child started.

Per shape: a random-weight model built on the GPU, a calibration from its own cache of --calib-tokens
random tokens (Calibration.fit on the host: the exact PCA solves a p x p eigenproblem, O(p^3), which
is most of a shape's time; the rank is at most the compressible tokens, so keep --calib-tokens at
least p / 4 for allocations that keep as many components as a real model's), then per prompt length
and ratio: prefill = model(prompt) from an empty cache to the last position's logits; restore =
load_cache(file, device="cuda") (the file is in the page cache; entropy decoding, reconstruction and
RoPE on the GPU) + one forward step for the last token. Both compute the last position's logits only
(logits_to_keep=1). Also: decompress of the file by the CUDA backend against the host decoder plus a
copy to the device (the path CUDA tensors took before the backend was bound), and the relative L2
error of the restored cache against the model's (all tokens; exact ones add none). The weights are
random, so the logits are nearly flat and the first token says little; median of --repeats after a
warm-up. JSON lines on stdout.

Real-model mode, SmolLM2-135M-Instruct with its own weights (or another Llama-family GGUF):

    python3 -u bench/bench_python_gpu_ttft.py --model-gguf models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --calibration CAL.kvtcal [--tokens 1024,2048,4096,8192] [--ratios 8,16] [--shared DIR] [--greedy 16]

loads the model from the GGUF through transformers (bf16 on a GPU, fp32 on a CPU; SDPA) and a
calibration made from it (tests/python/smollm2_common.py as a script makes the tests' one); the
prompts are the first tokens of the prose test split of DIR/corpus (default ../shared; held out from
any calibration), cut to each length. Per length: prefill as above; per ratio: save_cache to a file,
then restore = load_cache(file, device=...) (reading the file: page cache) + one forward step, and
restore_cold = the same after evicting the file from the page cache (posix_fadvise DONTNEED, after
fsync; a VM's disk may cache it anyway). Also: whether the first token equals the prefill's, and the
teacher-forced agreement of --greedy tokens: the uncompressed prefill's greedy continuation is fed to
the restored cache and each position's argmax compared with it (as tests/python/test_hf_smollm2.py
does). --graphs adds restore_graph_ms: the one-token step replayed from a CUDA graph captured once per
length on a StaticCache into which load_cache's tensors are copied (capture not timed; "graph_error"
says why where it fails).
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    # SmolLM2-135M: 30 layers x 3 KV heads x 64 (p = 5,760)
    "smollm2": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    intermediate_size=1536, vocab_size=49152, rope_theta=1e5, head_dim=64),
    # Llama 3.2 1B: 16 layers x 8 KV heads x 64 (p = 8,192)
    "llama3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                        intermediate_size=8192, vocab_size=128256, rope_theta=5e5, head_dim=64),
    # A smoke test of this script (p = 256), also on a CPU: --shapes tiny --device cpu --tokens 300
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=256, vocab_size=1000, rope_theta=1e4, head_dim=64),
}

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def _device(a: argparse.Namespace):
    """The torch device of --device; exits if it is CUDA and kvtc cannot restore there."""
    import torch

    import kvtc

    dev = torch.device(a.device)
    if dev.type == "cuda" and not kvtc.cuda_available():
        raise SystemExit("this build has no CUDA backend or no GPU (kvtc.cuda_available() is False)")
    return dev


def _timed(fn, repeats: int, *, gpu: bool, before=None):
    """fn's last result and the median wall time of `repeats` calls, the GPU synchronised around each;
    `before` (if any) runs ahead of each call, outside the timing."""
    import torch

    out, ts = None, []
    for _ in range(repeats):
        if before:
            before()
        if gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if gpu:
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return out, statistics.median(ts)


def run_shape(a: argparse.Namespace, shape: str) -> None:
    import torch
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    import kvtc
    import kvtc.hf

    dev = _device(a)
    gpu = dev.type == "cuda"
    timed = functools.partial(_timed, gpu=gpu)

    tmp = Path(tempfile.mkdtemp(prefix="kvtc-gpu-ttft-"))
    torch.manual_seed(0)
    cfg = LlamaConfig(max_position_embeddings=16384, **SHAPES[shape])
    dtype = torch.bfloat16 if gpu else torch.float32
    log(f"{shape}: building the random-weight model on {dev}")
    with torch.device(dev):  # initialised where it runs: a 1B model's init on the host takes long
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    vocab, p = cfg.vocab_size, cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim
    log(f"{shape}: model ready ({sum(t.numel() for t in model.parameters()) / 1e6:.0f} M parameters, p = {p})")

    with torch.no_grad():
        ids = torch.randint(0, vocab, (1, a.calib_tokens), device=dev)
        pkv = model(ids, use_cache=True, logits_to_keep=1).past_key_values
        pair = ([l.keys[0].cpu() for l in pkv.layers], [l.values[0].cpu() for l in pkv.layers])
        del pkv
        ratios = [float(r) for r in a.ratios.split(",")]
        log(f"{shape}: calibrating on {a.calib_tokens} tokens (host, exact PCA of p = {p})")
        t0 = time.perf_counter()
        cal = kvtc.Calibration.fit([pair], ratios, rope_theta=SHAPES[shape]["rope_theta"], model_name=shape)
        cal_s = time.perf_counter() - t0
        info = cal.info()
        log(f"{shape}: calibration done in {cal_s:.1f} s, rank {info['rank']}")

        for n in [int(x) for x in a.tokens.split(",")]:
            ids = torch.randint(0, vocab, (1, n), device=dev)

            def prefill():
                return model(ids, past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1).logits[0, -1]

            prefill()  # warm-up: allocator, kernels
            ref, prefill_s = timed(prefill, a.repeats)
            log(f"{shape} {n} tokens: prefill {prefill_s * 1e3:.2f} ms")
            cache = DynamicCache()
            model(ids[:, :-1], past_key_values=cache, use_cache=True, logits_to_keep=1)
            for ratio in ratios:
                file = tmp / f"{shape}-{n}-{ratio:g}.kvtc"
                t0 = time.perf_counter()
                size = kvtc.hf.save_cache(cache, file, cal, ratio)
                save_s = time.perf_counter() - t0

                def load():
                    return kvtc.hf.load_cache(file, cal, dtype=dtype, device=dev)

                def restore():
                    c = load()
                    return model(ids[:, -1:], past_key_values=c, use_cache=True, logits_to_keep=1).logits[0, -1]

                restore()  # warm-up (device calibration upload, buffers)
                _, load_s = timed(load, a.repeats)
                logits, total_s = timed(restore, a.repeats)

                # The same file decompressed by the CUDA backend and, as before it was bound, by the
                # host decoder with a copy to the device; the error of the restored cache.
                def dec_gpu():
                    return kvtc.decompress(cal, file.read_bytes(), framework="torch", dtype=dtype, device=dev)

                def dec_host():
                    k, v = kvtc.decompress(cal, file.read_bytes(), framework="torch", dtype=dtype)
                    return k.to(dev), v.to(dev)

                (gk, gv), dec_gpu_s = timed(dec_gpu, a.repeats)
                dec_host()
                (hk, hv), dec_host_s = timed(dec_host, min(a.repeats, 3))
                ok = torch.stack([l.keys[0] for l in cache.layers]).float()
                ov = torch.stack([l.values[0] for l in cache.layers]).float()

                def rel(x, y):
                    return float((x.float() - y).norm() / y.norm())

                errors = {"keys": round(rel(gk, ok), 4), "values": round(rel(gv, ov), 4),
                          "gpu_vs_host_keys": float(f"{rel(gk, hk.float()):.2e}"),
                          "gpu_vs_host_values": float(f"{rel(gv, hv.float()):.2e}")}
                del gk, gv, hk, hv, ok, ov
                raw16 = 2 * 2 * p * (n - 1)
                alloc = info["allocations"][str(ratio)] if str(ratio) in info["allocations"] else {}
                print(json.dumps({
                    "shape": shape, "p": p, "tokens": n, "ratio": ratio, "file_bytes": size,
                    "file_ratio": round(raw16 / size, 2),
                    "prefill_ms": round(prefill_s * 1e3, 2), "restore_ms": round(total_s * 1e3, 2),
                    "load_cache_ms": round(load_s * 1e3, 2), "prefill_over_restore": round(prefill_s / total_s, 2),
                    "decompress_gpu_ms": round(dec_gpu_s * 1e3, 2), "decompress_host_ms": round(dec_host_s * 1e3, 2),
                    "relative_error": errors,
                    "first_token_agrees": bool(logits.argmax() == ref.argmax()),
                    "save_cache_s": round(save_s, 2), "calibration_s": round(cal_s, 1),
                    "calibration_tokens": a.calib_tokens, "rank": info["rank"],
                    "kept_components": {k: v.get("kept_components") for k, v in alloc.items()},
                    "restore_path": "cuda backend" if gpu and kvtc.cuda_available() else "host",
                    "device": torch.cuda.get_device_name() if gpu else "cpu", "torch": torch.__version__,
                }), flush=True)
                log(f"{shape} {n} tokens {ratio:g}x: restore {total_s * 1e3:.2f} ms (load_cache {load_s * 1e3:.2f})")


def _prose_ids(tok, shared: Path, n: int):
    """The first n tokens of the prose test split, its documents joined by blank lines."""
    import lzma

    with lzma.open(shared / "corpus" / "prose.test.txt.xz", "rt", encoding="utf-8") as f:
        docs = f.read()[:-1].split("\n\x1e\n")
    for k in (40, len(docs)):
        ids = tok("\n\n".join(docs[:k]), return_tensors="pt").input_ids
        if ids.shape[1] >= n:
            return ids[:, :n]
    raise SystemExit(f"the prose test split has only {ids.shape[1]} tokens, fewer than {n}")


def _evict(path: Path) -> None:
    """Drops `path` from the page cache (advice: the kernel may keep it)."""
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _fs_type(path: Path) -> str:
    """The file system holding `path` (from /proc/mounts; tmpfs keeps files in memory, so "cold" is warm)."""
    try:
        best, kind = "", "?"
        for line in Path("/proc/mounts").read_text().splitlines():
            mount, fs = line.split()[1:3]
            if str(path.resolve()).startswith(mount.rstrip("/") + "/") and len(mount) > len(best):
                best, kind = mount, fs
        return kind
    except OSError:
        return "?"


class _GraphStep:
    """The one-token forward step on a StaticCache of `n` positions, captured in a CUDA graph (on a CPU:
    run eagerly, which checks the static-cache path only): run(cache) copies a restored DynamicCache of
    n - 1 tokens into the static buffers, resets the write position to n - 1 and replays."""

    def __init__(self, model, n: int, token, dtype):
        import torch
        from transformers import StaticCache

        self.model, self.n = model, n
        self.capture = token.device.type == "cuda"
        self.cache = StaticCache(config=model.config, max_cache_len=n)
        self.token = token.clone()
        self.pos = torch.tensor([[n - 1]], device=token.device)  # position_ids: the graph's, not the cache's
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        # The layers initialise lazily on their first update: fill positions [0, n - 1) with zeros.
        z = torch.zeros((1, cfg.num_key_value_heads, n - 1, head_dim), dtype=dtype, device=token.device)
        for l in range(cfg.num_hidden_layers):
            self.cache.update(z, z, l)
        if not self.capture:
            return
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):  # warm-up outside the capture, as torch.cuda.graph asks
                self._reset()
                self._step()
        torch.cuda.current_stream().wait_stream(s)
        self._reset()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._step()

    def _reset(self):
        # Each update advances a layer's write position (a device tensor the graph reads) in place.
        for layer in self.cache.layers:
            layer.cumulative_length.fill_(self.n - 1)

    def _step(self):
        return self.model(self.token, past_key_values=self.cache, position_ids=self.pos, use_cache=True,
                          logits_to_keep=1).logits[0, -1]

    def run(self, restored):
        for l, layer in enumerate(restored.layers):
            self.cache.layers[l].keys[:, :, : self.n - 1].copy_(layer.keys)
            self.cache.layers[l].values[:, :, : self.n - 1].copy_(layer.values)
        self._reset()
        if not self.capture:
            return self._step()
        self.graph.replay()
        return self.logits


def run_real(a: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    import kvtc
    import kvtc.hf

    dev = _device(a)
    gpu = dev.type == "cuda"
    timed = functools.partial(_timed, gpu=gpu)

    path = Path(a.model_gguf)
    dtype = torch.bfloat16 if gpu else torch.float32
    log(f"real: loading {path.name} ({dtype}) on {dev}")
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype,
                                                 attn_implementation="sdpa")
    model = model.to(dev).eval()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    cal = kvtc.Calibration.load(a.calibration)
    cfg = model.config
    p = cfg.num_hidden_layers * cfg.num_key_value_heads * cal.head_dim
    lengths = [int(x) for x in a.tokens.split(",")]
    all_ids = _prose_ids(tok, Path(a.shared), max(lengths)).to(dev)
    ratios = [float(r) for r in a.ratios.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="kvtc-gpu-ttft-real-", dir=a.tmp_dir))
    log(f"real: model, tokenizer and calibration ready (p = {p}, rank {cal.info()['rank']})")

    def forward(x, cache):
        return model(x, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[0, -1]

    with torch.no_grad():
        for n in lengths:
            ids = all_ids[:, :n]

            def prefill():
                return forward(ids, DynamicCache())

            prefill()  # warm-up: allocator, kernels
            ref, prefill_s = timed(prefill, a.repeats)
            # The uncompressed run's greedy continuation (from a full prefill).
            full = DynamicCache()
            logits, greedy = forward(ids, full), []
            for i in range(a.greedy):
                greedy.append(logits.argmax())
                if i + 1 < a.greedy:
                    logits = forward(greedy[-1].view(1, 1), full)
            del full
            cache = DynamicCache()
            forward(ids[:, :-1], cache)
            log(f"real {n} tokens: prefill {prefill_s * 1e3:.2f} ms")
            graph, graph_error = None, None
            if a.graphs:
                try:
                    t0 = time.perf_counter()
                    graph = _GraphStep(model, n, ids[:, -1:], dtype)
                    log(f"real {n} tokens: static-cache step ready in {time.perf_counter() - t0:.2f} s "
                        f"({'captured in a CUDA graph' if graph.capture else 'eager: no CUDA'})")
                except Exception as e:  # the column is optional: say why and go on
                    graph_error = f"{type(e).__name__}: {e}"[:300]
                    log(f"real {n} tokens: no CUDA graph: {graph_error}")
            for ratio in ratios:
                file = tmp / f"real-{n}-{ratio:g}.kvtc"
                t0 = time.perf_counter()
                report = {}
                size = kvtc.hf.save_cache(cache, file, cal, ratio, report=report)
                save_s = time.perf_counter() - t0

                def load():
                    return kvtc.hf.load_cache(file, cal, dtype=dtype, device=dev)

                def restore():
                    return forward(ids[:, -1:], load())

                restore()  # warm-up (device calibration upload, buffers)
                _, load_s = timed(load, a.repeats)
                logits, total_s = timed(restore, a.repeats)
                _, cold_s = timed(restore, a.repeats, before=lambda: _evict(file))
                # Teacher-forced agreement of the greedy tokens, from the restored cache.
                c = load()
                step, agree = forward(ids[:, -1:], c), 0
                for i in range(a.greedy):
                    agree += int(step.argmax() == greedy[i])
                    if i + 1 < a.greedy:
                        step = forward(greedy[i].view(1, 1), c)
                rk = torch.stack([l.keys[0] for l in c.layers]).float()[:, :, : n - 1]
                rv = torch.stack([l.values[0] for l in c.layers]).float()[:, :, : n - 1]
                ok = torch.stack([l.keys[0] for l in cache.layers]).float()
                ov = torch.stack([l.values[0] for l in cache.layers]).float()
                errors = {"keys": round(float((rk - ok).norm() / ok.norm()), 4),
                          "values": round(float((rv - ov).norm() / ov.norm()), 4)}
                del c, rk, rv, ok, ov
                row = {
                    "shape": "smollm2-real" if "SmolLM2" in path.name else path.stem, "model": path.name,
                    "dtype": str(dtype).replace("torch.", ""), "p": p, "tokens": n, "ratio": ratio,
                    "file_bytes": size, "file_ratio": round(2 * 2 * p * (n - 1) / size, 2),
                    "ratio_compressed_tokens": round(report.get("ratio_compressed_tokens", 0), 2),
                    "prefill_ms": round(prefill_s * 1e3, 2), "restore_ms": round(total_s * 1e3, 2),
                    "load_cache_ms": round(load_s * 1e3, 2), "restore_cold_ms": round(cold_s * 1e3, 2),
                    "prefill_over_restore": round(prefill_s / total_s, 2),
                    "first_token_agrees": bool(logits.argmax() == ref.argmax()),
                    "greedy_agreement": f"{agree}/{a.greedy}",
                    "relative_error": errors, "save_cache_s": round(save_s, 2), "file_fs": _fs_type(file),
                }
                if graph is not None:
                    def restore_graph():
                        return graph.run(load())

                    restore_graph()
                    glogits, graph_s = timed(restore_graph, a.repeats)
                    row["restore_graph_ms"] = round(graph_s * 1e3, 2)
                    row["graph_captured"] = graph.capture
                    row["prefill_over_restore_graph"] = round(prefill_s / graph_s, 2)
                    row["graph_first_token_agrees"] = bool(glogits.argmax() == ref.argmax())
                    row["graph_vs_eager_logits_max_abs"] = float(f"{(glogits.float() - logits.float()).abs().max():.3g}")
                elif graph_error:
                    row["graph_error"] = graph_error
                row.update({"repeats": a.repeats,
                            "restore_path": "cuda backend" if gpu and kvtc.cuda_available() else "host",
                            "device": torch.cuda.get_device_name() if gpu else "cpu", "torch": torch.__version__})
                print(json.dumps(row), flush=True)
                log(f"real {n} tokens {ratio:g}x: restore {total_s * 1e3:.2f} ms (load_cache {load_s * 1e3:.2f}, "
                    f"cold {cold_s * 1e3:.2f}), first token {'agrees' if row['first_token_agrees'] else 'differs'}, "
                    f"greedy {agree}/{a.greedy}")
                file.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=None, help="default smollm2,llama3.2-1b; with --model-gguf: real")
    ap.add_argument("--tokens", default="2048,8192")
    ap.add_argument("--ratios", default="16,20")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calib-tokens", type=int, default=2048, help="random tokens the calibration is fitted on")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for all shapes together")
    ap.add_argument("--shape-timeout", type=float, default=240.0, help="seconds for one shape")
    ap.add_argument("--model-gguf", default=None, help="real-model mode: this GGUF's model (needs --calibration)")
    ap.add_argument("--calibration", default=None, help="real-model mode: a calibration made from that model")
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"),
                    help="real-model mode: the folder holding corpus/prose.test.txt.xz")
    ap.add_argument("--greedy", type=int, default=16, help="real-model mode: greedy tokens scored teacher-forced")
    ap.add_argument("--graphs", action="store_true", help="real-model mode: add the CUDA-graph step's column")
    ap.add_argument("--tmp-dir", default=None, help="where the .kvtc files are written (default: the system's)")
    ap.add_argument("--one-shape", default=None, help=argparse.SUPPRESS)  # the child's mode
    a = ap.parse_args()
    if a.model_gguf and not a.calibration:
        ap.error("--model-gguf needs --calibration")
    if a.shapes is None:
        a.shapes = "real" if a.model_gguf else "smollm2,llama3.2-1b"
    if a.one_shape:
        if a.one_shape == "real":
            run_real(a)
        else:
            run_shape(a, a.one_shape)
        return
    args = list(sys.argv[1:])
    for shape in a.shapes.split(","):
        left = a.budget - (time.perf_counter() - T0)
        if left < 10:
            print(json.dumps({"shape": shape, "error": f"skipped: the budget of {a.budget:g} s is spent"}), flush=True)
            continue
        timeout = min(a.shape_timeout, left)
        log(f"{shape}: child started, timeout {timeout:.0f} s")
        try:
            r = subprocess.run([sys.executable, "-u", __file__, *args, "--one-shape", shape], timeout=timeout)
            if r.returncode != 0:
                print(json.dumps({"shape": shape, "error": f"exit status {r.returncode}"}), flush=True)
        except subprocess.TimeoutExpired:
            print(json.dumps({"shape": shape, "error": f"timed out after {timeout:.0f} s"}), flush=True)
        log(f"{shape}: done")


if __name__ == "__main__":
    main()
