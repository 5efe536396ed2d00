#!/bin/bash
# On the GPU machine: the layer-pipelined restore demo (bench/bench_cuda_pipeline.cpp): a model of
# Mistral NeMo 12B's shape runs each layer as soon as that layer is restored. Builds only what it needs
# (in $B, shared with scripts/device_cuda_tests.sh); logs under $OUT. Carry .pysys.
#   OUT=... scripts/device_pipeline_demo.sh [tokens, default 8192] [new tokens, default 1,16]
TOKENS=${1:-8192}; NEW=${2:-1,16}; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
. scripts/device_sysroot.sh
B=${B:-/tmp/build-gpu}; t0=$(date +%s)
[ -f $B/CMakeCache.txt ] || cmake -S . -B $B -DCMAKE_BUILD_TYPE=Release -DKVTC_CUDA=ON -DKVTC_BUILD_ENGINE=OFF \
  -DKVTC_BUILD_CLI=OFF -DCMAKE_CUDA_ARCHITECTURES=90-real -DCMAKE_PREFIX_PATH=$S > $OUT/pipeline_build.log 2>&1
cmake --build $B -j"$(nproc)" --target kvtc_bench_cuda_pipeline >> $OUT/pipeline_build.log 2>&1 ||
  { grep -E "error" $OUT/pipeline_build.log | head -20; tail -20 $OUT/pipeline_build.log; exit 1; }
echo "build in $(( $(date +%s) - t0 )) s"
timeout 420 $B/bench/kvtc_bench_cuda_pipeline "$TOKENS" "$NEW" > $OUT/pipeline.txt 2> $OUT/pipeline.log
echo "demo rc $?"; grep -v '^{"case' $OUT/pipeline.txt; tail -3 $OUT/pipeline.log
