"""kvtc.hf with the real transformers and SmolLM2-135M-Instruct, on the CPU and on a GPU.

Calibrates from the model (kvtc.hf.calibrate), then checks what users of the two recipes depend on:
- greedy decoding through KVTCCache and through save_cache/load_cache agrees with the uncompressed model
  on at least the share of tokens the eval harness predicts at 8x and 16x;
- KVTCCache holds its compressed tokens in at most 1/ratio of their raw 16-bit size, plus the exact
  sinks and window.
Agreement is teacher-forced, as the harness's fidelity task measures it: both runs are fed the
uncompressed model's greedy tokens and each position's argmax is compared.

Every test but the calibration's runs twice: on the CPU, and on CUDA (the model in fp32 on the GPU, its
caches CUDA tensors, load_cache(device="cuda") restoring with kvtc's CUDA backend). fp32 on both, so
the bars, made for the fp32 CPU model, hold for both. The CUDA cases skip, saying why, where torch has
no GPU or kvtc no CUDA backend; KVTC_REQUIRE_CUDA=1 makes them fail instead (the GPU machine's
script, scripts/device_smollm2_gpu.sh, sets it). `-k cuda` or `-k cpu` picks one.
"""
from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoTokenizer, DynamicCache

import kvtc
import kvtc.hf
from conftest import model_path
from hf_reference import load_model

from smollm2_common import MODEL, PREDICTED, bar as _bar, docs as _docs

PROMPT_TOKENS = 420
NEW_TOKENS = 32


def _cuda_missing() -> str | None:
    """None when the CUDA cases can run, else why not."""
    if not torch.cuda.is_available():
        return "torch finds no CUDA device (torch.cuda.is_available() is False)"
    if not hasattr(kvtc._kvtc, "_cuda_available"):
        return "this kvtc build has no CUDA backend (built with KVTC_CUDA=OFF, or AUTO found no CUDA toolkit)"
    ok, why = kvtc._kvtc._cuda_available()
    return None if ok else f"kvtc's CUDA backend is built but finds no usable device: {why}"


@pytest.fixture(scope="module", params=["cpu", "cuda"])
def device(request):
    if request.param == "cuda":
        why = _cuda_missing()
        if why and os.environ.get("KVTC_REQUIRE_CUDA") == "1":
            pytest.fail(f"KVTC_REQUIRE_CUDA=1 but {why}")
        if why:
            pytest.skip(why)
    return torch.device(request.param)


@pytest.fixture(scope="module")
def model_and_tokenizer(device):
    torch.set_num_threads(2)
    path = model_path(MODEL)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return load_model(str(path), device.type), tok


@pytest.fixture(scope="module")
def cal(smollm2_calibration):
    return kvtc.Calibration.load(smollm2_calibration)


@pytest.fixture(scope="module")
def prompts(model_and_tokenizer, shared_dir, device):
    _, tok = model_and_tokenizer
    out = []
    for name in ("prose.test", "code.test"):
        docs = [d for d in _docs(shared_dir, name) if len(d) > 4 * PROMPT_TOKENS]
        for d in docs[:2]:
            out.append(tok(d, return_tensors="pt").input_ids[:, :PROMPT_TOKENS].to(device))
    assert len(out) == 4 and all(p.shape[1] == PROMPT_TOKENS for p in out)
    return out


@torch.no_grad()
def _reference(model, ids):
    return model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, past_key_values=DynamicCache())[
        0, ids.shape[1]:]


@pytest.fixture(scope="module")
def references(model_and_tokenizer, prompts):
    """The uncompressed model's greedy continuation of each prompt."""
    model, _ = model_and_tokenizer
    return [_reference(model, ids) for ids in prompts]


@torch.no_grad()
def _teacher_forced(model, ids, cache, ref):
    """Positions where the argmax over `cache` equals the reference's greedy token."""
    agree = 0
    logits = model(ids, past_key_values=cache, use_cache=True).logits[0, -1]
    for i in range(len(ref)):
        agree += int(logits.argmax() == ref[i])
        if i + 1 < len(ref):
            logits = model(ref[i].view(1, 1), past_key_values=cache, use_cache=True).logits[0, -1]
    return agree


