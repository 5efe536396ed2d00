#!/bin/bash
# On the GPU machine, after scripts/device_cuda_tests.sh (same $B): codec 3's fused rANS decode +
# dequantise against codec 2's inflate on real codes (bench/bench_cuda_codec3.cpp). The reference
# model's caches come carried in .gpubench/ (listed in .git/info/exclude): two calibration caches and
# the two test caches of ../shared/kvcache.
#   OUT=... scripts/device_codec3_gpu.sh [ratios, default 8,16,32] [copies, default 64]
RATIOS=${1:-8,16,32}; COPIES=${2:-64}; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
. scripts/device_sysroot.sh
B=${B:-/tmp/build-gpu}
cmake --build $B -j"$(nproc)" --target kvtc_bench_cuda_codec3 >> $OUT/gpu_build.log 2>&1 || { tail -20 $OUT/gpu_build.log; exit 1; }
G=.gpubench
timeout 400 $B/bench/kvtc_bench_cuda_codec3 $G/calib-prose-1.safetensors,$G/calib-code-1.safetensors \
  $G/test-prose.safetensors,$G/test-code.safetensors "$RATIOS" "$COPIES" 7 > $OUT/codec3_gpu.jsonl 2> $OUT/codec3_gpu.log
echo "bench rc $?"; cat $OUT/codec3_gpu.jsonl; tail -5 $OUT/codec3_gpu.log
