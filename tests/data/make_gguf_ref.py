"""Reference GGUF files written by llama.cpp's Python package (`gguf`), for the engine's GGUF reader.

usage: python3 tests/data/make_gguf_ref.py [REPO_ROOT]      (needs gguf 0.19 and numpy)

Writes
  tests/data/gguf_ref.gguf      for tests/test_engine_gguf.cpp:
      for each type the engine dequantises (F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q5_K Q6_K):
        <type>.raw       random block bytes of that type (fp16 scale fields set to finite values,
                         some of them fp16 subnormals), stored as written by GGUFWriter with raw_dtype
        <type>.expected  F32, gguf.quants.dequantize(<type>.raw): the values the C++ side must match
                         bit for bit
      q2_k.raw (one Q2_K block: a type the engine does not dequantise), and metadata of every value
      type (see META below; the C++ test checks the same values).
  fuzz/corpus/gguf/seed-*.gguf  seeds for fuzz/fuzz_gguf.cpp: a few KB each (seed-1 is patched to
      version 2 and uses general.alignment 64; seed-2 has metadata only).

The random bytes come from numpy's PCG64 with fixed seeds, so a rerun with the same gguf and numpy
writes the same files. Output of the run that made the committed files:
  gguf 0.19.0 numpy <see the run>; prints one line per tensor and file.
"""
import importlib.metadata
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

# Offsets of the fp16 scale fields inside one block of each quantised type (ggml-common.h).
SCALE_OFFSETS = {
    T.Q8_0: [0], T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2],
    T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208], T.Q2_K: [80, 82],
}

# Logical shape (outermost first) of each <type>.raw tensor: a few blocks per row.
SHAPES = {
    T.F32: (3, 8), T.F16: (2, 3, 8), T.BF16: (4, 8),
    T.Q8_0: (3, 2, 64), T.Q4_0: (2, 64), T.Q4_1: (2, 64), T.Q5_0: (2, 64), T.Q5_1: (3, 32),
    T.Q4_K: (2, 256), T.Q5_K: (2, 256), T.Q6_K: (1, 512),
}

# Metadata of every value type, with edge values. tests/test_engine_gguf.cpp checks each.
META = [
    ("test.u8", 255, V.UINT8, None),
    ("test.i8", -128, V.INT8, None),
    ("test.u16", 65535, V.UINT16, None),
    ("test.i16", -32768, V.INT16, None),
    ("test.u32", 4294967295, V.UINT32, None),
    ("test.i32", -2147483648, V.INT32, None),
    ("test.f32", 0.1, V.FLOAT32, None),
    ("test.u64", 2**63 - 1, V.UINT64, None),
    ("test.i64", -2**63, V.INT64, None),
    ("test.f64", 3.141592653589793, V.FLOAT64, None),
    ("test.bool_true", True, V.BOOL, None),
    ("test.bool_false", False, V.BOOL, None),
    ("test.string", "h\u00e9llo \u2713", V.STRING, None),
    ("test.empty_string", "", V.STRING, None),
    ("test.arr_u8", [0, 1, 255], V.ARRAY, V.UINT8),
    ("test.arr_i16", [-32768, 0, 32767], V.ARRAY, V.INT16),
    ("test.arr_i32", [1, -2, 3, 2147483647], V.ARRAY, V.INT32),
    ("test.arr_u64", [0, 2**63 - 1], V.ARRAY, V.UINT64),
    ("test.arr_i64", [-2**63, 5], V.ARRAY, V.INT64),
    ("test.arr_f32", [0.5, -1.25, 0.1], V.ARRAY, V.FLOAT32),
    ("test.arr_f64", [2.5, -1e300], V.ARRAY, V.FLOAT64),
    ("test.arr_str", ["a", "", "\u00fc\u2713", "tok en"], V.ARRAY, V.STRING),
    ("test.arr_bool", [True, False, True], V.ARRAY, V.BOOL),
]


