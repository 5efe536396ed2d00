#!/bin/bash
# How the CUDA build of the package was made and tested on the H100 (2026-12-05): carry .pysys/ holding
# pysys.tar.xz (headers, .so files, libdeflate.pc, pkg-config and the pinned wheels from the dev machine).
# Builds the kvtc package with the CUDA backend on the GPU machine against a carried sysroot, then runs
# the CUDA tests. Output under $OUT.
S=$PWD/.pysys/root; mkdir -p $S; tar xJf .pysys/pysys.tar.xz -C $S
export LD_LIBRARY_PATH=$S/lib:/usr/local/cuda/lib64:$LD_LIBRARY_PATH PKG_CONFIG_PATH=$S/lib/pkgconfig
if ! command -v pkg-config >/dev/null; then mkdir -p $S/bin; cp $S/pkg-config $S/bin/; export PATH=$S/bin:$PATH; fi
python3 --version; nproc; nvidia-smi -L; cmake --version | head -1; command -v ninja
python3 -c "import torch, nanobind, transformers; print(torch.__version__, torch.version.cuda, nanobind.__version__, transformers.__version__)"
python3 -m pip install -q --no-index --find-links $S/wheels --break-system-packages scikit-build-core==1.1.2 pathspec 2>&1 | tail -3
python3 -m pip install -q --no-index --find-links $S/wheels --break-system-packages nanobind==2.9.2 2>&1 | tail -3
t0=$(date +%s)
KVTC_CUDA=ON CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90-real -DCMAKE_PREFIX_PATH=$S" CMAKE_BUILD_PARALLEL_LEVEL=16 \
  python3 -m pip install --no-build-isolation --no-deps --break-system-packages -v . > $OUT/build.log 2>&1
echo "build rc $? in $(( $(date +%s) - t0 )) s"
grep -E "CUDA|cuBLAS|error|Error" $OUT/build.log | head -20; tail -5 $OUT/build.log
cd /tmp && python3 -c "import kvtc; print('cuda_available', kvtc.cuda_available(), kvtc._kvtc._cuda_available() if hasattr(kvtc._kvtc,'_cuda_available') else 'no binding')"
cd - >/dev/null
python3 -m pytest tests/python/test_cuda.py tests/python/test_store.py -q -rs -p no:cacheprovider 2>&1 | tail -15
python3 bench/bench_python_gpu_ttft.py --shapes smollm2,llama3.2-1b --tokens 2048,8192 --ratios 16,20 --repeats 5 2>&1 | grep -v Warning | tee $OUT/gpu_ttft.jsonl | tail -12
