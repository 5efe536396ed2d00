#!/bin/bash
# On the GPU machine: builds the C++ library with CUDA and the store (or reuses the build of
# scripts/device_cuda_tests.sh in the same $B), runs the store's GPU test, then
# bench/bench_store_gpu.cpp and the PyTorch prefill of the same shape (bench/bench_cuda_prefill.py) in
# the same call; logs under $OUT.
# Run from the repository root with .pysys/ carried (scripts/device_sysroot.sh says what it holds):
#   OUT=... scripts/device_store_gpu.sh [tokens, default 8192] [block sizes, default 0,256,64]
TOKENS=${1:-8192}; BLOCKS=${2:-0,256,64}; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
. scripts/device_sysroot.sh
{ date -u; nproc; nvidia-smi -L; cmake --version | head -1; nvcc --version | tail -1; } 2>&1 | tee $OUT/store_env.txt
B=${B:-/tmp/build-gpu}; t0=$(date +%s)
[ -f $B/CMakeCache.txt ] || cmake -S . -B $B -DCMAKE_BUILD_TYPE=Release -DKVTC_CUDA=ON -DKVTC_BUILD_ENGINE=OFF \
  -DKVTC_BUILD_CLI=OFF -DCMAKE_CUDA_ARCHITECTURES=90-real -DCMAKE_PREFIX_PATH=$S > $OUT/store_build.log 2>&1
cmake --build $B -j"$(nproc)" --target test_cuda_store kvtc_bench_store_gpu >> $OUT/store_build.log 2>&1
rc=$?; echo "C++ build rc $rc in $(( $(date +%s) - t0 )) s"
[ $rc = 0 ] || { grep -E "error|Error" $OUT/store_build.log | head -20; tail -20 $OUT/store_build.log; exit 1; }
$B/tests/test_cuda_store 2>&1 | tail -4
timeout 240 $B/bench/kvtc_bench_store_gpu "$TOKENS" "$BLOCKS" 5 > $OUT/store_gpu.jsonl 2> $OUT/store_gpu.log
echo "bench rc $?"; cat $OUT/store_gpu.jsonl; tail -4 $OUT/store_gpu.log
timeout 150 python3 bench/bench_cuda_prefill.py "$TOKENS" 2>&1 | tee $OUT/prefill.jsonl
