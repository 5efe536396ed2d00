#!/bin/bash
# SmolLM2-135M-Instruct with its real weights on the GPU machine: transformers tests of kvtc.hf on CUDA
# tensors and the time from a compressed file to the first token against the prefill. Logs and JSON
# under $OUT, a summary on stdout.
#
# Run from the repository root on the GPU machine AFTER scripts/device_build_python_cuda.sh has built
# and installed the package there (its sysroot, /tmp/pysys-root, provides the libraries kvtc links):
#   OUT=... scripts/device_build_python_cuda.sh 0 && OUT=... scripts/device_smollm2_gpu.sh [budget s, default 460]
# (the build script's argument 0 skips its random-weight bench).
#
# What it needs in $SMOLDEV (default .smoldev/ in the checkout, listed in .git/info/exclude; carry it):
#   part-aa part-ab part-ac   models/SmolLM2-135M-Instruct.Q4_1.gguf cut by `split -b 34000000`; joined
#                             into models/ and checked against the size and sha256 scripts/models.sh pins
#                             (skipped when models/ already holds the right file);
#   gguf-py.tar.xz            the `gguf` package transformers reads GGUF files with (gguf-py/: gguf 0.19.0
#                             and its dist-info) and pure-Python copies of two of its imports (deps/yaml:
#                             PyYAML 6.0.4 without its C extension; deps/tqdm); each goes on PYTHONPATH only
#                             when the device's Python cannot import it;
#   corpus/                   {prose,code}.{valid,test}.txt.xz of ../shared/corpus (../shared does not
#                             travel), unless KVTC_SHARED_DIR or ../shared/corpus has them.
# Steps, each with a timeout within the budget (seconds from this script's start):
#   1. calibrate: kvtc.hf.calibrate from the fp32 model on the GPU, on the tests' 12 validation texts
#      (tests/python/smollm2_common.py; the fit runs on the host), into /tmp, named by the build and the
#      model (a rerun on a warm machine reuses it);
#   2. tests: tests/python/test_hf_smollm2.py's CUDA cases (and the calibration's), KVTC_REQUIRE_CUDA=1;
#   3. bench: bench/bench_python_gpu_ttft.py --model-gguf (bf16, prose test prompts of 1K-8K tokens,
#      ratios 8 and 16);
#   4. graphs: the same bench with --graphs (the one-token step from a CUDA graph), a separate process so
#      a failed capture cannot touch step 3's figures; only when time is left.
# Output: $OUT/smollm2.log (every step's log), $OUT/smollm2_ttft.jsonl (steps 3 and 4, one line per case).
set -u
BUDGET=${1:-460}; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SMOL=${SMOLDEV:-$PWD/.smoldev}
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
min() { [ "$1" -lt "$2" ] && echo "$1" || echo "$2"; }
LOG=$OUT/smollm2.log; JSONL=$OUT/smollm2_ttft.jsonl; : > "$LOG"; : > "$JSONL"
say() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$LOG"; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
S=${PYSYS_ROOT:-/tmp/pysys-root}
[ -d "$S/lib" ] && export LD_LIBRARY_PATH=$S/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}

# 0. The model file: joined from its parts, checked against scripts/models.sh's pin.
. scripts/device_smollm2_model.sh
msg=$(smollm2_model "$SMOL"); rc=$?
say "$msg"
[ $rc = 0 ] || exit 1

# 0b. gguf for transformers, carried; the corpus.
G=/tmp/kvtc-gguf-py; rm -rf $G; mkdir -p $G
PP=""
if ! python3 -c "from transformers.utils.import_utils import is_gguf_available as f; exit(not f())" 2>/dev/null; then
  tar xJf "$SMOL/gguf-py.tar.xz" -C $G || { say "FAIL: cannot unpack $SMOL/gguf-py.tar.xz"; exit 1; }
  PP=$G/gguf-py
  for m in yaml tqdm; do python3 -c "import $m" 2>/dev/null || PP=$PP:$G/deps/$m; done
fi
export PYTHONPATH=$PP${PYTHONPATH:+${PP:+:}$PYTHONPATH}
if [ -z "${KVTC_SHARED_DIR:-}" ]; then
  if [ -f ../shared/corpus/prose.test.txt.xz ]; then KVTC_SHARED_DIR=$(cd ../shared && pwd); else KVTC_SHARED_DIR=$SMOL; fi
fi
export KVTC_SHARED_DIR
for f in prose.valid prose.test code.valid code.test; do
  [ -f "$KVTC_SHARED_DIR/corpus/$f.txt.xz" ] || { say "FAIL: $KVTC_SHARED_DIR/corpus/$f.txt.xz missing"; exit 1; }
