#!/usr/bin/env bash
# The main job on the bundled default: calibrate kvtc on a real KV cache of the reference model
# (data/small-calib.safetensors), compress a different real cache (data/small-test.safetensors) at
# 8x, 16x, 20x and 32x, restore it, and print the table of ratio and error.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target kvtc_cli
kvtc=build/bin/kvtc
out=out/demo
mkdir -p "$out"

echo "== calibrate on data/small-calib.safetensors"
$kvtc calibrate -o "$out/model.kvtcal" --ratios 8,16,20,32 data/small-calib.safetensors

for r in 8 16 20 32; do
  $kvtc compress -c "$out/model.kvtcal" -r "$r" -o "$out/test-$r.kvtc" data/small-test.safetensors --json >"$out/report-$r.json"
  $kvtc decompress -c "$out/model.kvtcal" -o "$out/restored-$r.safetensors" "$out/test-$r.kvtc" >/dev/null
done

echo
echo "== data/small-test.safetensors (512 tokens; first 4 and last 128 kept exact)"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
print(f"{'target':>7} {'achieved':>9} {'nominal':>8} {'DEFLATE':>8} {'file':>7} {'bytes/tok':>10} {'K rMSE':>8} {'V rMSE':>8} {'attn err':>9}")
for r in (8, 16, 20, 32):
    j = json.load(open(f"{out}/report-{r}.json"))
    attn = [l["attention_relative_error"] for l in j["layers"] if "attention_relative_error" in l]
    attn_s = f"{100 * sum(attn) / len(attn):8.3f}%" if attn else "      n/a"
    print(f"{r:>6}x {j['ratio_compressed_tokens']:>8.2f}x {j['ratio_nominal']:>7.2f}x {j['deflate_gain']:>7.3f}x "
          f"{j['ratio_file']:>6.2f}x {j['bytes_per_token']:>10.1f} {100 * j['k_relative_mse']:>7.3f}% "
          f"{100 * j['v_relative_mse']:>7.3f}% {attn_s}")
print("achieved/nominal: compressed tokens only; file: the whole container incl. the exact tokens")
PY
echo
echo "restored caches and containers are in $out/ ('$kvtc inspect $out/test-20.kvtc' shows one)"
