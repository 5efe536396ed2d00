"""The kvtc Python package against the C++ CLI, on the repository's small real caches (data/).

What users depend on: the same bytes as `kvtc compress` for the same cache, whatever array type, dtype
or layout holds it; no copy of the input; errors as kvtc exceptions; no leak over many calls.
"""
from __future__ import annotations

import gc
import json
import subprocess
import threading
import tracemalloc

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import kvtc

RATIO = 16


@pytest.fixture(scope="module")
def cache(files):
    """The test cache as bf16 torch tensors, per layer [kv_heads, tokens, head_dim], with its metadata."""
    tensors = load_file(str(files[1]))
    with safe_open(str(files[1]), "pt") as f:
        meta = f.metadata()
    n = int(meta["num_layers"])
    return [tensors[f"k.{l}"] for l in range(n)], [tensors[f"v.{l}"] for l in range(n)], meta


@pytest.fixture(scope="module")
def cli_container(kvtc_cli, cal, cli_cal, files, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "test.kvtc"
    subprocess.run([str(kvtc_cli), "compress", "-c", str(cli_cal), "-r", str(RATIO), "-o", str(out), str(files[1])],
                   check=True, capture_output=True)
    return out.read_bytes()


def compress_like_cli(cal, keys, values, meta):
    return kvtc.compress(cal, keys, values, RATIO, positions=int(meta["position_offset"]), metadata=meta)


def test_calibration_fit_matches_cli(cli_cal, files):
    fitted = kvtc.Calibration.fit([files[0]], ratios=[8, 16])
    assert fitted.serialize() == cli_cal.read_bytes()
    info = fitted.info()
    assert info["n_features"] == info["n_layers"] * info["n_kv_heads"] * info["head_dim"]
    assert info["ratios"] == [8.0, 16.0]
    assert info["allocations"]["16.0"]["keys"]["bits_per_token"] <= 16 * info["n_features"] / 16


def test_calibration_save_load_parse(cal, tmp_path):
    path = tmp_path / "copy.kvtcal"
    cal.save(path)
    again = kvtc.Calibration.load(path)
    assert again.fingerprint == cal.fingerprint
    assert kvtc.Calibration.parse(path.read_bytes()).fingerprint == cal.fingerprint
    assert "fingerprint" in repr(cal)


def test_compress_matches_cli_bytes(cal, cache, cli_container):
    keys, values, meta = cache
    assert compress_like_cli(cal, keys, values, meta) == cli_container


def test_decompress_matches_cli(kvtc_cli, cal, cli_cal, cli_container, tmp_path):
    src = tmp_path / "c.kvtc"
    src.write_bytes(cli_container)
    out = tmp_path / "restored.safetensors"
    subprocess.run([str(kvtc_cli), "decompress", "-c", str(cli_cal), "-o", str(out), str(src)], check=True,
                   capture_output=True)
    ref = load_file(str(out))
    k, v = kvtc.decompress(cal, cli_container, framework="torch")
    assert k.dtype == torch.bfloat16  # the container's dtype
    for l in range(k.shape[0]):
        assert torch.equal(k[l], ref[f"k.{l}"]) and torch.equal(v[l], ref[f"v.{l}"])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_numpy_dtypes_and_layouts(cal, cache, dtype):
    """fp32 and fp16 NumPy arrays, per layer or stacked, contiguous or token-major: one container."""
    keys, values, meta = cache
    np_k = [k.float().numpy().astype(dtype) for k in keys]
    np_v = [v.float().numpy().astype(dtype) for v in values]
    base = kvtc.compress(cal, np_k, np_v, RATIO)
    stacked = kvtc.compress(cal, np.stack(np_k), np.stack(np_v), RATIO)
    # [tokens, heads, dim] in memory, seen as [heads, tokens, dim]: strided views, not copies.
    tm_k = [np.ascontiguousarray(a.transpose(1, 0, 2)).transpose(1, 0, 2) for a in np_k]
    tm_v = [np.ascontiguousarray(a.transpose(1, 0, 2)).transpose(1, 0, 2) for a in np_v]
    token_major = kvtc.compress(cal, tm_k, tm_v, RATIO)
    assert base == stacked == token_major
    assert kvtc.inspect(base)["dtype"] == {"float32": "F32", "float16": "F16"}[dtype]
    k2, v2 = kvtc.decompress(cal, base)
    assert k2.dtype == np.dtype(dtype) and k2.shape == (len(np_k),) + np_k[0].shape
    # Exact tokens (sinks and window) come back bit for bit.
    assert np.array_equal(k2[:, :, :4], np.stack(np_k)[:, :, :4])
    assert np.array_equal(v2[:, :, -128:], np.stack(np_v)[:, :, -128:])


def test_bf16_fp32_and_values_agree(cal, cache):
    """bf16 values widened to fp32 compress to the same coefficients: only the recorded dtype differs."""
    keys, values, _ = cache
    a = kvtc.decompress(cal, kvtc.compress(cal, keys, values, RATIO), dtype="float32")
    b = kvtc.decompress(cal, kvtc.compress(cal, [k.float() for k in keys], [v.float() for v in values], RATIO),
                        dtype="float32")
    np.testing.assert_allclose(a[0], b[0], rtol=0, atol=1e-5)


def test_decompress_like_and_layers(cal, cache):
    keys, values, _ = cache
    data = kvtc.compress(cal, keys, values, RATIO)
    k_all, v_all = kvtc.decompress(cal, data, like=keys)
    assert isinstance(k_all, torch.Tensor) and k_all.dtype == torch.bfloat16
    k_sel, v_sel = kvtc.decompress(cal, data, layers=[3, 1], like=keys[0])
    assert torch.equal(k_sel[0], k_all[3]) and torch.equal(v_sel[1], v_all[1])
    k16, _ = kvtc.decompress(cal, data, framework="torch", dtype=torch.float16)
    assert k16.dtype == torch.float16


def test_fp8_is_refused_off_the_gpu_path(cal, cache):
    """fp8=True never falls back to another precision: off the CUDA path it raises and says why."""
    keys, values, _ = cache
    data = kvtc.compress(cal, keys, values, RATIO)
    for kwargs in ({}, {"framework": "torch"}, {"like": keys[0]}, {"framework": "torch", "dtype": torch.float32}):
        with pytest.raises(kvtc.InvalidArgumentError, match="fp8=True reconstructs on the GPU"):
            kvtc.decompress(cal, data, fp8=True, **kwargs)


def test_load_cache_fp8_is_refused_off_the_gpu_path(cal, cache, tmp_path):
    """kvtc.hf.load_cache(fp8=True) on the host raises like decompress, and restores nothing."""
    import kvtc.hf

    keys, values, _ = cache
    path = tmp_path / "c.kvtc"
    path.write_bytes(kvtc.compress(cal, keys, values, RATIO))
    for kwargs in ({}, {"device": "cpu"}, {"dtype": torch.bfloat16}):
        with pytest.raises(kvtc.InvalidArgumentError, match="fp8=True reconstructs on the GPU"):
            kvtc.hf.load_cache(path, cal, fp8=True, **kwargs)
    restored = kvtc.hf.load_cache(path, cal)  # without fp8 the host path restores it
    assert restored.get_seq_length() == keys[0].shape[1]


def test_compress_on_the_gpu_never_falls_back_to_the_host(cal, cache):
    """compress(device="cuda") refuses what the GPU encoder cannot do, and says so, instead of quietly
    running the host encoder."""
    keys, values, _ = cache
    for kwargs in ({"codec": 3}, {"report": {}}, {"n_threads": 2}, {"token_importance": [1.0] * keys[0].shape[1]}):
        with pytest.raises(kvtc.UnsupportedError, match="writes codec 2 without"):
            kvtc.compress(cal, keys, values, RATIO, device="cuda", **kwargs)
    if kvtc.cuda_available():  # a GPU build on a GPU: host tensors are refused
        with pytest.raises(kvtc.InvalidArgumentError, match="torch tensors on a CUDA device"):
            kvtc.compress(cal, keys, values, RATIO, device="cuda")
    else:
        with pytest.raises(kvtc.UnsupportedError, match="cuda_available"):
            kvtc.compress(cal, keys, values, RATIO, device="cuda")
    assert kvtc.compress(cal, keys, values, RATIO, device="cpu") == kvtc.compress(cal, keys, values, RATIO)
    with pytest.raises(kvtc.InvalidArgumentError, match="for compress.device='cuda'"):
        kvtc.compress(cal, keys, values, RATIO, projection="bf16")


def test_report(cal, cache):
    keys, values, _ = cache
    rep = {}
    data = kvtc.compress(cal, keys, values, RATIO, report=rep)
    assert rep["file_bytes"] == len(data)
    assert rep["ratio_compressed_tokens"] >= RATIO  # the target holds on the compressed tokens
    assert len(rep["layers"]) == len(keys)
    k2, _ = kvtc.decompress(cal, data, framework="torch", dtype=torch.float32)
    t0, t1 = 4, keys[0].shape[1] - 128
    num = sum(float(((k2[l, :, t0:t1] - keys[l][:, t0:t1].float()) ** 2).sum()) for l in range(len(keys)))
    den = sum(float((keys[l][:, t0:t1].float() ** 2).sum()) for l in range(len(keys)))
    assert rep["k_relative_mse"] == pytest.approx(num / den, rel=1e-3)


def test_no_copy_of_contiguous_input(cal, cache):
    """The binding reads the caller's memory: same address, and no array-sized allocation on the way."""
    keys, values, _ = cache
    np_k = np.stack([k.float().numpy() for k in keys])
    np_v = np.stack([v.float().numpy() for v in values])
    assert kvtc._kvtc._data_pointer(np_k[2]) == np_k[2].ctypes.data
    t = keys[1]
    assert kvtc._kvtc._data_pointer(t) == t.data_ptr()
    strided = np_k[:, :, ::1, :].transpose(0, 1, 2, 3)[1]
    assert kvtc._kvtc._data_pointer(strided) == strided.ctypes.data
    tracemalloc.start()
    data = kvtc.compress(cal, np_k, np_v, RATIO)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # NumPy reports its allocations to tracemalloc, as Python does the returned bytes: beyond those, a
    # copy of the input would show up here.
    assert peak - len(data) < np_k.nbytes / 10, f"peak {peak} bytes for a {np_k.nbytes}-byte input"


def test_block_mode_round_trip(cal, cache):
    keys, values, _ = cache
    n = keys[0].shape[1]
    out_k = torch.zeros((len(keys),) + tuple(keys[0].shape), dtype=torch.float32)
    out_v = torch.zeros_like(out_k)
    edges = [0, 64, 192, n]
    for a, b in zip(edges, edges[1:]):
        block = kvtc.compress_block(cal, keys, values, a, b, RATIO)
        info = kvtc.inspect(block)
        assert info["n_tail_exact"] == 0 and info["n_head_exact"] == (4 if a == 0 else 0)
        assert info["position_offset"] == a and info["n_tokens"] == b - a
        kvtc.decompress_into(cal, block, out_k, out_v)
    ref = torch.stack([k.float() for k in keys])
    assert torch.equal(out_k[:, :, :4], ref[:, :, :4])  # sinks of the first block
    # Every token came back (no zero rows left) and at the error of a whole-sequence encode or better.
    whole, _ = kvtc.decompress(cal, kvtc.compress(cal, keys, values, RATIO, exact_window=0), dtype="float32")
    mid = slice(4, n)
    err_blocks = float(((out_k[:, :, mid] - ref[:, :, mid]) ** 2).sum() / (ref[:, :, mid] ** 2).sum())
    err_whole = float(((torch.from_numpy(whole)[:, :, mid] - ref[:, :, mid]) ** 2).sum() / (ref[:, :, mid] ** 2).sum())
    assert err_blocks < 1.5 * err_whole + 1e-6, (err_blocks, err_whole)
    assert bool((out_k.abs().sum(-1) > 0).all())


def test_errors(cal, cache, cli_container, files, tmp_path):
    keys, values, meta = cache
    with pytest.raises(kvtc.CorruptError, match="does not fit"):
        kvtc.decompress(cal, cli_container[:100])
    flipped = bytearray(cli_container)
    flipped[len(flipped) - 10] ^= 0x40
    with pytest.raises(kvtc.CorruptError):  # ChecksumError is a CorruptError
        kvtc.decompress(cal, bytes(flipped))
    other = kvtc.Calibration.fit([files[1]], ratios=[8])
    with pytest.raises(kvtc.MismatchError, match="calibration"):
        kvtc.decompress(other, cli_container)
    with pytest.raises(kvtc.MismatchError):
        kvtc.compress(cal, keys[:-1], values[:-1], RATIO)
    with pytest.raises(kvtc.MismatchError, match="expected shape"):
        kvtc.compress(cal, [k[:1] for k in keys], [v[:1] for v in values], RATIO)
    with pytest.raises(kvtc.InvalidArgumentError):
        kvtc.compress(cal, [k.to(torch.int32) for k in keys], values, RATIO)
    with pytest.raises(ValueError):  # InvalidArgumentError is a ValueError
        kvtc.compress(cal, keys, values, 0.5)
    with pytest.raises(kvtc.KvtcIOError):
        kvtc.Calibration.load(tmp_path / "missing.kvtcal")
    with pytest.raises(kvtc.CorruptError):
        kvtc.Calibration.parse(b"not a calibration")
    with pytest.raises(kvtc.CorruptError):
        kvtc.inspect(b"KVTC" + b"\0" * 40)


def test_threads_share_calibration(cal, cache):
    """Calls release the GIL and share one calibration: concurrent encodes give the serial result."""
    keys, values, _ = cache
    expected = kvtc.compress(cal, keys, values, RATIO, n_threads=1)
    results = [None] * 4

    def work(i):
        results[i] = kvtc.compress(cal, keys, values, RATIO, n_threads=1)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == expected for r in results)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_no_leak_over_many_calls(cal, cache):
    keys, values, _ = cache
    refs = [__import__("sys").getrefcount(k) for k in keys]
    for _ in range(5):  # warm up allocators
        kvtc.decompress(cal, kvtc.compress(cal, keys, values, RATIO))
    gc.collect()
    before = _rss_bytes()
    for _ in range(60):
        data = kvtc.compress(cal, keys, values, RATIO)
        kvtc.decompress(cal, data, framework="torch")
        try:
            kvtc.decompress(cal, data[:-5])
        except kvtc.CorruptError:
            pass
    gc.collect()
    grown = _rss_bytes() - before
    raw = sum(k.numel() * 2 * 2 for k in keys)
    assert grown < 4 * raw, f"RSS grew {grown} bytes over 60 round trips of a {raw}-byte cache"
    assert [__import__("sys").getrefcount(k) for k in keys] == refs


