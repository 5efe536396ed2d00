#!/bin/bash
# On the GPU machine: runs a libFuzzer target built on the development machine (fuzz/README.md) on the
# machine's CPUs, from the seed corpus: N jobs at once, each its own process for the whole time (the
# fuzz calibration is built once per process), sharing one corpus folder (libFuzzer reloads it).
# Carry the target (build-fuzz/fuzz/<target>) and .pysys (its shared libraries: libdeflate, zlib,
# OpenBLAS, LAPACKE). Logs, the final stats and any crash input land under $OUT.
#   OUT=... scripts/device_fuzz.sh fuzz_container 240 [workers]
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T=$1; SECONDS_LIMIT=${2:-240}; N=${3:-$(( $(nproc) - 2 ))}
. scripts/device_sysroot.sh
corpus=${T#fuzz_}
W=/tmp/fz-$corpus; rm -rf $W; mkdir -p $W; cp fuzz/corpus/$corpus/* $W/
echo "$(date -u) $T: $N workers for $SECONDS_LIMIT s on $(nproc) CPUs, $(ls $W | wc -l) seeds" | tee $OUT/$T.summary
R=$(pwd)
(cd $OUT && nice -n 5 $R/build-fuzz/fuzz/$T -jobs=$N -workers=$N -max_total_time=$SECONDS_LIMIT -artifact_prefix=$OUT/ $W > $OUT/$T.log 2>&1)
echo "rc $? at $(date -u), corpus $(ls $W | wc -l) inputs" | tee -a $OUT/$T.summary
for f in $OUT/fuzz-*.log; do grep -E "^#[0-9]+" $f | tail -1; done | tee -a $OUT/$T.summary
grep -lE "ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error|deadly signal" $OUT/fuzz-*.log | head -5 | tee -a $OUT/$T.summary
