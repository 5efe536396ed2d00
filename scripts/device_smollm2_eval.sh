#!/bin/bash
# `kvtc eval` on SmolLM2-135M-Instruct on the GPU machine's host cores (16 there, 2 here): the kvtc CLI
# built on the development machine (build/bin/kvtc, carried) runs against the carried sysroot's
# libraries; the model is joined from carried parts as in scripts/device_smollm2_gpu.sh; the
# calibration is made there from the model (ECSQ models included, so kvtc3 runs), then eval rounds run
# one worker per core until the budget ends, each round's JSON under $OUT (merge them with
# `kvtc eval-merge`). Run from the repository root with .pysys/ and build/bin/kvtc carried and
# $SMOLDEV holding part-a? and corpus/ (three calls on one warm machine, 64 MiB per call):
#   OUT=... SMOLDEV=... scripts/device_smollm2_eval.sh BUDGET_S FIRST_TRIAL TRIALS_PER_ROUND [kvtc eval args...]
# e.g. ... 560 1000 32 --methods kvtc,kvtc3 --ratios 8,8.6 --tasks fidelity --contexts 1024 --domains prose,code
set -u
BUDGET=$1 FIRST=$2 PER=$3; shift 3
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SMOL=${SMOLDEV:-$PWD/.smoldev}
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
say() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/eval.log"; }
. scripts/device_sysroot.sh
KVTC=$PWD/build/bin/kvtc
[ -x "$KVTC" ] || { say "FAIL: build/bin/kvtc not carried"; exit 1; }
ldd "$KVTC" | grep "not found" && { say "FAIL: libraries missing for $KVTC"; exit 1; }

. scripts/device_smollm2_model.sh
msg=$(smollm2_model "$SMOL"); rc=$?
say "$msg"
[ $rc = 0 ] || exit 1
say "$(nproc) cores"

# The calibration: as out/smol/evals3/run.sh makes it here (14,336 tokens of the valid splits, ratios 4,8,16).
CAL=/tmp/kvtc-smollm2-ecsq.kvtcal
if [ ! -f "$CAL" ]; then
  say "calibrating"
  "$KVTC" calibrate --model "$MODEL" --text "$SMOL/corpus/prose.valid.txt.xz" "$SMOL/corpus/code.valid.txt.xz" \
    --max-tokens 14336 --ratios 4,8,16 -j "$(nproc)" -o "$CAL.partial" > "$OUT/calib.log" 2>&1 &&
    mv "$CAL.partial" "$CAL" || { say "FAIL: calibration"; tail -5 "$OUT/calib.log"; exit 1; }
  say "calibrated: $(sha256sum < "$CAL" | cut -c1-16), $(stat -c %s "$CAL") bytes"
fi

first=$FIRST
while true; do
  T=$(left)
  [ "$T" -ge 60 ] || break
  OPENBLAS_NUM_THREADS=1 timeout $((T - 5)) "$KVTC" eval --model "$MODEL" -c "$CAL" --corpus "$SMOL/corpus" \
    --workers "$(nproc)" -j 1 --trials "$PER" --first-trial "$first" "$@" --json-out "$OUT/eval-t$first.json" \
    > "$OUT/eval-t$first.txt" 2>&1
  rc=$?; say "trials $first..$((first + PER - 1)) rc $rc"
  [ $rc = 0 ] || { rm -f "$OUT/eval-t$first.json"; break; }
  first=$((first + PER))
done
say "done"
