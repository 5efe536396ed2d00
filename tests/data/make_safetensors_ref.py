"""Interop between kvtc's safetensors code and the reference Python library (`safetensors`).

usage: python3 tests/data/make_safetensors_ref.py OUT_DIR      (needs torch, numpy, safetensors)

(a) Writes files with the reference writer, for tests/test_safetensors.cpp and tests/test_cache.cpp:
    safetensors_ref_torch.safetensors        safetensors.torch.save_file: BF16, F16, F32, I64, scalar, empty
    safetensors_ref_numpy.safetensors        safetensors.numpy.save_file: F16, F32
    safetensors_ref_torch_cache.safetensors  a tiny cache in kvtc's layout (interleaved, llama3, offset 7)
(b) Loads the files our writer made (tests/data/safetensors_ref_kvtc_*.safetensors, pinned byte for byte
    by the C++ tests) with safetensors.torch / safetensors.numpy and checks every value.

Values: vals(n)[i] = fp32(((7 i) mod 13) - 6) / fp32(3), the same formula as the C++ tests.

Output of the run that made the committed files (GPU machine, `python3 tests/data/make_safetensors_ref.py
$OUT`, exit status 0; the RuntimeWarnings are numpy's, for 65520 overflowing fp16 on purpose):
    python 3.12.3 safetensors 0.8.0 torch 2.11.0+cu130 numpy 2.5.2
      header bytes 552 entries ['empty', 'ints', 'scalar', 'x_bf16', 'x_bf16_specials', 'x_f16', 'x_f16_specials', 'x_f32']
      x_bf16_specials bits ['0x3f80', '0x3f82', '0x7f62', '0x7f80', '0x8001', '0xffff']
      x_f16_specials bits ['0x7bff', '0x7bff', '0x7c00', '0x2', '0x8000', '0x0', '0x2', '0x3555', '0xc000', '0x68e']
    [ok] write safetensors_ref_torch.safetensors
    /work/main/tests/data/make_safetensors_ref.py:93: RuntimeWarning: overflow encountered in cast
      np_save({"n_f16": F16_SPECIALS.astype(np.float16), "n_f32": vals(6).reshape(3, 1, 2)}, path,
    /work/main/tests/data/make_safetensors_ref.py:96: RuntimeWarning: overflow encountered in cast
      print("  header bytes", n, "n_f16 bits", [hex(v) for v in F16_SPECIALS.astype(np.float16).view(np.uint16)])
      header bytes 176 n_f16 bits ['0x7bff', '0x7bff', '0x7c00', '0x2', '0x8000', '0x0', '0x2', '0x3555', '0xc000', '0x68e']
    [ok] write safetensors_ref_numpy.safetensors
      header bytes 624 data order ['k.0', 'k.1', 'q.0', 'q.1', 'v.0', 'v.1']
    [ok] write safetensors_ref_torch_cache.safetensors
      metadata {'format': 'kvtc-test', 'unicode': 'ü✓'} keys ['w_bf16', 'w_empty', 'w_f16', 'w_f32']
      w_bf16: MATCH dtype=torch.bfloat16 shape=(2, 3)
      w_f16: MATCH dtype=torch.float16 shape=(10,)
      w_f32: MATCH dtype=torch.float32 shape=(2, 2, 2)
      w_empty: MATCH dtype=torch.float32 shape=(0, 3)
    /work/main/tests/data/make_safetensors_ref.py:142: RuntimeWarning: overflow encountered in cast
      check("w_f16 (numpy)", f.get_tensor("w_f16"), F16_SPECIALS.astype(np.float16))
      w_f16 (numpy): MATCH dtype=float16 shape=(10,)
      w_f32 (numpy): MATCH dtype=float32 shape=(2, 2, 2)
    [ok] load our writer's safetensors_ref_kvtc_writer.safetensors
      metadata {'rope_theta': '10000', 'position_offset': '5', 'tokens': '3', 'head_dim': '4', 'num_kv_heads': '1', 'model': 'kvtc-writer', 'rope_style': 'half', 'num_layers': '2', 'num_heads': '2'}
      k.0: MATCH dtype=torch.bfloat16 shape=(1, 3, 4)
      v.0: MATCH dtype=torch.bfloat16 shape=(1, 3, 4)
      q.0: MATCH dtype=torch.bfloat16 shape=(2, 2, 4)
      k.1: MATCH dtype=torch.bfloat16 shape=(1, 3, 4)
      v.1: MATCH dtype=torch.bfloat16 shape=(1, 3, 4)
      q.1: MATCH dtype=torch.bfloat16 shape=(2, 2, 4)
    [ok] load our writer's safetensors_ref_kvtc_cache.safetensors
    FAILED steps: none
"""
import os
import sys
import traceback

