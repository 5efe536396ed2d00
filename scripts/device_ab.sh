#!/bin/bash
# On the GPU machine: one change against its baseline in the same call, so that both sets of timings
# come from one card. Builds the working tree, runs the GPU tests named in TESTS, times it (the
# codec 3 entropy bench on .gpubench's real caches and `kvtc_bench_cuda 8192 ttft3 nemo`), then puts
# the baseline's copies of the changed files in place, rebuilds incrementally and times that too.
# Make the baseline on the development machine (the files a change touches, as of REV):
#   scripts/device_ab.sh --make-base REV      # writes .gpubench/base/<path> for each changed file
# then, on the device (carry .pysys and .gpubench):
#   T=560 OUT=... scripts/device_ab.sh
# Results in $OUT/summary.txt, everything else in $OUT/all.tgz.
if [ "${1:-}" = "--make-base" ]; then
  rev=${2:?usage: scripts/device_ab.sh --make-base REV}
  rm -rf .gpubench/base && mkdir -p .gpubench/base
  for f in $(git diff --name-only "$rev" -- src include bench); do
    mkdir -p ".gpubench/base/$(dirname "$f")"
    git show "$rev:$f" > ".gpubench/base/$f" 2>/dev/null || rm -f ".gpubench/base/$f"  # new file: none
  done
  git rev-parse "$rev" > .gpubench/base/REV
  find .gpubench/base -type f | sort
  exit 0
fi
WORK=ab-work; . scripts/device_work.sh
log "baseline $(cat .gpubench/base/REV)"
. scripts/device_sysroot.sh
B=/tmp/build-ab G=.gpubench
TESTS=${TESTS:-test_cuda_codec3 test_cuda_token_classes test_cuda_fp8}
BENCHES="kvtc_bench_cuda kvtc_bench_cuda_codec3"
cmake -S . -B $B -DCMAKE_BUILD_TYPE=Release -DKVTC_CUDA=ON -DKVTC_BUILD_ENGINE=OFF -DKVTC_BUILD_CLI=OFF \
  -DCMAKE_CUDA_ARCHITECTURES=90-real -DCMAKE_PREFIX_PATH=$S > $OUT/build.log 2>&1 &&
  cmake --build $B -j16 --target $TESTS $BENCHES >> $OUT/build.log 2>&1
rc=$?; log "build rc $rc at $(el) s"
[ $rc = 0 ] || { grep -E "error" $OUT/build.log | head -20 >> $OUT/summary.txt; exit 1; }
for t in $TESTS; do
  timeout 90 $B/tests/$t > $OUT/$t.log 2>&1; r=$?
  log "$t rc $r at $(el) s: $(grep -E '^\[  (PASSED|FAILED|SKIPPED)' $OUT/$t.log | tr '\n' ' ')"
  grep -E "^\[  FAILED|Failure|error" $OUT/$t.log | head -10 >> $OUT/summary.txt
done
timed() {  # $1: label (new or base); the entropy bench, then NeMo's time-to-first-token rows
  timeout 90 $B/bench/kvtc_bench_cuda_codec3 $G/calib-prose-1.safetensors,$G/calib-code-1.safetensors \
    $G/test-prose.safetensors 16 64 5 > $OUT/codec3_$1.jsonl 2> $OUT/codec3_$1.log
  log "codec3 $1 rc $? at $(el) s"; cat $OUT/codec3_$1.jsonl >> $OUT/summary.txt
  timeout $(( $(left) / ${2:-1} - 10 )) $B/bench/kvtc_bench_cuda 8192 ttft3 nemo > $OUT/ttft_$1.txt 2> $OUT/ttft_$1.log
  log "ttft3 nemo $1 rc $? at $(el) s"; grep -E '"case"' $OUT/ttft_$1.txt | cut -c1-1500 >> $OUT/summary.txt
  tail -4 $OUT/ttft_$1.txt >> $OUT/summary.txt
}
timed new 2
# The baseline: its copies of the changed files in place (newer mtimes, so make rebuilds what uses them).
(cd $G/base && find . -type f ! -name REV) | while read -r f; do cp "$G/base/$f" "$f"; done
cmake --build $B -j16 --target $BENCHES >> $OUT/build_base.log 2>&1
rc=$?; log "baseline build rc $rc at $(el) s"
[ $rc = 0 ] || { grep -E "error" $OUT/build_base.log | head -20 >> $OUT/summary.txt; exit 1; }
timed base 1
log "done at $(el) s"
