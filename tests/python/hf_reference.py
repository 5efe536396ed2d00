"""Reference forward pass of a GGUF model with Hugging Face transformers (fp32, eager attention, CPU).

transformers reads the .gguf through the `gguf` package, dequantises every tensor to fp32 and undoes
llama.cpp's q/k row permutation, so its keys are in Hugging Face's `half` RoPE layout, as kvtc's cache
files hold them (docs/CACHE_LAYOUT.md).

    hf_forward(gguf_path, token_ids) -> (logits [T, vocab], keys [L][kv_heads, T, d], values [L][...])
    hf_forward(..., with_queries=True) -> (logits, keys, values, queries [L][heads, T, d], RoPE applied)

Run as a script to time a forward pass and report peak memory:
    .venv/bin/python tests/python/hf_reference.py models/SmolLM2-135M-Instruct.Q4_1.gguf --tokens 300
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

# Everything is local: never ask the Hub for anything.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch


@functools.lru_cache(maxsize=2)
def load_model(gguf_path: str, device: str = "cpu"):
    """The model of `gguf_path` in fp32 with eager attention, in eval mode, on `device` (cached per path
    and device: each device has a model of its own)."""
    from transformers import AutoModelForCausalLM

    path = Path(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    return model if device == "cpu" else model.to(device)


def _capture_queries(model):
    """Hooks that record every layer's queries after RoPE, [heads, T, head_dim], as the attention computes
    them: q_proj's output rotated by the layer's own (cos, sin) with the modeling file's
    apply_rotary_pos_emb. Returns (list filled by the forward, hook handles)."""
    import importlib

    layers = model.model.layers
    rope = importlib.import_module(type(layers[0].self_attn).__module__).apply_rotary_pos_emb
    queries = [None] * len(layers)
    handles = []
    for i, layer in enumerate(layers):
        attn = layer.self_attn
        state = {}

        def pre(mod, args, kwargs, state=state):
            state["pe"] = kwargs["position_embeddings"]

        def q_out(mod, args, out, i=i, attn=attn, state=state):
            b, t, _ = out.shape
            q = out.view(b, t, -1, attn.head_dim).transpose(1, 2)
            cos, sin = state["pe"]
            queries[i] = rope(q, q, cos, sin)[0][0].float().numpy().copy()

        handles.append(attn.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(attn.q_proj.register_forward_hook(q_out))
    return queries, handles


def hf_forward(gguf_path, token_ids, n_logits: int | None = None, with_queries: bool = False):
    """One prefill of `token_ids` (ints, no BOS added) from position 0 with use_cache=True.

    Returns (logits, keys, values) as float32 numpy arrays: logits [n, vocab] of the last n positions
    (n_logits, default all T); keys[l], values[l] [kv_heads, T, head_dim] from the DynamicCache,
    keys with RoPE applied. with_queries adds a fourth item: queries[l] [heads, T, head_dim], RoPE applied.
    """
    model = load_model(str(gguf_path))
    ids = torch.as_tensor(np.asarray(token_ids, dtype=np.int64)).reshape(1, -1)
    T = ids.shape[1]
    n = T if n_logits is None else int(n_logits)
    queries, handles = _capture_queries(model) if with_queries else (None, [])
    try:
        with torch.inference_mode():
            out = model(input_ids=ids, use_cache=True, logits_to_keep=n)
    finally:
        for h in handles:
            h.remove()
    logits = out.logits[0].float().numpy().copy()
    cache = out.past_key_values
    # transformers 5: a DynamicCache holds one DynamicLayer per decoder layer, with .keys/.values
    # [batch, kv_heads, T, head_dim].
    keys = [layer.keys[0].float().numpy().copy() for layer in cache.layers]
    values = [layer.values[0].float().numpy().copy() for layer in cache.layers]
    assert len(keys) == model.config.num_hidden_layers, (len(keys), model.config.num_hidden_layers)
    assert logits.shape == (n, model.config.vocab_size), logits.shape
    for k in keys:
        assert k.shape[1] == T, k.shape
    if with_queries:
        assert all(q is not None and q.shape[1] == T for q in queries)
        return logits, keys, values, queries
    return logits, keys, values


def _main() -> None:
    import argparse
    import lzma
    import resource
    import time

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--text", default=None, help=".txt or .txt.xz to tokenise (GGUF tokenizer); default random ids")
    a = ap.parse_args()

    t0 = time.perf_counter()
    model = load_model(a.gguf)
    t1 = time.perf_counter()
    cfg = model.config
    print(f"load: {t1 - t0:.2f} s  ({cfg.model_type}, {cfg.num_hidden_layers} layers, heads {cfg.num_attention_heads}"
          f"/{cfg.num_key_value_heads}, head_dim {getattr(cfg, 'head_dim', None)}, vocab {cfg.vocab_size}, "
          f"rope_theta {getattr(cfg, 'rope_theta', None) or cfg.rope_parameters}, tied {cfg.tie_word_embeddings})")
    if a.text:
        from transformers import AutoTokenizer

        p = Path(a.gguf)
        tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
        opener = lzma.open if a.text.endswith(".xz") else open
        with opener(a.text, "rt", encoding="utf-8") as f:
            text = f.read(200_000)
        ids = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + tok.encode(text, add_special_tokens=False)
        ids = ids[: a.tokens]
    else:
        ids = np.random.default_rng(0).integers(0, cfg.vocab_size, a.tokens).tolist()
    t2 = time.perf_counter()
    logits, keys, values = hf_forward(a.gguf, ids)
    t3 = time.perf_counter()
    pred = logits[:-1].argmax(-1)
    acc = float((pred == np.asarray(ids[1:])).mean())
    print(f"forward of {len(ids)} tokens: {t3 - t2:.2f} s; logits {logits.shape}, k {keys[0].shape} x {len(keys)}; "
          f"next-token argmax accuracy {acc:.3f}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    _main()