import numpy as np

OUT = sys.argv[1] if len(sys.argv) > 1 else "."
HERE = os.path.dirname(os.path.abspath(__file__))
FAILED = []


def vals(n):
    return np.array([np.float32((i * 7) % 13 - 6) / np.float32(3) for i in range(n)], dtype=np.float32)


F16_SPECIALS = np.array([65504.0, 65519.0, 65520.0, np.float32(1e-7), -0.0, 2.0**-25, 3 * 2.0**-25,
                         np.float32(1) / np.float32(3), -2.0, np.float32(1e-4)], dtype=np.float32)
BF16_SPECIALS = np.array([1 + 2.0**-8, 1 + 3 * 2.0**-8, np.float32(3e38), np.finfo(np.float32).max,
                          np.float32(-1e-40), np.nan], dtype=np.float32)


def step(name):
    def wrap(fn):
        try:
            fn()
            print(f"[ok] {name}", flush=True)
        except Exception:
            FAILED.append(name)
            print(f"[FAILED] {name}", flush=True)
            traceback.print_exc(file=sys.stdout)
        return fn
    return wrap


import safetensors  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import save_file as np_save  # noqa: E402
from safetensors.torch import load_file as torch_load, save_file as torch_save  # noqa: E402

print("python", sys.version.split()[0], "safetensors", safetensors.__version__, "torch", torch.__version__,
      "numpy", np.__version__, flush=True)


def header_of(path):
    import json
    import struct
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return n, json.loads(f.read(n))


@step("write safetensors_ref_torch.safetensors")
def _():
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    tensors = {
        "x_bf16": t(vals(15).reshape(3, 5)).to(torch.bfloat16),
        "x_bf16_specials": t(BF16_SPECIALS).to(torch.bfloat16),
        "x_f16": t(vals(8).reshape(2, 4)).to(torch.float16),
        "x_f16_specials": t(F16_SPECIALS).to(torch.float16),
        "x_f32": t(vals(4)),
        "scalar": torch.tensor(2.5, dtype=torch.float32),
        "empty": torch.zeros(0, 2, dtype=torch.float32),
        "ints": torch.tensor([-1, 0, 1 << 40], dtype=torch.int64),
    }
    path = os.path.join(OUT, "safetensors_ref_torch.safetensors")
    torch_save(tensors, path, metadata={"model": "ref", "unicode": "\u00fc\u2713"})
    n, h = header_of(path)
    print("  header bytes", n, "entries", sorted(k for k in h if k != "__metadata__"))
    print("  x_bf16_specials bits", [hex(v & 0xffff) for v in tensors["x_bf16_specials"].view(torch.int16).tolist()])
    print("  x_f16_specials bits", [hex(v & 0xffff) for v in tensors["x_f16_specials"].view(torch.int16).tolist()])


@step("write safetensors_ref_numpy.safetensors")
def _():
    path = os.path.join(OUT, "safetensors_ref_numpy.safetensors")
    np_save({"n_f16": F16_SPECIALS.astype(np.float16), "n_f32": vals(6).reshape(3, 1, 2)}, path,
            metadata={"writer": "safetensors.numpy"})
    n, h = header_of(path)
    print("  header bytes", n, "n_f16 bits", [hex(v) for v in F16_SPECIALS.astype(np.float16).view(np.uint16)])