@pytest.mark.parametrize("ratio", [8, 16])
def test_kvtc_cache_generation(model_and_tokenizer, cal, prompts, references, ratio, device):
    model, _ = model_and_tokenizer
    agree = total = 0
    for ids, ref in zip(prompts, references):
        # A short window and small blocks leave 85% of the context compressed at the end, as in the
        # harness's 1K fidelity prompts with their 128-token window.
        cache = kvtc.hf.KVTCCache(cal, ratio, block_tokens=64, window_tokens=16)
        agree += _teacher_forced(model, ids, cache, ref)
        total += len(ref)
        n = ids.shape[1] + len(ref) - 1
        assert cache.get_seq_length() == n
        assert cache.layers[0].keys.device.type == device.type  # the exact tail stays on the model's device
        # Memory: compressed tokens within 1/ratio of their 16-bit size; the rest is the exact part.
        assert cache.compressed_nbytes() <= cache.raw16_bytes_compressed / ratio
        exact_tokens = n - cache.n_compressed_tokens()
        assert cache.window_tokens <= exact_tokens - cal.n_sink_tokens < cache.window_tokens + cache.block_tokens
        per_token = 2 * cal.n_layers * cal.n_kv_heads * cal.head_dim * 4  # fp32 model
        assert cache.nbytes() == cache.compressed_nbytes() + exact_tokens * per_token
    share = agree / total
    print(f"{device.type}: KVTCCache {ratio}x: teacher-forced agreement {agree}/{total} = {share:.3f} "
          f"(harness predicts {PREDICTED[ratio]:.3f}, bar {_bar(ratio, total):.3f})")
    assert share >= _bar(ratio, total)


@pytest.mark.parametrize("ratio", [8, 16])
def test_load_cache_generation(model_and_tokenizer, cal, prompts, references, ratio, tmp_path, device):
    model, _ = model_and_tokenizer
    agree = total = 0
    for ids, ref in zip(prompts, references):
        cache = DynamicCache()
        with torch.no_grad():
            model(ids[:, :-1], past_key_values=cache, use_cache=True)
        path = tmp_path / "prompt.kvtc"
        report = {}
        size = kvtc.hf.save_cache(cache, path, cal, ratio, report=report)
        assert size == path.stat().st_size and report["ratio_compressed_tokens"] >= ratio
        # On CUDA: kvtc's CUDA backend restores straight into CUDA tensors.
        restored = kvtc.hf.load_cache(path, cal, dtype=torch.float32, device=device)
        assert restored.get_seq_length() == ids.shape[1] - 1
        assert restored.layers[0].keys.device.type == device.type == cache.layers[0].keys.device.type
        # The exact window comes back bit for bit.
        assert torch.equal(restored.layers[5].keys[..., -128:, :], cache.layers[5].keys[..., -128:, :])
        agree += _teacher_forced(model, ids[:, -1:], restored, ref)
        total += len(ref)
    share = agree / total
    print(f"{device.type}: load_cache {ratio}x: teacher-forced agreement {agree}/{total} = {share:.3f} "
          f"(harness predicts {PREDICTED[ratio]:.3f}, bar {_bar(ratio, total):.3f})")
    assert share >= _bar(ratio, total)


def test_free_running_generate(model_and_tokenizer, cal, prompts, references):
    """model.generate drives KVTCCache as it drives DynamicCache; the first tokens agree."""
    model, _ = model_and_tokenizer
    ids, ref = prompts[2], references[2]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False,
                             past_key_values=kvtc.hf.KVTCCache(cal, 8))[0, ids.shape[1]:]
    assert len(out) == NEW_TOKENS
    assert torch.equal(out[:4], ref[:4])


def test_calibration_from_model(cal):
    info = cal.info()
    assert (info["n_layers"], info["n_kv_heads"], info["head_dim"]) == (30, 3, 64)
    assert info["rope_theta"] == 1e5 and info["rope_style"] == "half"
    assert info["n_calibration_tokens"] > 8000
