"""kvtc with Hugging Face transformers (pinned: 5.17).

Three recipes (docs/PYTHON.md has them worked through):

- **Prompt caching.** ``save_cache(past_key_values, path, cal, ratio)`` compresses a conversation's cache to
  a file; ``load_cache(path, cal)`` gives back a ``DynamicCache`` to continue from, instead of recomputing
  the prefill.
- **A compressed cache while generating.** ``KVTCCache(cal, ratio)`` is a transformers ``Cache``: the
  sinks and a recent window stay exact, older tokens are compressed in full blocks of ``block_tokens``, and
  a layer's compressed tokens are restored when that layer's attention needs them. ``cache.nbytes()`` is
  what it holds.
- **Calibration from a model.** ``calibrate(model, tokenizer, texts, ratios)``, the twin of
  ``kvtc calibrate --model``.

Caches here are batch 1 (one sequence), as kvtc containers are. Keys are read with RoPE applied, as
transformers' Llama-family models store them ("half" rotation); the calibration removes and re-applies it.
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterable, Sequence

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

import kvtc

__all__ = ["save_cache", "load_cache", "KVTCCache", "calibrate", "rope_of"]


def _layer_kv(past_key_values, layer: int):
    """[kv_heads, tokens, head_dim] views of one layer of a transformers cache (batch 1)."""
    if hasattr(past_key_values, "layers"):
        k, v = past_key_values.layers[layer].keys, past_key_values.layers[layer].values
    else:  # legacy tuple of (k, v) per layer
        k, v = past_key_values[layer]
    if k is None or k.dim() != 4 or k.shape[0] != 1:
        raise kvtc.InvalidArgumentError(f"layer {layer}: expected a [1, kv_heads, tokens, head_dim] cache (batch 1)")
    return k[0], v[0]


def _n_layers(past_key_values) -> int:
    return len(past_key_values.layers) if hasattr(past_key_values, "layers") else len(past_key_values)


def _write_atomic(path: str | os.PathLike, data: bytes) -> None:
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".kvtc-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_cache(past_key_values, path: str | os.PathLike, cal: kvtc.Calibration, ratio: float = 20.0,
               report: dict | None = None, *, codec: int = 2) -> int:
    """Compresses a transformers cache (batch 1) into a .kvtc file; returns its size in bytes.

    The file replaces ``path`` atomically. Sinks and the recent window stay exact (the calibration's
    counts), so generation resumes from the file with the same newest tokens. ``codec``: as
    :func:`kvtc.compress`.
    """
    n = _n_layers(past_key_values)
    pairs = [_layer_kv(past_key_values, l) for l in range(n)]
    data = kvtc.compress(cal, [p[0] for p in pairs], [p[1] for p in pairs], ratio, report=report, codec=codec)
    _write_atomic(path, data)
    return len(data)


def load_cache(path: str | os.PathLike, cal: kvtc.Calibration, *, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None, config=None, fp8: bool = False) -> DynamicCache:
    """Restores a .kvtc file as a ``DynamicCache`` (batch 1), in ``dtype`` (default: the container's;
    bfloat16 with ``fp8``) on ``device`` (default: CPU). Pass the model's ``config`` for models whose
    cache layers it shapes. ``fp8=True`` reconstructs on FP8 tensor cores, as :func:`kvtc.decompress`
    says: a CUDA ``device`` and bfloat16 output only; elsewhere it raises InvalidArgumentError."""
    with open(path, "rb") as f:
        data = f.read()
    if fp8 and dtype is None:
        dtype = torch.bfloat16
    k, v = kvtc.decompress(cal, data, framework="torch", dtype=dtype, device=device, fp8=fp8)
    cache = DynamicCache(config=config)
    for layer in range(k.shape[0]):
        cache.update(k[layer][None], v[layer][None], layer)
    return cache


class _KVTCLayer(DynamicLayer):
    """One layer of a KVTCCache: the exact sinks, the restored compressed blocks, the exact tail."""

    is_croppable = False

    def __init__(self, owner: "KVTCCache", index: int):
        super().__init__()
        self._owner = owner
        self._index = index
        self.sink_keys = self.sink_values = None  # [1, H, n_sink, D]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if key_states.shape[0] != 1:
            raise kvtc.UnsupportedError("KVTCCache holds one sequence (batch 1)")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        owner = self._owner
        if self.sink_keys is None and self.keys.shape[-2] >= owner.n_sink_tokens:
            s = owner.n_sink_tokens
            self.sink_keys, self.sink_values = self.keys[..., :s, :].clone(), self.values[..., :s, :].clone()
            self.keys, self.values = self.keys[..., s:, :].contiguous(), self.values[..., s:, :].contiguous()
        if self.sink_keys is None:
            return self.keys, self.values
        ck, cv = owner._restored(self._index, self.keys)
        return (torch.cat([self.sink_keys, ck, self.keys], dim=-2),
                torch.cat([self.sink_values, cv, self.values], dim=-2))

    def get_seq_length(self) -> int:
        if not self.is_initialized:
            return 0
        sinks = 0 if self.sink_keys is None else self.sink_keys.shape[-2]
        return sinks + self._owner.n_compressed_tokens() + self.keys.shape[-2]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def crop(self, tokens_to_remove: int) -> None:
        raise kvtc.UnsupportedError("KVTCCache cannot crop: compressed blocks are immutable")

    def exact_nbytes(self) -> int:
        total = 0
        for t in (self.sink_keys, self.sink_values, self.keys, self.values):
            if t is not None:
                total += t.numel() * t.element_size()
        return total


class KVTCCache(Cache):
    """A transformers ``Cache`` that holds older tokens kvtc-compressed.

    Tokens ``[0, n_sink)`` (the attention sinks) and the newest ``window_tokens`` or more stay exact.
    Whenever the exact tail holds ``window_tokens + block_tokens`` tokens after a forward step, its oldest
    ``block_tokens`` are compressed at ``ratio`` into one container (all layers, block mode: the block's
    true positions, no exact tokens inside) and dropped. When a layer's attention runs, that layer's
    compressed tokens are restored: the first layer of a step opens the blocks (entropy decoding), each
    layer then reconstructs only its own features, and the step's decoded coefficients are released
    after the last layer. Blocks are never recompressed, so the error of a token does not grow as the
    conversation goes on. ``nbytes()`` is the memory held: compressed blocks plus exact tokens.
    """

    def __init__(self, cal: kvtc.Calibration, ratio: float = 16.0, *, block_tokens: int = 256,
                 window_tokens: int | None = None, n_threads: int = 0):
        super().__init__(layers=[_KVTCLayer(self, l) for l in range(cal.n_layers)])
        if block_tokens < 16:
            raise kvtc.InvalidArgumentError("block_tokens must be at least 16")
        self.cal = cal
        self.ratio = float(ratio)
        self.block_tokens = int(block_tokens)
        self.n_sink_tokens = cal.n_sink_tokens
        self.window_tokens = cal.n_window_tokens if window_tokens is None else int(window_tokens)
        self.n_threads = n_threads
        self.blocks: list[bytes] = []  # containers of tokens [n_sink + i * block, n_sink + (i + 1) * block)
        self.raw16_bytes_compressed = 0  # the compressed tokens at 16 bits per element (kvtc's "raw")
        self._decoders = None  # the current step's opened blocks

    def n_compressed_tokens(self) -> int:
        return len(self.blocks) * self.block_tokens

    def nbytes(self) -> int:
        """Bytes held: the compressed blocks plus every exact token (sinks and tail) of every layer."""
        return self.compressed_nbytes() + self.exact_nbytes()

    def compressed_nbytes(self) -> int:
        return sum(len(b) for b in self.blocks)

    def exact_nbytes(self) -> int:
        return sum(layer.exact_nbytes() for layer in self.layers)

    def _restored(self, layer: int, like: torch.Tensor):
        """Layer `layer`'s compressed tokens as [1, H, n_compressed, D] tensors like `like`."""
        n = self.n_compressed_tokens()
        shape = (1, like.shape[1], n, like.shape[3])
        k = torch.empty(shape, dtype=like.dtype)
        v = torch.empty(shape, dtype=like.dtype)
        if n == 0:
            return k.to(like.device), v.to(like.device)
        if self._decoders is None or layer == 0:
            self._decoders = [kvtc.Decoder(self.cal, b, self.n_threads) for b in self.blocks]
        for i, dec in enumerate(self._decoders):
            t0 = i * self.block_tokens
            dec.restore_layer_into(layer, k[0, :, t0:t0 + self.block_tokens, :], v[0, :, t0:t0 + self.block_tokens, :])
        if layer == len(self.layers) - 1:
            self._decoders = None
        return k.to(like.device), v.to(like.device)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        out = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if layer_idx == len(self.layers) - 1:
            self._compress_full_blocks()
        return out

    def _compress_full_blocks(self) -> None:
        b = self.block_tokens
        while self.layers[0].sink_keys is not None and self.layers[0].keys.shape[-2] >= self.window_tokens + b:
            start = self.n_sink_tokens + self.n_compressed_tokens()
            keys = [layer.keys[0, :, :b, :].detach().cpu() for layer in self.layers]
            values = [layer.values[0, :, :b, :].detach().cpu() for layer in self.layers]
            self.blocks.append(kvtc.compress(self.cal, keys, values, self.ratio, positions=start, exact_sinks=0,
                                             exact_window=0, n_threads=self.n_threads))
            h, d = keys[0].shape[0], keys[0].shape[2]
            self.raw16_bytes_compressed += 2 * 2 * len(self.layers) * h * b * d
            for layer in self.layers:
                layer.keys = layer.keys[..., b:, :].contiguous()
                layer.values = layer.values[..., b:, :].contiguous()
        self._decoders = None