def random_blocks(rng, qtype, shape):
    """uint8 bytes of shape [..., row bytes] for a tensor of `qtype` and logical `shape`."""
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = int(np.prod(shape)) // block
    if qtype == T.F32:
        vals = rng.standard_normal(n_blocks).astype(np.float32) * np.float32(3)
        vals[:2] = [-0.0, 1e-40]  # -0 and an fp32 subnormal pass through unchanged
        raw = vals.view(np.uint8)
    elif qtype == T.F16:
        vals = (rng.standard_normal(n_blocks) * 100).astype(np.float16)
        vals[:3] = [-0.0, 6e-8, 65504]  # -0, the smallest fp16 subnormal, the largest finite
        raw = vals.view(np.uint8)
    elif qtype == T.BF16:
        bits = rng.integers(0, 1 << 16, n_blocks, dtype=np.uint32).astype(np.uint16)
        bits[(bits & 0x7F80) == 0x7F80] &= 0xBFFF  # no Inf/NaN: clear an exponent bit
        bits[:2] = [0x8000, 0x0001]  # -0 and a bf16 subnormal
        raw = bits.view(np.uint8)
    else:
        raw = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
        for k in range(n_blocks):
            for off in SCALE_OFFSETS[qtype]:
                # Mostly moderate scales; every third block gets an fp16 subnormal one.
                s = rng.uniform(-2e-5, 2e-5) if (k + off) % 3 == 0 else rng.uniform(-2.0, 2.0)
                raw[k, off:off + 2] = np.array([s], dtype=np.float16).view(np.uint8)
    return np.ascontiguousarray(raw.reshape(*shape[:-1], shape[-1] // block * type_size))


def dequantize(raw, qtype):
    out = gguf.quants.dequantize(raw, qtype).astype(np.float32)
    assert np.all(np.isfinite(out)), qtype.name
    return out


def write_ref(path):
    rng = np.random.Generator(np.random.PCG64(20261201))
    w = gguf.GGUFWriter(path, "kvtc-test")
    for key, val, vtype, sub in META:
        w.add_key_value(key, val, vtype, sub_type=sub)
    for qtype, shape in SHAPES.items():
        raw = random_blocks(rng, qtype, shape)
        expected = dequantize(raw, qtype)
        assert expected.shape == shape, (qtype.name, expected.shape)
        name = qtype.name.lower()
        w.add_tensor(name + ".raw", raw, raw_dtype=qtype)
        w.add_tensor(name + ".expected", expected)
        print(f"  {name}: shape {shape} raw bytes {raw.nbytes} first {expected.ravel()[:3]}")
    w.add_tensor("q2_k.raw", random_blocks(rng, T.Q2_K, (1, 256)), raw_dtype=T.Q2_K)
    finish(w)


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_seeds(folder):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.Generator(np.random.PCG64(7))
    # seed-0: every dequantisable type, one row of one or two blocks each, and a few metadata types.
    w = gguf.GGUFWriter(os.path.join(folder, "seed-0.gguf"), "llama")
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_bool("test.flag", True)
    w.add_array("test.ints", [1, 2, 3])
    for qtype in SHAPES:
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        shape = (1, block) if block == 256 else (2, max(block, 8))
        w.add_tensor(qtype.name.lower(), random_blocks(rng, qtype, shape), raw_dtype=qtype)
    finish(w)
    # seed-1: tokenizer-like string arrays, alignment 64, a 3-D tensor, then patched to version 2.
    path = os.path.join(folder, "seed-1.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_custom_alignment(64)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "a", "b", "\u0120the"])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.5, -3.0, -4.0])
    w.add_key_value("tokenizer.ggml.token_type", [3, 3, 1, 1, 1], V.ARRAY, sub_type=V.INT32)
    w.add_tensor("blk.0.attn_q.weight", random_blocks(rng, T.Q4_K, (2, 1, 256)), raw_dtype=T.Q4_K)
    w.add_tensor("output_norm.weight", rng.standard_normal(32).astype(np.float32))
    finish(w)
    with open(path, "r+b") as f:  # version 2 has the same layout as 3
        f.seek(4)
        f.write(np.uint32(2).tobytes())
    # seed-2: metadata only.
    w = gguf.GGUFWriter(os.path.join(folder, "seed-2.gguf"), "llama")
    w.add_string("general.name", "meta only")
    w.add_key_value("test.u64s", [1, 2**40], V.ARRAY, sub_type=V.UINT64)
    finish(w)
    for name in sorted(os.listdir(folder)):
        print(f"  {name}: {os.path.getsize(os.path.join(folder, name))} bytes")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.normpath(os.path.join(here, "..", ".."))
    print(f"gguf {importlib.metadata.version('gguf')} numpy {np.__version__}")
    ref = os.path.join(root, "tests", "data", "gguf_ref.gguf")
    write_ref(ref)
    print(f"[ok] {ref}: {os.path.getsize(ref)} bytes")
    write_seeds(os.path.join(root, "fuzz", "corpus", "gguf"))
    print("[ok] seeds")


if __name__ == "__main__":
    main()