@step("write safetensors_ref_torch_cache.safetensors")
def _():
    tensors = {}
    for l in range(2):
        tensors[f"k.{l}"] = torch.from_numpy(vals(12) + np.float32(l)).reshape(1, 3, 4).to(torch.bfloat16)
        tensors[f"v.{l}"] = torch.from_numpy(-vals(12) - np.float32(l)).reshape(1, 3, 4).to(torch.bfloat16)
        tensors[f"q.{l}"] = torch.from_numpy(vals(16) * np.float32(2)).reshape(2, 2, 4).to(torch.bfloat16)
    meta = {"num_layers": "2", "num_kv_heads": "1", "num_heads": "2", "head_dim": "4", "rope_theta": "10000.0",
            "rope_style": "interleaved", "position_offset": "7", "model": "py-ref", "tokens": "3",
            "rope_scaling": "llama3:factor=8,low=1,high=4,orig=8192"}
    path = os.path.join(OUT, "safetensors_ref_torch_cache.safetensors")
    torch_save(tensors, path, metadata=meta)
    n, h = header_of(path)
    order = sorted((v["data_offsets"][0], k) for k, v in h.items() if k != "__metadata__")
    print("  header bytes", n, "data order", [k for _, k in order])


def check(name, got, want):
    if isinstance(got, torch.Tensor):
        same = got.dtype == want.dtype and got.shape == want.shape and torch.equal(
            got.view(torch.int16) if got.element_size() == 2 else got, want.view(torch.int16)
            if want.element_size() == 2 else want)
    else:
        same = got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()
    print(f"  {name}: {'MATCH' if same else 'MISMATCH'} dtype={got.dtype} shape={tuple(got.shape)}")
    if not same:
        print("    got ", got)
        print("    want", want)
        raise AssertionError(name)


@step("load our writer's safetensors_ref_kvtc_writer.safetensors")
def _():
    path = os.path.join(HERE, "safetensors_ref_kvtc_writer.safetensors")
    d = torch_load(path)
    with safe_open(path, framework="pt") as f:
        print("  metadata", f.metadata(), "keys", list(f.keys()))
        assert f.metadata() == {"format": "kvtc-test", "unicode": "\u00fc\u2713"}
    check("w_bf16", d["w_bf16"], torch.from_numpy(vals(6).reshape(2, 3)).to(torch.bfloat16))
    check("w_f16", d["w_f16"], torch.from_numpy(F16_SPECIALS).to(torch.float16))
    check("w_f32", d["w_f32"], torch.from_numpy(vals(8).reshape(2, 2, 2)))
    check("w_empty", d["w_empty"], torch.zeros(0, 3))
    with safe_open(path, framework="np") as f:  # the numpy side too (numpy has no bf16: F16 and F32 only)
        check("w_f16 (numpy)", f.get_tensor("w_f16"), F16_SPECIALS.astype(np.float16))
        check("w_f32 (numpy)", f.get_tensor("w_f32"), vals(8).reshape(2, 2, 2))


@step("load our writer's safetensors_ref_kvtc_cache.safetensors")
def _():
    path = os.path.join(HERE, "safetensors_ref_kvtc_cache.safetensors")
    d = torch_load(path)
    with safe_open(path, framework="pt") as f:
        print("  metadata", f.metadata())
    for l in range(2):
        check(f"k.{l}", d[f"k.{l}"], torch.from_numpy(vals(12) + np.float32(l)).reshape(1, 3, 4).to(torch.bfloat16))
        check(f"v.{l}", d[f"v.{l}"], torch.from_numpy(-vals(12) - np.float32(l)).reshape(1, 3, 4).to(torch.bfloat16))
        check(f"q.{l}", d[f"q.{l}"], torch.from_numpy(vals(16) * np.float32(2)).reshape(2, 2, 4).to(torch.bfloat16))


print("FAILED steps:", FAILED if FAILED else "none")
sys.exit(1 if FAILED else 0)
