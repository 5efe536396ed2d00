#!/usr/bin/env bash
# Installs dependencies, builds kvtc and runs every test through ctest.
#   scripts/test.sh             release build in build/
#   scripts/test.sh --sanitize  AddressSanitizer + UBSan build in build-asan/ (CUDA off)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
jobs=$(nproc)
if [ "${1:-}" = "--sanitize" ]; then
  dir=build-asan
  # The engine's forward-pass tests are minutes of BLAS under ASan for no extra coverage of parsers or
  # codecs: the sanitizer pass covers the library, the CLI pieces and the fuzz replays.
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKVTC_SANITIZE=ON -DKVTC_CUDA=OFF -DKVTC_BUILD_BENCH=OFF \
    -DKVTC_BUILD_ENGINE=OFF \
    -DCMAKE_CXX_FLAGS="-O1"
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
else
  dir=build
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$dir" -j"$jobs"
# One thread for OpenBLAS inside ctest's parallel jobs keeps 2 cores from thrashing.
OPENBLAS_NUM_THREADS=1 ctest --test-dir "$dir" --output-on-failure -j"$jobs" --timeout 900
