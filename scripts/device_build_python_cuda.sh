#!/bin/bash
# Builds the kvtc package with the CUDA backend on the GPU machine and tests it there, then runs the
# GPU time-to-first-token bench; logs and results under $OUT (docs/PYTHON.md, "CUDA").
#
# The device image lacks the Debian dev packages and has scikit-build-core 1.1.0, so a sysroot from the
# development machine is carried in .pysys/ (scripts/device_sysroot.sh says what it holds; carry it).
# Run from the repository root:
#   OUT=... scripts/device_build_python_cuda.sh [bench seconds, default 330; 0: build and test only]
# (0 leaves the machine to a script that follows in the same call, e.g. scripts/device_smollm2_gpu.sh.)
BENCH_S=${1:-330}; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
. scripts/device_sysroot.sh
{ date -u; python3 --version; nproc; nvidia-smi -L; nvidia-smi --query-gpu=driver_version --format=csv,noheader
  cmake --version | head -1; nvcc --version | tail -2; cat COMMIT 2>/dev/null || git log -1 --format=%H 2>/dev/null
  python3 -c "import torch, transformers; print('torch', torch.__version__, torch.version.cuda, 'transformers', transformers.__version__)"
} 2>&1 | tee $OUT/env.txt
python3 -m pip install -q --no-index --find-links $S/wheels --break-system-packages scikit-build-core==1.1.2 pathspec nanobind==2.9.2 2>&1 | tail -3
t0=$(date +%s)
KVTC_CUDA=ON CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90-real -DCMAKE_PREFIX_PATH=$S" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
  timeout 300 python3 -m pip install --no-build-isolation --no-deps --break-system-packages -v . > $OUT/build.log 2>&1
rc=$?; echo "build rc $rc in $(( $(date +%s) - t0 )) s"
grep -E "CUDA|cuBLAS|warning|error" $OUT/build.log | grep -v "^ *--" | head -12
[ $rc = 0 ] || { tail -30 $OUT/build.log; exit 1; }
(cd /tmp && python3 -c "import kvtc; print('cuda_available', kvtc.cuda_available(), kvtc._kvtc._cuda_available())")
# test_package's other tests compare with the kvtc CLI, which is not built here: the CPU machines run them.
timeout 180 python3 -m pytest tests/python/test_cuda.py tests/python/test_package.py::test_help_reads_well -v -rs \
  -p no:cacheprovider 2>&1 | tee $OUT/tests.log | grep -E "PASS|FAIL|SKIP|ERROR|passed|failed"
[ "$BENCH_S" = 0 ] && { echo "random-weight bench skipped (bench seconds 0)"; exit 0; }
timeout $((BENCH_S + 20)) python3 -u bench/bench_python_gpu_ttft.py --shapes smollm2,llama3.2-1b --tokens 2048,8192 \
  --ratios 16,20 --repeats 5 --budget $BENCH_S --shape-timeout $((BENCH_S * 6 / 10)) > $OUT/gpu_ttft.jsonl 2> $OUT/bench.log
echo "bench rc $?"; cat $OUT/gpu_ttft.jsonl; tail -8 $OUT/bench.log
