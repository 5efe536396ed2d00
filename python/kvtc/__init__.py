"""kvtc: compress the key-value caches of large language models about 20x by transform coding.

Calibrate once per model, then compress and restore caches held as NumPy arrays or PyTorch tensors::

    import kvtc
    cal = kvtc.Calibration.load("model.kvtcal")            # or Calibration.fit(...)
    data = kvtc.compress(cal, keys, values, ratio=16)      # bytes: a .kvtc container
    keys2, values2 = kvtc.decompress(cal, data, like=keys)

``keys`` and ``values`` are per-layer ``[kv_heads, tokens, head_dim]`` arrays (a list, one per layer) or
stacked ``[layers, kv_heads, tokens, head_dim]`` arrays, bfloat16 / float16 / float32, keys with RoPE
applied (as a model's cache holds them). They are read where they lie: nothing is copied on the way in.
Hugging Face transformers integration is in :mod:`kvtc.hf`. Errors are :class:`KvtcError` subclasses
carrying the library's message. Every call releases the GIL while it works; calibrations and decoders
may be shared between threads.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from typing import Any, Iterable, Sequence

import numpy as np

from . import _kvtc
from ._errors import (
    ChecksumError,
    CorruptError,
    CudaError,
    InternalError,
    InvalidArgumentError,
    KvtcError,
    KvtcIOError,
    MismatchError,
    OutOfMemoryError,
    OutOfSpaceError,
    UnsupportedError,
    error_classes as _error_classes,
)

_kvtc._set_error_classes(_error_classes())

__version__ = _kvtc.version()

__all__ = [
    "Calibration",
    "Decoder",
    "compress",
    "compress_block",
    "decompress",
    "decompress_into",
    "inspect",
    "container_format_version",
    "cuda_available",
    "KvtcError",
    "InvalidArgumentError",
    "UnsupportedError",
    "CorruptError",
    "ChecksumError",
    "OutOfSpaceError",
    "OutOfMemoryError",
    "KvtcIOError",
    "CudaError",
    "InternalError",
    "MismatchError",
]

DEFAULT_RATIOS = (8.0, 16.0, 20.0, 32.0, 64.0)


def container_format_version() -> int:
    """The container format version this build writes (docs/FORMAT.md)."""
    return _kvtc.container_format_version()


# --- arrays ------------------------------------------------------------------------------------------

def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _layers(x: Any, name: str) -> list:
    """Per-layer [kv_heads, tokens, head_dim] views of a list or a stacked 4-d array (no copies)."""
    if isinstance(x, (list, tuple)):
        return list(x)
    ndim = x.dim() if _is_torch(x) else np.ndim(x)
    if ndim == 4:
        return [x[i] for i in range(x.shape[0])]
    raise InvalidArgumentError(f"{name}: expected a list of [kv_heads, tokens, head_dim] arrays or one "
                               f"[layers, kv_heads, tokens, head_dim] array, got {ndim} dimensions")


def _host(layers: list, name: str) -> list:
    """Arrays the binding can read: CPU torch tensors as they are (DLPack), others through NumPy."""
    out = []
    for i, a in enumerate(layers):
        if _is_torch(a):
            if a.device.type != "cpu":
                # The host encoder reads host memory (compress(device="cuda") encodes on the GPU): copy first.
                a = a.detach().to("cpu")
            out.append(a.detach())
        else:
            arr = np.asarray(a)
            if arr.dtype not in (np.float16, np.float32) and arr.dtype.name != "bfloat16":
                raise InvalidArgumentError(f"{name}.{i}: dtype must be bfloat16, float16 or float32, not {arr.dtype}")
            out.append(arr)
    return out


# --- calibration -------------------------------------------------------------------------------------

class Calibration:
    """A model's calibration: means and PCA bases of keys and values, bit allocations per ratio.

    Immutable and cheap to share between threads. Make one with :meth:`fit` (or ``kvtc calibrate``,
    or :func:`kvtc.hf.calibrate`), keep it with :meth:`save`, and reopen it with :meth:`load`.
    """

    def __init__(self, core: "_kvtc.Calibration"):
        self._core = core

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Calibration":
        """Reads a .kvtcal file."""
        return cls(_kvtc.Calibration.load(os.fspath(path)))

    @classmethod
    def parse(cls, data: bytes) -> "Calibration":
        """Reads a calibration from the bytes of a .kvtcal file."""
        return cls(_kvtc.Calibration.parse(data))

    @classmethod
    def fit(cls, caches: Iterable, ratios: Sequence[float] = DEFAULT_RATIOS, *, rope_theta: float | None = None,
            rope_style: str = "half", rope_llama3: dict | None = None, model_name: str = "",
            n_sink_tokens: int = 4, n_window_tokens: int = 128, n_threads: int = 0) -> "Calibration":
        """Calibrates from caches of one model.

        ``caches`` holds cache files (paths to safetensors files in kvtc's layout, docs/CACHE_LAYOUT.md,
        which carry the model's RoPE parameters) or ``(keys, values)`` pairs of arrays as
        :func:`compress` takes them, each pair a sequence starting at position 0. For pairs, give the
        model's RoPE: ``rope_theta``, ``rope_style`` ("half" as Hugging Face Llama, or "interleaved"),
        and ``rope_llama3`` (a dict with factor, low_freq_factor, high_freq_factor,
        original_max_position_embeddings) for Llama 3 scaling. The first ``n_sink_tokens`` and last
        ``n_window_tokens`` of each sequence are left out, as they stay exact when compressed. Pairs are
        read one at a time (each copied to fp32 once), so memory is bounded by the model's width, not
        the number of caches.
        """
        it = iter(caches)
        first = next(it, None)
        if first is None:
            raise InvalidArgumentError("fit needs at least one cache")
        ratios = [float(r) for r in ratios]
        if isinstance(first, (str, os.PathLike)):
            paths = [first, *it]
            if not all(isinstance(c, (str, os.PathLike)) for c in paths):
                raise InvalidArgumentError("fit takes either cache files or (keys, values) pairs, not both")
            return cls(_kvtc._calibrate_files([os.fspath(c) for c in paths], ratios, n_sink_tokens,
                                              n_window_tokens, n_threads))
        if rope_theta is None:
            raise InvalidArgumentError("fit from arrays needs the model's rope_theta")
        builder = None
        for i, pair in enumerate(itertools.chain([first], it)):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise InvalidArgumentError(f"caches[{i}]: expected a (keys, values) pair, not {type(pair).__name__}")
            keys = _host(_layers(pair[0], "keys"), "keys")
            values = _host(_layers(pair[1], "values"), "values")
            if builder is None:
                h, _, d = keys[0].shape
                l3 = rope_llama3 or {}
                builder = _kvtc._CalibrationBuilder.create(
                    len(keys), int(h), int(d), float(rope_theta), rope_style, float(l3.get("factor", 0.0)),
                    float(l3.get("low_freq_factor", 1.0)), float(l3.get("high_freq_factor", 4.0)),
                    float(l3.get("original_max_position_embeddings", 8192.0)), model_name, ratios,
                    n_sink_tokens, n_window_tokens, n_threads)
            builder.add(keys, values)
        return cls(builder.finish())

    def save(self, path: str | os.PathLike) -> None:
        """Writes a .kvtcal file atomically (a temporary file, then a rename)."""
        self._core.save(os.fspath(path))

    def serialize(self) -> bytes:
        """The bytes of the .kvtcal file."""
        return self._core.serialize()

    @property
    def n_layers(self) -> int:
        return self._core.n_layers

    @property
    def n_kv_heads(self) -> int:
        return self._core.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self._core.head_dim

    @property
    def n_sink_tokens(self) -> int:
        """Tokens at the start of a sequence kept exact (attention sinks)."""
        return self._core.n_sink_tokens

    @property
    def n_window_tokens(self) -> int:
        """Newest tokens of a sequence kept exact (the recent window)."""
        return self._core.n_window_tokens

    @property
    def fingerprint(self) -> int:
        """Identity of shape, means and bases: containers carry it and must match."""
        return self._core.fingerprint

    def info(self) -> dict:
        """A summary: shape, RoPE, ranks, calibrated ratios and what each allocation keeps."""
        c = self._core
        return {
            "model": c.model_name,
            "n_layers": c.n_layers,
            "n_kv_heads": c.n_kv_heads,
            "head_dim": c.head_dim,
            "n_features": c.n_layers * c.n_kv_heads * c.head_dim,
            "rope_theta": c.rope_theta,
            "rope_style": c.rope_style,
            "fingerprint": f"{c.fingerprint:016x}",
            "n_calibration_tokens": c.n_calibration_tokens,
            "n_sink_tokens": c.n_sink_tokens,
            "n_window_tokens": c.n_window_tokens,
            "rank": {"keys": c.rank(True), "values": c.rank(False)},
            "ratios": list(c.ratios),
            "allocations": {str(r): {"keys": c.plan(r, True), "values": c.plan(r, False)} for r in c.ratios},
        }

    def __repr__(self) -> str:
        c = self._core
        return (f"kvtc.Calibration({c.model_name or 'unnamed'!s}: {c.shape_text}, "
                f"ratios {list(c.ratios)}, fingerprint {c.fingerprint:016x})")


# --- compress / decompress ---------------------------------------------------------------------------

def compress(cal: Calibration, keys: Any, values: Any, ratio: float = 20.0, positions: int | None = None, *,
             exact_sinks: int | None = None, exact_window: int | None = None, metadata: dict | None = None,
             deflate_level: int = 6, n_threads: int = 0, report: dict | None = None, codec: int = 2,
             rans_lanes: int = 32, token_importance: Any = None, high_rate_fraction: float = 0.25,
             high_rate_levels: int = 32, device: str | None = None, projection: str = "fp32") -> bytes:
    """Compresses a cache into a .kvtc container (bytes).

    ``keys``, ``values``: per-layer ``[kv_heads, tokens, head_dim]`` or stacked
    ``[layers, kv_heads, tokens, head_dim]``; bfloat16, float16 or float32; any strides with a
    contiguous head_dim axis; read in place. ``ratio``: the target (>= 1) over the compressed tokens
    before entropy coding. ``positions``: the RoPE position of the first token (default 0).
    ``exact_sinks`` / ``exact_window``: tokens kept exact at the start and end (default: the
    calibration's). ``metadata``: strings stored in the container (default: the cache's shape and
    model, as a kvtc cache file has them). ``codec``: 2 (fixed-width groups + DEFLATE, container
    format 2) or 3 (entropy-constrained quantisation + rANS, format 3, encoded on the CPU: ``ratio`` then bounds
    the stored bytes; needs a calibration with ECSQ models, else InvalidArgumentError says to
    recalibrate). ``rans_lanes``: codec 3's interleaved rANS states per chunk, 1..64. When ``report``
    is a dict, it receives the sizes, ratios and per-layer relative errors of this encode (which costs
    one extra decode), the codec, and for codec 3 each stream's ECSQ level (``ecsq_level``).
    ``token_importance`` (codec 3): one number per token (a list, array or tensor; higher: attention
    needs the token more, e.g. the attention the prefill's last queries paid it). The
    ``high_rate_fraction`` most important compressed tokens are then coded ``high_rate_levels``
    levels finer (32: about twice the bits) than the rest, at the same target (container format 4,
    token classes); the report adds ``ecsq_level_high`` and ``n_high_rate_tokens``.
    ``device``: None or "cpu" encodes on the host (CUDA tensors are copied there first); "cuda" encodes
    torch tensors on their CUDA device with the CUDA backend (:func:`cuda_available`; codec 2 only, no
    ``token_importance``, ``report`` or ``n_threads``): projection, quantisation, DEFLATE and the
    container all on the GPU, and only the container comes back. Its codes match the host encoder's up
    to fp32 rounding near quantisation boundaries (docs/CUDA.md), and its DEFLATE streams differ, so
    its bytes are not the host's; any decoder restores them. ``projection`` (device="cuda" only): "fp32"
    (the default), "tf32" (TF32 tensor cores) or "bf16" (the cache rounded to bf16, bf16 tensor cores,
    fp32 accumulation): faster projections with the same restored error within about 2%, codes that
    may differ from the host's by a level.
    """
    if device is not None and str(device) != "cpu":
        if codec != 2 or token_importance is not None or report is not None or n_threads:
            raise UnsupportedError("compress(device='cuda') writes codec 2 without token_importance, report or "
                                   "n_threads; leave device unset for the host encoder")
        return _cuda_compress(cal, _layers(keys, "keys"), _layers(values, "values"), str(device), float(ratio),
                              int(positions or 0), metadata, exact_sinks, exact_window, int(deflate_level),
                              str(projection))
    if projection != "fp32":
        raise InvalidArgumentError(f"projection={projection!r} is for compress(device='cuda'); the host encoder "
                                   "projects in fp32")
    k = _host(_layers(keys, "keys"), "keys")
    v = _host(_layers(values, "values"), "values")
    importance = None
    if token_importance is not None:
        if hasattr(token_importance, "tolist"):
            token_importance = token_importance.tolist()
        importance = [float(x) for x in token_importance]
    data, rep = _kvtc._encode(cal._core, k, v, float(ratio), int(positions or 0),
                              None if metadata is None else {str(a): str(b) for a, b in metadata.items()},
                              -1 if exact_sinks is None else int(exact_sinks),
                              -1 if exact_window is None else int(exact_window), int(deflate_level),
                              int(n_threads), report is not None, int(codec), int(rans_lanes), importance,
                              float(high_rate_fraction), int(high_rate_levels))
    if report is not None:
        report.clear()
        report.update(rep)
    return data


def compress_block(cal: Calibration, keys: Any, values: Any, start: int, end: int, ratio: float = 20.0, *,
                   deflate_level: int = 6, n_threads: int = 0, codec: int = 2, rans_lanes: int = 32,
                   device: str | None = None, projection: str = "fp32") -> bytes:
    """Compresses tokens ``[start, end)`` of a sequence as one block, at their true positions.

    ``keys`` and ``values`` hold the sequence from position 0 (at least ``end`` tokens); the block is
    read through views, not copied. No token of a block is kept exact except the sinks of the block
    that holds position 0, so a block compressed once stays valid for every later request that shares
    the prefix (serving engines cache prefixes in such blocks). Restore it with :func:`decompress` or
    into the sequence's own tensors with :func:`decompress_into`. ``codec``, ``rans_lanes``, ``device``,
    ``projection``: as :func:`compress` (on the GPU the block's tokens are first copied to contiguous
    tensors there).
    """
    if not 0 <= start < end:
        raise InvalidArgumentError(f"block [{start}, {end}) is empty or negative")
    k = [a[:, start:end, :] for a in _layers(keys, "keys")]
    v = [a[:, start:end, :] for a in _layers(values, "values")]
    if k and k[0].shape[1] != end - start:
        raise InvalidArgumentError(f"block [{start}, {end}) runs past the {start + k[0].shape[1]} tokens given")
    return compress(cal, k, v, ratio, positions=start, exact_sinks=None if start == 0 else 0, exact_window=0,
                    deflate_level=deflate_level, n_threads=n_threads, codec=codec, rans_lanes=rans_lanes,
                    device=device, projection=projection)


def _torch_dtype(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def _dtype_name(dtype: Any) -> str:
    s = str(dtype).replace("torch.", "")
    if s not in ("bfloat16", "float16", "float32"):
        raise InvalidArgumentError(f"dtype must be bfloat16, float16 or float32, not {dtype}")
    return s


def decompress(cal: Calibration, data: bytes, layers: Sequence[int] | range | None = None, *, like: Any = None,
               framework: str | None = None, dtype: Any = None, device: Any = None, n_threads: int = 0,
               fp8: bool = False):
    """Restores a container: ``(keys, values)``, each stacked ``[n_layers, kv_heads, tokens, head_dim]``.

    ``layers`` restores only those layers, in that order (the others cost no reconstruction). The
    result is in the caller's array type: ``like`` (an array or tensor, e.g. the compressed keys) sets
    framework, dtype and device; or give ``framework`` ("numpy" or "torch"), ``dtype`` and ``device``.
    The default is NumPy in the container's dtype, float32 where NumPy has no bfloat16. Torch tensors
    for a CUDA device are restored there by the CUDA backend when the package was built with it
    (:func:`cuda_available`; bfloat16 or float32 output), else restored on the host and copied over.

    ``fp8=True`` reconstructs with FP8 (E4M3) tensor cores instead of bfloat16 ones: the CUDA path with
    bfloat16 output only, on a GPU with FP8 tensor cores (Hopper or newer). On an H100 it takes the
    reconstruction of an 8K-token cache of a 12B model from 32.8 to 19.0 ms and adds 0.5-0.7% to the
    codec's own error energy (bench/RESULTS.md, "FP8 reconstruction"). Where the CUDA path cannot run,
    it raises InvalidArgumentError rather than quietly restoring in another precision.
    """
    if like is not None:
        first = like[0] if isinstance(like, (list, tuple)) else like
        framework = framework or ("torch" if _is_torch(first) else "numpy")
        dtype = dtype if dtype is not None else first.dtype
        device = device if device is not None else (first.device if _is_torch(first) else None)
        like = None
    gpu = _cuda_decompress(cal, data, layers, framework, dtype, device, fp8)
    if gpu is not None:
        return gpu
    if fp8:
        raise InvalidArgumentError(
            "fp8=True reconstructs on the GPU: it needs torch tensors on a CUDA device (device='cuda' or like=), "
            "bfloat16 output, and a kvtc build with the CUDA backend and a usable device (kvtc.cuda_available())")
    dec = Decoder(cal, data, n_threads)
    sel = list(range(dec.n_layers)) if layers is None else [int(l) for l in layers]
    framework = framework or "numpy"
    shape = (len(sel), dec.n_kv_heads, dec.n_tokens, dec.head_dim)
    if framework == "torch":
        import torch

        name = _dtype_name(dtype) if dtype is not None else dec.dtype
        k = torch.empty(shape, dtype=_torch_dtype(name))
        v = torch.empty(shape, dtype=_torch_dtype(name))
    elif framework == "numpy":
        name = _dtype_name(np.dtype(dtype).name) if dtype is not None else (
            "float32" if dec.dtype == "bfloat16" else dec.dtype)
        if name == "bfloat16":
            raise InvalidArgumentError("NumPy has no bfloat16: ask for float32 or framework='torch'")
        k = np.empty(shape, dtype=name)
        v = np.empty(shape, dtype=name)
    else:
        raise InvalidArgumentError(f"framework must be 'numpy' or 'torch', not {framework!r}")
    for i, layer in enumerate(sel):
        dec.restore_layer_into(layer, k[i], v[i])
    if framework == "torch" and device is not None and str(device) != "cpu":
        k, v = k.to(device), v.to(device)
    return k, v


def cuda_available() -> bool:
    """Whether this build has the CUDA backend and a usable device (decompress(device="cuda") uses it)."""
    return hasattr(_kvtc, "_cuda_available") and _kvtc._cuda_available()[0]


_cuda_lock = threading.Lock()  # creates the per-calibration CUDA restorers and compressors


def _cuda_decompress(cal, data, layers, framework, dtype, device, fp8=False):
    """Restores on the GPU into torch tensors on `device` when the CUDA backend can: a CUDA device,
    torch, and bfloat16 or float32 output (bfloat16 only with fp8). None when it cannot (the host
    path then runs)."""
    if framework != "torch" or device is None or "cuda" not in str(device) or not cuda_available():
        return None
    import torch

    if dtype is not None:
        name = _dtype_name(dtype)
    else:
        name = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[inspect(data)["dtype"]]
    if name == "float16" or (fp8 and name != "bfloat16"):
        return None
    dev = torch.device(device)
    # One restorer per calibration and precision: the FP8 one also holds the basis in E4M3.
    attr = "_cuda_restorer_fp8" if fp8 else "_cuda_restorer"
    with torch.cuda.device(dev):
        stream = torch.cuda.current_stream(dev).cuda_stream
        with _cuda_lock:
            restorer = getattr(cal, attr, None)
            if restorer is None or restorer[0] != dev:
                restorer = (dev, _kvtc._CudaRestorer.create(cal._core, stream, fp8), threading.Lock(), [None])
                setattr(cal, attr, restorer)
        _, r, lock, last = restorer
        # The decoder holds one decoded batch in device buffers: one decompress at a time per
        # calibration, and a decode on another stream waits for the restores queued before it.
        with lock:
            if last[0] is not None:
                torch.cuda.current_stream(dev).wait_event(last[0])
            try:
                r.decode([data], stream, fp8)
                n_layers = r.n_layers(0)
                sel = list(range(n_layers)) if layers is None else [int(l) for l in layers]
                shape = (len(sel), cal.n_kv_heads, r.n_tokens(0), cal.head_dim)
                k = torch.empty(shape, dtype=_torch_dtype(name), device=dev)
                v = torch.empty(shape, dtype=_torch_dtype(name), device=dev)
                for i, layer in enumerate(sel):
                    if not 0 <= layer < n_layers:
                        raise InvalidArgumentError(f"layer {layer} out of range [0, {n_layers})")
                    r.restore_layer(0, layer, k[i], v[i], stream)
            finally:
                last[0] = torch.cuda.current_stream(dev).record_event()
    return k, v


def _cuda_compress(cal, k_layers, v_layers, device, ratio, positions, metadata, exact_sinks, exact_window,
                   deflate_level, projection):
    """compress(device="cuda"): one sequence through the CUDA backend's batch encoder."""
    if not cuda_available():
        raise UnsupportedError("compress(device='cuda') needs a kvtc build with the CUDA backend and a usable "
                               "device (kvtc.cuda_available() is False)")
    import torch

    if not all(_is_torch(a) and a.is_cuda for a in (*k_layers, *v_layers)):
        raise InvalidArgumentError("compress(device='cuda') takes torch tensors on a CUDA device")
    dev = k_layers[0].device
    if "cuda:" in device and torch.device(device) != dev:
        raise InvalidArgumentError(f"device={device!r} but the cache is on {dev}")
    if any(a.device != dev for a in (*k_layers, *v_layers)):
        raise InvalidArgumentError("compress(device='cuda'): every layer must be on one device")
    k = [a.detach().contiguous() for a in k_layers]
    v = [a.detach().contiguous() for a in v_layers]
    args = (k, v, ratio, positions, None if metadata is None else {str(a): str(b) for a, b in metadata.items()},
            -1 if exact_sinks is None else int(exact_sinks), -1 if exact_window is None else int(exact_window),
            deflate_level)
    with torch.cuda.device(dev):
        stream = torch.cuda.current_stream(dev).cuda_stream
        with _cuda_lock:
            holder = getattr(cal, "_cuda_compressor", None)
            if holder is None or holder[0] != dev:
                # device, encoder, its lock, its workspace tensor (grown as caches need)
                holder = [dev, _kvtc._CudaCompressor.create(cal._core, stream), threading.Lock(), None]
                setattr(cal, "_cuda_compressor", holder)
        _, enc, lock, _ = holder
        with lock:  # one encode at a time per calibration: they share the workspace
            ws_bytes, bound = enc.plan(*args)
            if holder[3] is None or holder[3].numel() < ws_bytes:
                holder[3] = torch.empty(max(int(ws_bytes), 1), dtype=torch.uint8, device=dev)
            ws = holder[3]
            out = torch.empty(int(bound), dtype=torch.uint8, device=dev)
            size = torch.zeros(1, dtype=torch.int64, device=dev)
            enc.encode(*args, projection, ws.data_ptr(), ws.numel(), out.data_ptr(), size.data_ptr(), stream)
            n = int(size.item())
            return out[:n].cpu().numpy().tobytes()


def decompress_into(cal: Calibration, data: bytes, keys: Any, values: Any, *, token_offset: int | None = None,
                    layers: Sequence[int] | range | None = None, n_threads: int = 0) -> None:
    """Restores a container into the caller's tensors, in place.

    ``keys``, ``values``: per-layer ``[kv_heads, tokens, head_dim]`` or stacked arrays of a whole
    sequence, on the host, writable, any of the three dtypes. The container's tokens go to
    ``[token_offset, token_offset + n)``; by default ``token_offset`` is the container's first position,
    so a block from :func:`compress_block` lands where it came from. ``layers`` restores only those.
    """
    dec = Decoder(cal, data, n_threads)
    t0 = dec.position_offset if token_offset is None else int(token_offset)
    k_layers, v_layers = _layers(keys, "keys"), _layers(values, "values")
    sel = range(dec.n_layers) if layers is None else [int(l) for l in layers]
    for layer in sel:
        kt, vt = k_layers[layer], v_layers[layer]
        if _is_torch(kt) and kt.device.type != "cpu":
            raise UnsupportedError("decompress_into writes host memory; the CUDA backend is not bound yet")
        if kt.shape[1] < t0 + dec.n_tokens:
            raise InvalidArgumentError(f"keys of layer {layer} hold {kt.shape[1]} tokens; the container needs "
                                       f"[{t0}, {t0 + dec.n_tokens})")
        dec.restore_layer_into(layer, kt[:, t0:t0 + dec.n_tokens, :], vt[:, t0:t0 + dec.n_tokens, :])


class Decoder:
    """An opened container: entropy-decoded once, then restored a layer at a time.

    ``Decoder(cal, data)`` checks the container against the calibration and decodes every chunk;
    :meth:`restore_layer_into` reconstructs one layer into caller tensors (host memory, any of the three
    dtypes, ``[kv_heads, tokens, head_dim]`` with a contiguous last axis). What a layer-by-layer restore
    needs: attention on layer 0 can run while later layers are restored. Safe to share between threads.
    """

    def __init__(self, cal: Calibration, data: bytes, n_threads: int = 0):
        self._core = _kvtc.Decoder.open(cal._core, data, n_threads)

    n_layers = property(lambda self: self._core.n_layers)
    n_kv_heads = property(lambda self: self._core.n_kv_heads)
    head_dim = property(lambda self: self._core.head_dim)
    n_tokens = property(lambda self: self._core.n_tokens, doc="Tokens in the container.")
    position_offset = property(lambda self: self._core.position_offset, doc="RoPE position of its first token.")
    dtype = property(lambda self: self._core.dtype, doc="The element type the container records.")

    def restore_layer_into(self, layer: int, keys: Any, values: Any) -> None:
        """Writes layer ``layer``'s keys (RoPE applied) and values into ``keys`` and ``values``."""
        self._core.restore_layer_into(layer, keys, values)


def inspect(data: bytes) -> dict:
    """Everything a container or calibration file holds (structure and checksums checked; no
    calibration needed), as ``kvtc inspect --json`` prints it."""
    return json.loads(_kvtc.inspect_json(data))
