#!/bin/bash
# On the GPU machine (issue 15; first run 2026-12-07, bench/RESULTS.md "Time to first token: 20x"):
# builds, runs every GPU test, then with what time is left (T seconds in all, default 560): the codec 3
# time-to-first-token rows at NeMo 12B's shape (FP8 with 1, 4 and 8 layers per GEMM and fast
# accumulation, with and without overlap_exact), the SDPA prefill, the restore GEMM layout / FP8 study
# (with LAYOUT=1), Llama 3 8B's rows, the GPU rANS encoder and decoder on real codes, the device-resident
# compress bench, memcheck, and racecheck of the codec 3 decode kernels. Carry .pysys and
# .gpubench; results in $OUT/summary.txt.
#   T=560 OUT=... scripts/device_issue15_check.sh
# Everything else comes back packed in $OUT/all.tgz (scripts/device_work.sh).
WORK=issue15-work; . scripts/device_work.sh
. scripts/device_sysroot.sh
B=/tmp/build-gpu
TESTS=$(ls tests/test_cuda_*.cpp | xargs -n1 basename | sed 's/\.cpp$//' | tr '\n' ' ')
cmake -S . -B $B -DCMAKE_BUILD_TYPE=Release -DKVTC_CUDA=ON -DKVTC_BUILD_ENGINE=OFF -DKVTC_BUILD_CLI=OFF \
  -DCMAKE_CUDA_ARCHITECTURES=90-real -DCMAKE_PREFIX_PATH=$S > $OUT/build.log 2>&1 &&
  cmake --build $B -j16 --target $TESTS kvtc_bench_cuda kvtc_bench_cuda_encode kvtc_bench_cuda_codec3 >> $OUT/build.log 2>&1
rc=$?; log "build rc $rc at $(el) s"
[ $rc = 0 ] || { grep -E "error" $OUT/build.log | head -20 >> $OUT/summary.txt; exit 1; }
for t in $TESTS; do
  timeout 60 $B/tests/$t > $OUT/$t.log 2>&1; r=$?
  log "$t rc $r at $(el) s: $(grep -E '^\[  (PASSED|FAILED|SKIPPED)' $OUT/$t.log | tr '\n' ' ')"
done
ttft() {  # $1: nemo or llama3
  timeout $(( $(left) - 20 )) $B/bench/kvtc_bench_cuda 8192 ttft3 $1 > $OUT/bench_cuda_$1.txt 2> $OUT/bench_cuda_$1.log
  log "ttft3 $1 rc $? at $(el) s"; grep -E 'layers_per_gemm|"case"' $OUT/bench_cuda_$1.txt | cut -c1-1200 >> $OUT/summary.txt
  tail -5 $OUT/bench_cuda_$1.txt >> $OUT/summary.txt; grep "CPU encode" $OUT/bench_cuda_$1.log >> $OUT/summary.txt
}
[ $(left) -gt 150 ] && ttft nemo
[ $(left) -gt 25 ] && { timeout 25 python3 bench/bench_cuda_prefill.py 8192 > $OUT/prefill.txt 2>&1; log "prefill rc $? at $(el) s"; cat $OUT/prefill.txt >> $OUT/summary.txt; }
[ -n "${LAYOUT:-}" ] && [ $(left) -gt 40 ] && { timeout 40 python3 bench/bench_restore_gemm_layout.py 8192 > $OUT/gemm_layout.txt 2>&1; log "layout rc $? at $(el) s"; cat $OUT/gemm_layout.txt >> $OUT/summary.txt; }
[ $(left) -gt 130 ] && ttft llama3
G=.gpubench
[ $(left) -gt 80 ] && { timeout $(( $(left) - 10 )) $B/bench/kvtc_bench_cuda_codec3 $G/calib-prose-1.safetensors,$G/calib-code-1.safetensors $G/test-prose.safetensors 16 64 5 > $OUT/codec3.jsonl 2> $OUT/codec3.log; log "codec3 rc $? at $(el) s"; cat $OUT/codec3.jsonl >> $OUT/summary.txt; }
# The codec 3 decode kernels (each job copied into shared memory by the warp's lanes, then __syncwarp):
# the format 3 instances (64, 32, 7 and 33 lanes in one batch), then the class instances beside them;
# about 50 and 35 s on an H100 (three codec 3 tests at once ran past a minute).
[ $(left) -gt 60 ] && { timeout $(( $(left) - 5 )) compute-sanitizer --tool racecheck --racecheck-report all $B/tests/test_cuda_codec3 --gtest_filter='*NarrowAndWide*' > $OUT/racecheck_codec3.log 2>&1; log "racecheck codec3 rc $? at $(el) s: $(grep -E 'PASSED|RACECHECK SUMMARY' $OUT/racecheck_codec3.log | tr '\n' ' ')"; }
[ $(left) -gt 45 ] && { timeout $(( $(left) - 5 )) compute-sanitizer --tool racecheck --racecheck-report all $B/tests/test_cuda_token_classes --gtest_filter='*MixedBatch*' > $OUT/racecheck_classes.log 2>&1; log "racecheck classes rc $? at $(el) s: $(grep -E 'PASSED|RACECHECK SUMMARY' $OUT/racecheck_classes.log | tr '\n' ' ')"; }
[ $(left) -gt 30 ] && { timeout $(( $(left) - 5 )) compute-sanitizer --tool memcheck $B/tests/test_cuda_fp8 > $OUT/memcheck_fp8.log 2>&1; log "memcheck fp8 rc $? at $(el) s: $(grep -E 'PASSED|ERROR SUMMARY' $OUT/memcheck_fp8.log | tr '\n' ' ')"; }
# NCU=1: Nsight Compute's warp-state and scheduler sections for the codec 3 decode kernel on the entropy
# bench's first 64-copy batch (its first launch decodes one copy: 32 chunks, too few to load the GPU).
[ -n "${NCU:-}" ] && [ $(left) -gt 90 ] && { timeout $(( $(left) - 30 )) ncu --clock-control none -k regex:ecsq_decode_kernel --launch-skip 1 -c 1 --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis $B/bench/kvtc_bench_cuda_codec3 $G/calib-prose-1.safetensors,$G/calib-code-1.safetensors $G/test-prose.safetensors 16 64 1 > $OUT/ncu_decode.txt 2>&1; log "ncu rc $? at $(el) s"; grep -E "ecsq_decode_kernel|Duration|Issue Slots Busy|Issued Warp Per Scheduler|No Eligible|Warp Cycles Per Issued|Achieved Occupancy|Registers Per|Theoretical Occupancy|L1/TEX Hit|Memory Throughput|Compute \(SM\)|Stall|stall" $OUT/ncu_decode.txt | head -60 >> $OUT/summary.txt; }
[ $(left) -gt 50 ] && { timeout 45 $B/bench/kvtc_bench_cuda_encode 8192 > $OUT/bench_encode.txt 2>&1; log "encode rc $? at $(el) s"; tail -16 $OUT/bench_encode.txt >> $OUT/summary.txt; }
[ $(left) -gt 30 ] && { timeout $(( $(left) - 5 )) compute-sanitizer --tool memcheck $B/tests/test_cuda_rans_encode > $OUT/memcheck_rans.log 2>&1; log "memcheck rans rc $? at $(el) s: $(grep -E 'PASSED|ERROR SUMMARY' $OUT/memcheck_rans.log | tr '\n' ' ')"; }
log "done at $(el) s"