done
python3 - >> "$LOG" 2>&1 <<'EOF' || { say "FAIL: the environment (see $LOG)"; tail -5 "$LOG"; exit 1; }
import importlib.metadata as m, sys
import gguf, torch, transformers
from transformers.utils.import_utils import is_gguf_available
import kvtc
print("gguf", m.version("gguf"), gguf.__file__, "is_gguf_available", is_gguf_available())
print("torch", torch.__version__, "transformers", transformers.__version__, "kvtc", kvtc.__file__,
      "cuda_available", kvtc.cuda_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
sys.exit(0 if is_gguf_available() and kvtc.cuda_available() else 1)
EOF
say "env: PYTHONPATH=${PYTHONPATH:-} KVTC_SHARED_DIR=$KVTC_SHARED_DIR; $(grep '^gguf' "$LOG" | cut -c1-60)"

# 1. Calibration from the model on the GPU (host PCA), named by the build and the model.
KEY=$(cd tests/python && python3 -c "
import kvtc; from pathlib import Path; from smollm2_common import calibration_key
print(calibration_key(kvtc, Path('../../$MODEL')))")
CAL=/tmp/kvtc-smollm2-gpu-$KEY.kvtcal
if [ -f "$CAL" ]; then
  say "calibration: reusing $CAL"
else
  T=$(min 240 $(( $(left) - 90 )))
  say "calibration: from the fp32 model on cuda, timeout $T s"
  timeout $T python3 tests/python/smollm2_common.py "$CAL" --device cuda --shared "$KVTC_SHARED_DIR" >> "$LOG" 2>&1
  rc=$?; say "calibration rc $rc: $(grep '^calibration ' "$LOG" | tail -1)"
  [ $rc = 0 ] || { tail -5 "$LOG"; exit 1; }
fi

# 2. The transformers tests on CUDA tensors (fp32 model on the GPU).
T=$(min 220 $(( $(left) - 70 )))
say "tests: test_hf_smollm2.py -k 'cuda or calibration', timeout $T s"
KVTC_SMOLLM2_CAL=$CAL KVTC_REQUIRE_CUDA=1 timeout $T python3 -m pytest tests/python/test_hf_smollm2.py \
  -k "cuda or calibration" -v -s -rs -p no:cacheprovider > $OUT/.tests.log 2>&1
rc=$?; cat $OUT/.tests.log >> "$LOG"
grep -aE "teacher-forced|PASSED|FAILED|SKIPPED|ERROR|passed|failed" $OUT/.tests.log | sed 's/^\(.*\)\(cuda: \)/\2/'
rm -f $OUT/.tests.log; say "tests rc $rc"

# 3. Time to first token from a file against the prefill, real weights, bf16.
T=$(min 200 $(( $(left) - 5 )))
if [ "$T" -ge 30 ]; then
  say "bench: real SmolLM2 bf16, 1K-8K tokens, 8x and 16x, timeout $T s"
  timeout $T python3 -u bench/bench_python_gpu_ttft.py --model-gguf "$MODEL" --calibration "$CAL" \
    --shared "$KVTC_SHARED_DIR" --tokens 1024,2048,4096,8192 --ratios 8,16 --repeats 5 --greedy 16 \
    --budget $((T - 5)) --shape-timeout $((T - 5)) >> "$JSONL" 2>> "$LOG"
  say "bench rc $?"
else
  say "bench: skipped, $(left) s left"
fi

# 4. The same with the one-token step replayed from a CUDA graph, in its own process.
T=$(( $(left) - 5 ))
if [ "$T" -ge 40 ]; then
  say "graphs: bench --graphs, 2K and 8K tokens at 16x, timeout $T s"
  timeout $T python3 -u bench/bench_python_gpu_ttft.py --model-gguf "$MODEL" --calibration "$CAL" \
    --shared "$KVTC_SHARED_DIR" --tokens 2048,8192 --ratios 16 --repeats 5 --greedy 0 --graphs \
    --budget $((T - 5)) --shape-timeout $((T - 5)) >> "$JSONL" 2>> "$LOG"
  say "graphs rc $?"
else
  say "graphs: skipped, $(left) s left"
fi

python3 - "$JSONL" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
notes = []
print(f"{'tokens':>6} {'ratio':>5} {'file x':>6} {'prefill ms':>10} {'restore ms':>10} {'(load)':>7} {'cold ms':>8}"
      f" {'pf/rest':>7} {'graph ms':>8} {'pf/graph':>8} {'1st tok':>7} {'greedy':>6}  rel.err k/v")
for r in rows:
    if "error" in r:
        print("error:", r); continue
    g = r.get("restore_graph_ms", "error" if "graph_error" in r else "-")
    if "graph_error" in r:
        notes.append(f"{r['tokens']} tokens: no CUDA graph: {r['graph_error']}")
    if "restore_graph_ms" in r:
        notes.append(f"{r['tokens']} tokens {r['ratio']:g}x graph: captured {r['graph_captured']}, first token "
                     f"{'agrees' if r['graph_first_token_agrees'] else 'DIFFERS'}, |logits - eager's| max "
                     f"{r['graph_vs_eager_logits_max_abs']}")
    print(f"{r['tokens']:>6} {r['ratio']:>5g} {r['file_ratio']:>6} {r['prefill_ms']:>10} {r['restore_ms']:>10}"
          f" {r['load_cache_ms']:>7} {r['restore_cold_ms']:>8} {r['prefill_over_restore']:>7}"
          f" {str(g)[:8]:>8} {str(r.get('prefill_over_restore_graph', '-')):>8}"
          f" {'yes' if r['first_token_agrees'] else 'NO':>7} {r['greedy_agreement']:>6}"
          f"  {r['relative_error']['keys']}/{r['relative_error']['values']}")
print("\n".join(notes))
if rows and "device" in rows[-1]:
    print("device", rows[-1]["device"], "torch", rows[-1]["torch"], "dtype", rows[-1].get("dtype"),
          "repeats", rows[-1].get("repeats"), "files on", rows[-1].get("file_fs"), "(cold: evicted from the page cache)")
EOF
say "done in $(( $(date +%s) - T0 )) s of $BUDGET"
