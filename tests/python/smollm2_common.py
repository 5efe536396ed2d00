"""What the SmolLM2 tests share: the eval harness's predictions, the pass bar, the held-out corpus, and a
calibration made once per build (the model's calibration takes minutes on two cores).

Run as a script to make that calibration from the model on a device (the GPU machine's script,
scripts/device_smollm2_gpu.sh; tests then take it through KVTC_SMOLLM2_CAL, see conftest.py):
    python3 tests/python/smollm2_common.py OUT.kvtcal [--device cuda] [--shared DIR] [--model PATH]
"""
from __future__ import annotations

import hashlib
import lzma
import math
from pathlib import Path

MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The eval harness's top-1 agreement for kvtc on SmolLM2, fidelity 1K, prose and code (bench/RESULTS.md,
# "SmolLM2-135M-Instruct: the real model"): 94.8 / 98.2 at 8.6x, 92.3 / 96.5 at 17x. The prompts of the
# tests are prose, or half prose and half code; the mean of the two is the prediction.
PREDICTED = {8: (0.948 + 0.982) / 2, 16: (0.923 + 0.965) / 2}
CAL_RATIOS = (8, 16)


def bar(ratio: int, n: int) -> float:
    """The harness's prediction less two standard errors of an n-token sample."""
    p = PREDICTED[ratio]
    return p - 2 * math.sqrt(p * (1 - p) / n)


def docs(shared_dir: Path, name: str) -> list[str]:
    with lzma.open(shared_dir / "corpus" / f"{name}.txt.xz", "rt", encoding="utf-8") as f:
        return f.read()[:-1].split("\n\x1e\n")


def calibration_texts(shared_dir: Path) -> list[str]:
    """Six prose and six code documents of the valid split, interleaved (never the test split)."""
    return [d for pair in zip(docs(shared_dir, "prose.valid")[:6], docs(shared_dir, "code.valid")[:6]) for d in pair]


def calibration_key(kvtc_module, gguf: Path) -> str:
    """Names a calibration by everything that makes it: the built extension, kvtc.hf, the model file."""
    h = hashlib.sha256()
    for p in (Path(kvtc_module._kvtc.__file__), Path(kvtc_module.__file__).with_name("hf.py")):
        h.update(p.read_bytes())
    h.update(str(gguf.stat().st_size).encode() + gguf.name.encode())
    h.update(repr(CAL_RATIOS).encode())
    return h.hexdigest()[:16]


def calibrate(model, tokenizer, shared_dir: Path):
    """The tests' calibration of SmolLM2 (kvtc.hf.calibrate on calibration_texts, at most 1,024 tokens
    each, ratios CAL_RATIOS), from `model` wherever it lives; the fit runs on the host."""
    import kvtc.hf

    return kvtc.hf.calibrate(model, tokenizer, calibration_texts(shared_dir), ratios=list(CAL_RATIOS),
                             max_tokens=1024, model_name="SmolLM2-135M-Instruct")


def _main() -> None:
    import argparse
    import os
    import time

    repo = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(description="Makes the SmolLM2 tests' calibration from the fp32 model on a device.")
    ap.add_argument("out", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("KVTC_SHARED_DIR", repo.parent / "shared")))
    ap.add_argument("--model", type=Path, default=repo / "models" / MODEL)
    a = ap.parse_args()
    from transformers import AutoTokenizer

    from hf_reference import load_model

    t0 = time.perf_counter()
    model = load_model(str(a.model), a.device)
    tok = AutoTokenizer.from_pretrained(str(a.model.parent), gguf_file=a.model.name)
    t1 = time.perf_counter()
    cal = calibrate(model, tok, a.shared)
    t2 = time.perf_counter()
    tmp = a.out.with_name(a.out.name + ".partial")
    cal.save(tmp)
    tmp.rename(a.out)
    info = cal.info()
    print(f"calibration {a.out}: model loaded on {a.device} in {t1 - t0:.1f} s, calibrated in {t2 - t1:.1f} s "
          f"({info['n_calibration_tokens']} tokens, rank {info['rank']}), {a.out.stat().st_size / 1e6:.0f} MB", flush=True)


if __name__ == "__main__":
    _main()
