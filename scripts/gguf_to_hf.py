"""Writes a Hugging Face folder (config, tokenizer, fp32 safetensors) from a .gguf model, for engines
that load only that format (vLLM on the CPU). Weights are dequantised by transformers' GGUF loader,
the same path tests/python/hf_reference.py uses, so both runtimes run the same numbers.

    python scripts/gguf_to_hf.py models/SmolLM2-135M-Instruct.Q4_1.gguf models/SmolLM2-135M-Instruct

The folder is written beside, then renamed into place, so a stopped run leaves no half folder.
"""
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main(src: str, dst: str) -> None:
    src_p, dst_p = Path(src), Path(dst)
    tmp = dst_p.with_name(dst_p.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(str(src_p.parent), gguf_file=src_p.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(src_p.parent), gguf_file=src_p.name)
    # The loaded model is plain fp32 now; transformers only refuses to save it because it remembers the
    # GGUF origin as a "quantization" it cannot serialise.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    (tmp / "SOURCE").write_text(f"{src_p.name}\n")
    shutil.rmtree(dst_p, ignore_errors=True)
    tmp.rename(dst_p)


if __name__ == "__main__":
    main(*sys.argv[1:3])