def test_help_reads_well():
    for obj in (kvtc, kvtc.compress, kvtc.decompress, kvtc.compress_block, kvtc.decompress_into, kvtc.Calibration,
                kvtc.Calibration.fit, kvtc.inspect):
        assert obj.__doc__ and len(obj.__doc__.strip()) > 40, obj


def test_inspect_matches_cli(kvtc_cli, cli_container, tmp_path):
    path = tmp_path / "c.kvtc"
    path.write_bytes(cli_container)
    cli = json.loads(subprocess.run([str(kvtc_cli), "inspect", "--json", str(path)], check=True, capture_output=True,
                                    text=True).stdout)
    assert kvtc.inspect(cli_container) == cli
    # Codec 2 (the default) writes format 2; container_format_version() is the newest this build writes.
    assert cli["format_version"] == 2 <= kvtc.container_format_version()


def test_decoder_restores_layers_into_strided_tensors(cal, cache):
    keys, values, _ = cache
    data = kvtc.compress(cal, keys, values, RATIO)
    dec = kvtc.Decoder(cal, data)
    assert (dec.n_layers, dec.n_tokens, dec.position_offset, dec.dtype) == (len(keys), keys[0].shape[1], 0, "bfloat16")
    k_all, v_all = kvtc.decompress(cal, data, framework="torch")
    h, t, d = keys[0].shape
    # A token-major buffer [tokens, heads, dim] seen as [heads, tokens, dim]: written in place.
    buf_k = torch.zeros((t, h, d), dtype=torch.bfloat16)
    buf_v = torch.zeros((t, h, d), dtype=torch.bfloat16)
    dec.restore_layer_into(2, buf_k.transpose(0, 1), buf_v.transpose(0, 1))
    assert torch.equal(buf_k.transpose(0, 1), k_all[2]) and torch.equal(buf_v.transpose(0, 1), v_all[2])
    with pytest.raises(kvtc.InvalidArgumentError):
        dec.restore_layer_into(len(keys), buf_k.transpose(0, 1), buf_v.transpose(0, 1))
    with pytest.raises(kvtc.MismatchError):
        dec.restore_layer_into(0, buf_k[:10].transpose(0, 1), buf_v[:10].transpose(0, 1))
