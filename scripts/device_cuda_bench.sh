#!/bin/bash
# On the GPU machine, after scripts/device_cuda_tests.sh (same $B): the restore bench
# (bench/bench_cuda.cpp: per-stage times against the run's floors, bf16 and FP8 reconstruction, for the
# reference model's shape and Mistral NeMo 12B's) beside a PyTorch SDPA bf16 prefill of the same
# shapes (bench/bench_cuda_prefill.py), then compute-sanitizer memcheck on the GPU tests named in
# $MEMCHECK (binary:gtest_filter, space-separated; default: the FP8 tests). Logs under $OUT.
#   OUT=... scripts/device_cuda_bench.sh [tokens, default 8192] [all | ref-only | ttft, default all]
# (ttft: only the time-to-first-token rows, codecs 2 and 3 with deferred statuses, both shapes.)
TOKENS=${1:-8192}; MODE=${2:-all}; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
. scripts/device_sysroot.sh
B=${B:-/tmp/build-gpu}
cmake --build $B -j"$(nproc)" --target kvtc_bench_cuda >> $OUT/gpu_build.log 2>&1 || { tail -20 $OUT/gpu_build.log; exit 1; }
timeout 420 $B/bench/kvtc_bench_cuda "$TOKENS" "$MODE" > $OUT/bench_cuda.txt 2> $OUT/bench_cuda.log
echo "bench rc $?"; grep -v '^{"timeline' $OUT/bench_cuda.txt | tail -12
timeout 120 python3 bench/bench_cuda_prefill.py "$TOKENS" > $OUT/prefill.txt 2>&1; echo "prefill rc $?"; tail -6 $OUT/prefill.txt
for spec in ${MEMCHECK-test_cuda_fp8:*}; do
  bin=${spec%%:*}; filter=${spec#*:}
  timeout 240 compute-sanitizer --tool memcheck --error-exitcode 7 $B/tests/$bin --gtest_filter="$filter" \
    > $OUT/memcheck_$bin.log 2>&1
  echo "memcheck $bin ($filter) rc $?: $(grep -E 'ERROR SUMMARY|^\[  (PASSED|FAILED)' $OUT/memcheck_$bin.log | tr '\n' ' ')"
done
