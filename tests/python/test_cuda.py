"""The CUDA path of the package (a build with the CUDA backend and a GPU; skipped elsewhere, saying why):
containers of codec 2 and 3 restored by the CUDA backend straight into torch CUDA tensors agree with the
CPU decoder; CUDA tensors compress to the bytes their host copies give, and with device="cuda" on the
GPU to containers of the host encoder's size and error."""
from __future__ import annotations

import threading

import pytest
import torch
from safetensors.torch import load_file

import kvtc


def _why_not() -> str | None:
    """None when the CUDA path can run, else why not (the skip reason)."""
    if not hasattr(kvtc._kvtc, "_cuda_available"):
        return ("this build has no CUDA backend (built with KVTC_CUDA=OFF, or AUTO found no CUDA toolkit); "
                "test_package.py tests the CPU path")
    ok, why = kvtc._kvtc._cuda_available()
    return None if ok else f"the CUDA backend is built but no device is usable: {why}"


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


@pytest.fixture(scope="module")
def case(repo_root):
    cal = kvtc.Calibration.fit([repo_root / "data" / "small-calib.safetensors"], ratios=[8, 16])
    t = load_file(str(repo_root / "data" / "small-test.safetensors"))
    keys = [t[f"k.{l}"] for l in range(cal.n_layers)]
    values = [t[f"v.{l}"] for l in range(cal.n_layers)]
    return cal, keys, values


@pytest.mark.parametrize("codec", [2, 3])
@pytest.mark.parametrize("ratio", [8, 16])
def test_gpu_restore_matches_cpu(case, ratio, codec):
    cal, keys, values = case
    data = kvtc.compress(cal, keys, values, ratio, codec=codec)
    k_cpu, v_cpu = kvtc.decompress(cal, data, framework="torch", dtype=torch.float32)
    k_gpu, v_gpu = kvtc.decompress(cal, data, framework="torch", dtype=torch.float32, device="cuda")
    assert k_gpu.is_cuda and k_gpu.dtype == torch.float32
    for a, b in ((k_gpu.cpu(), k_cpu), (v_gpu.cpu(), v_cpu)):
        rel = float((a - b).norm() / b.norm())
        assert rel < 1e-5, rel  # the fp32 path: within fp32 rounding of the CPU decoder
    # Exact tokens are exact on the GPU too.
    assert torch.equal(k_gpu[:, :, :4].cpu(), k_cpu[:, :, :4])
    kb, vb = kvtc.decompress(cal, data, like=keys[0].cuda())  # bf16 on the device: the tensor-core path
    assert kb.dtype == torch.bfloat16 and kb.is_cuda
    rel = float((kb.float().cpu() - k_cpu).norm() / k_cpu.norm())
    assert rel < 1e-2, rel
    sel, _ = kvtc.decompress(cal, data, layers=[2], framework="torch", dtype=torch.float32, device="cuda")
    assert torch.equal(sel[0], k_gpu[2])


@pytest.mark.parametrize("codec", [2, 3])
def test_fp8_reconstruction(case, codec):
    """FP8 reconstruction adds at most a tenth of the codec's own error energy, in each stream."""
    cal, keys, values = case
    data = kvtc.compress(cal, keys, values, 16, codec=codec)
    k8, v8 = kvtc.decompress(cal, data, framework="torch", dtype=torch.bfloat16, device="cuda", fp8=True)
    kb, vb = kvtc.decompress(cal, data, framework="torch", dtype=torch.bfloat16, device="cuda")
    k32, v32 = kvtc.decompress(cal, data, framework="torch", dtype=torch.float32)
    assert k8.is_cuda and k8.dtype == torch.bfloat16
    for x8, xb, x32, orig in ((k8, kb, k32, keys), (v8, vb, v32, values)):
        orig = torch.stack([o.float() for o in orig])
        codec_err = float(((x32 - orig) ** 2).sum())
        fp8_err = float(((x8.float().cpu() - orig) ** 2).sum())
        assert fp8_err <= 1.1 * codec_err, (fp8_err, codec_err)
        assert not torch.equal(x8, xb)  # the FP8 GEMM ran, not the bf16 one
    assert torch.equal(k8[:, :, :4].cpu(), kb[:, :, :4].cpu())  # exact tokens stay exact
    with pytest.raises(kvtc.InvalidArgumentError):  # FP8 writes bfloat16 only
        kvtc.decompress(cal, data, framework="torch", dtype=torch.float32, device="cuda", fp8=True)


def test_load_cache_fp8(case, tmp_path):
    """kvtc.hf.load_cache(fp8=True) gives decompress's FP8 restore as a bfloat16 DynamicCache on the GPU."""
    import kvtc.hf

    cal, keys, values = case
    data = kvtc.compress(cal, keys, values, 16, codec=3)
    path = tmp_path / "c.kvtc"
    path.write_bytes(data)
    k8, v8 = kvtc.decompress(cal, data, framework="torch", dtype=torch.bfloat16, device="cuda", fp8=True)
    cache = kvtc.hf.load_cache(path, cal, device="cuda", fp8=True)
    assert cache.get_seq_length() == keys[0].shape[1]
    for l in range(cal.n_layers):
        assert cache.layers[l].keys.dtype == torch.bfloat16 and cache.layers[l].keys.is_cuda
        assert torch.equal(cache.layers[l].keys[0], k8[l]) and torch.equal(cache.layers[l].values[0], v8[l])


