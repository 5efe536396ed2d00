"""What the SmolLM2 tests share: the eval harness's predictions, the pass bar, the held-out corpus, and a
calibration made once per build (the model's calibration takes minutes on two cores)."""
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
