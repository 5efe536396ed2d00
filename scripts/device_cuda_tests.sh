#!/bin/bash
# On the GPU machine: builds the C++ library with CUDA (and the store), every GPU test binary
# (tests/test_cuda_*), the GPU benches and the kvtc CLI (without the engine) in $B, then runs every GPU
# test; logs under $OUT.
# Run from the repository root with .pysys/ carried (scripts/device_sysroot.sh says what it holds):
#   OUT=... scripts/device_cuda_tests.sh
# scripts/device_store_gpu.sh, scripts/device_codec3_gpu.sh and scripts/device_cli_bench.sh reuse the
# build when run after it on the same (warm) machine.
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
. scripts/device_sysroot.sh
{ date -u; nproc; nvidia-smi -L; cmake --version | head -1; nvcc --version | tail -1; } 2>&1 | tee $OUT/gpu_env.txt
B=${B:-/tmp/build-gpu}; t0=$(date +%s)
TESTS=$(ls tests/test_cuda_*.cpp | xargs -n1 basename | sed 's/\.cpp$//' | tr '\n' ' ')
cmake -S . -B $B -DCMAKE_BUILD_TYPE=Release -DKVTC_CUDA=ON -DKVTC_BUILD_ENGINE=OFF -DKVTC_BUILD_CLI=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90-real -DCMAKE_PREFIX_PATH=$S > $OUT/gpu_build.log 2>&1 &&
  cmake --build $B -j"$(nproc)" --target $TESTS kvtc_bench_store_gpu kvtc_bench_cuda_codec3 kvtc_bench_cuda kvtc_bench_cuda_encode \
    kvtc_cli >> $OUT/gpu_build.log 2>&1
rc=$?; echo "C++ build rc $rc in $(( $(date +%s) - t0 )) s"
[ $rc = 0 ] || { grep -E "error|Error" $OUT/gpu_build.log | head -20; tail -20 $OUT/gpu_build.log; exit 1; }
fails=0
for t in $TESTS; do
  timeout 180 $B/tests/$t > $OUT/$t.log 2>&1; r=$?
  [ $r = 0 ] || fails=$((fails + 1))
  echo "$t rc $r: $(grep -E '^\[  (PASSED|FAILED|SKIPPED)' $OUT/$t.log | tr '\n' ' ')"
done
echo "GPU test binaries failing: $fails"