def rope_of(config) -> dict:
    """kvtc's RoPE arguments (Calibration.fit) from a transformers config: theta, style, Llama 3 scaling."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    scaling = getattr(config, "rope_scaling", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise kvtc.UnsupportedError("the model config names no rope_theta")
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    out = {"rope_theta": float(theta), "rope_style": "half"}
    if kind == "llama3":
        src = params if "factor" in params else scaling
        out["rope_llama3"] = {k: src[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                                   "original_max_position_embeddings")}
    elif kind not in ("default", None):
        raise kvtc.UnsupportedError(f"RoPE type {kind!r} is not supported by kvtc (default and llama3 are)")
    return out


@torch.no_grad()
def calibrate(model, tokenizer, texts: Iterable[str], ratios: Sequence[float] = kvtc.DEFAULT_RATIOS, *,
              max_tokens: int = 2048, n_sink_tokens: int = 4, n_window_tokens: int = 128,
              model_name: str | None = None) -> kvtc.Calibration:
    """Calibrates kvtc for a transformers model: each text (cut to ``max_tokens`` tokens) runs through the
    model once, and its cache feeds the calibration (streamed: one cache in memory at a time).
    Texts shorter than the sinks plus the window add nothing and are skipped."""
    rope = rope_of(model.config)
    name = model_name or getattr(model.config, "name_or_path", "") or type(model).__name__

    def caches():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt").input_ids[:, :max_tokens].to(model.device)
            if ids.shape[1] <= n_sink_tokens + n_window_tokens:
                continue
            out = model(ids, use_cache=True)
            pkv = out.past_key_values
            pairs = [_layer_kv(pkv, l) for l in range(_n_layers(pkv))]
            yield [p[0].cpu() for p in pairs], [p[1].cpu() for p in pairs]

    return kvtc.Calibration.fit(caches(), ratios, model_name=name, n_sink_tokens=n_sink_tokens,
                                n_window_tokens=n_window_tokens, **rope)
