#!/bin/bash
# On the GPU machine, after scripts/device_cuda_tests.sh (same $B, which builds the CLI with CUDA): the
# `kvtc` command line end to end on the reference model's real caches, carried in .gpubench/ (listed in
# .git/info/exclude): calibrate from the two calibration caches, compress each test cache with codec 2,
# codec 3 and codec 3 --adaptive (format 4), restore it on the GPU with `kvtc decompress --device cuda`
# and check it against the CPU's restore, then `kvtc bench --device cuda` in fp32, bf16 and FP8.
#   OUT=... scripts/device_cli_bench.sh [ratio, default 16] [batch, default 64]
RATIO=${1:-16}; BATCH=${2:-64}; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
. scripts/device_sysroot.sh
B=${B:-/tmp/build-gpu}; K=$B/bin/kvtc; G=.gpubench; W=/tmp/cli-bench; mkdir -p $W
[ -x $K ] || { echo "FAIL: $K not built (run scripts/device_cuda_tests.sh first)"; exit 1; }
t0=$(date +%s)
[ -f $W/cal.kvtcal ] || timeout 240 $K calibrate $G/calib-prose-1.safetensors $G/calib-code-1.safetensors \
  -o $W/cal.kvtcal > $OUT/cli_calibrate.log 2>&1 || { echo "FAIL: calibrate"; tail -5 $OUT/cli_calibrate.log; exit 1; }
echo "calibrated in $(( $(date +%s) - t0 )) s: $(sha256sum < $W/cal.kvtcal | cut -c1-16)"
fails=0
for cache in test-prose test-code; do
  for mode in "2" "3" "3 --adaptive"; do
    name=$cache-c${mode// /}; name=${name//--/}
    $K compress -c $W/cal.kvtcal -r $RATIO --codec $mode -o $W/$name.kvtc $G/$cache.safetensors > $OUT/$name.compress.log 2>&1 ||
      { echo "FAIL: compress $name"; tail -3 $OUT/$name.compress.log; fails=$((fails + 1)); continue; }
    $K decompress --device cuda -c $W/cal.kvtcal -o $W/$name.gpu.safetensors $W/$name.kvtc > $OUT/$name.decompress.log 2>&1 &&
      $K decompress -c $W/cal.kvtcal -o $W/$name.cpu.safetensors $W/$name.kvtc >> $OUT/$name.decompress.log 2>&1 &&
      python3 - $W/$name.gpu.safetensors $W/$name.cpu.safetensors <<'PY' || fails=$((fails + 1))
import sys
from safetensors.torch import load_file
g, c = load_file(sys.argv[1]), load_file(sys.argv[2])
worst = max(float((g[n].float() - c[n].float()).abs().max() / c[n].float().abs().max()) for n in c if n[0] in "kv")
print(f"  GPU decompress against CPU: {len(c)} tensors, worst max-abs difference {worst:.2e} of the largest")
sys.exit(0 if set(g) == set(c) and worst < 2e-5 else 1)
PY
    for prec in fp32 bf16 fp8; do
      flag=""; [ $prec != bf16 ] && flag=--$prec
      line=$($K bench --device cuda -c $W/cal.kvtcal --batch $BATCH --repeat 7 $flag $W/$name.kvtc 2> $OUT/$name.$prec.err) ||
        { echo "FAIL: bench $name $prec: $(tail -2 $OUT/$name.$prec.err)"; fails=$((fails + 1)); continue; }
      echo "{\"container\":\"$name\",\"file_bytes_one\":$(stat -c %s $W/$name.kvtc),${line#\{}" | tee -a $OUT/cli_bench.jsonl
    done
  done
done
echo "CLI checks failing: $fails"
[ $fails = 0 ]