def test_cuda_tensors_compress_to_host_bytes(case):
    cal, keys, values = case
    host = kvtc.compress(cal, keys, values, 16)
    dev = kvtc.compress(cal, [k.cuda() for k in keys], [v.cuda() for v in values], 16)
    assert dev == host


def test_compress_on_gpu(case):
    """compress(device="cuda") encodes CUDA tensors on the GPU: a codec 2 container of the same size and
    error as the host encoder's, restorable by the CPU decoder, exact tokens bit for bit, blocks too."""
    cal, keys, values = case
    kd, vd = [k.cuda() for k in keys], [v.cuda() for v in values]
    n = keys[0].shape[1]
    original = (torch.stack(keys).float(), torch.stack(values).float())
    for ratio in (8, 16):
        host = kvtc.compress(cal, keys, values, ratio)
        gpu = kvtc.compress(cal, kd, vd, ratio, device="cuda")
        assert gpu != host  # the GPU's own DEFLATE streams
        ih, ig = kvtc.inspect(host), kvtc.inspect(gpu)
        assert ig["format_version"] == ih["format_version"] == 2
        assert ig["n_tokens"] == n and ig["calibration_fingerprint"] == ih["calibration_fingerprint"]
        assert ig["metadata"] == ih["metadata"] and ig["n_head_exact"] == 4 and ig["n_tail_exact"] == 128
        # Huffman-only DEFLATE: exact tokens compress less (the CLI measured 4.17x against 4.60x on this cache)
        assert 0.95 * len(host) <= len(gpu) <= 1.15 * len(host), (len(gpu), len(host))
        rh = kvtc.decompress(cal, host, framework="torch", dtype=torch.float32)
        rg = kvtc.decompress(cal, gpu, framework="torch", dtype=torch.float32)
        for stream in range(2):
            eh = float((rh[stream] - original[stream]).norm() / original[stream].norm())
            eg = float((rg[stream] - original[stream]).norm() / original[stream].norm())
            assert 0 < eg <= 1.02 * eh, (ratio, stream, eg, eh)  # codes differ only by rounding
            for t in (slice(0, 4), slice(n - 128, n)):  # sinks and window: the input's bits
                assert torch.equal(rg[stream][:, :, t], original[stream][:, :, t])
    # The faster projections: the fp32 projection's error within 2% (TF32 and bf16 tensor cores).
    fp32 = kvtc.decompress(cal, kvtc.compress(cal, kd, vd, 16, device="cuda"), framework="torch", dtype=torch.float32)
    for projection in ("tf32", "bf16"):
        got = kvtc.decompress(cal, kvtc.compress(cal, kd, vd, 16, device="cuda", projection=projection),
                              framework="torch", dtype=torch.float32)
        for stream in range(2):
            ef = float((fp32[stream] - original[stream]).norm())
            eg = float((got[stream] - original[stream]).norm())
            assert eg <= 1.01 * ef, (projection, stream, eg, ef)  # norms: 1.01 is about 2% in energy
    with pytest.raises(kvtc.InvalidArgumentError, match="projection"):
        kvtc.compress(cal, kd, vd, 16, device="cuda", projection="fp8")
    # A block [256, n) in block mode: its true positions, nothing exact but nothing lost either.
    blk = kvtc.compress_block(cal, kd, vd, 256, n, 16, device="cuda")
    info = kvtc.inspect(blk)
    assert info["n_tokens"] == n - 256 and info["position_offset"] == 256 and info["n_head_exact"] == 0
    kb, _ = kvtc.decompress(cal, blk, framework="torch", dtype=torch.float32)
    kh, _ = kvtc.decompress(cal, kvtc.compress_block(cal, keys, values, 256, n, 16), framework="torch",
                            dtype=torch.float32)
    ref = original[0][:, :, 256:]
    assert float((kb - ref).norm() / ref.norm()) <= 1.02 * float((kh - ref).norm() / ref.norm())
    # Stacked [layers, heads, tokens, dim] input on the GPU, and the refusals.
    assert len(kvtc.compress(cal, torch.stack(kd), torch.stack(vd), 16, device="cuda")) > 0
    with pytest.raises(kvtc.InvalidArgumentError, match="torch tensors on a CUDA device"):
        kvtc.compress(cal, keys, values, 16, device="cuda")
    with pytest.raises(kvtc.MismatchError):
        kvtc.compress(cal, kd[:-1], vd[:-1], 16, device="cuda")


def test_corrupt_container_on_gpu(case):
    cal, keys, values = case
    data = bytearray(kvtc.compress(cal, keys, values, 16))
    data[len(data) // 2] ^= 0x08
    with pytest.raises(kvtc.CorruptError):
        kvtc.decompress(cal, bytes(data), framework="torch", device="cuda")


def test_threads_on_their_own_streams(case):
    """One calibration shared by threads that restore on streams of their own: the serial results."""
    cal, keys, values = case
    datas = [kvtc.compress(cal, keys, values, r) for r in (8, 16)]
    want = [kvtc.decompress(cal, d, framework="torch", dtype=torch.float32, device="cuda") for d in datas]
    got = [None] * 8

    def work(i):
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            for _ in range(3):
                got[i] = kvtc.decompress(cal, datas[i % 2], framework="torch", dtype=torch.float32, device="cuda")
            s.synchronize()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(got))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (k, v) in enumerate(got):
        assert torch.equal(k, want[i % 2][0]) and torch.equal(v, want[i % 2][1]), i
