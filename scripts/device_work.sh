# Sourced by the timed device scripts (scripts/device_issue15_check.sh, scripts/device_ab.sh) with
# WORK set to a folder name: everything is written to /tmp/$WORK, and only $OUT/summary.txt and
# $OUT/all.tgz (that folder, packed) come back, since the device returns only a few files. T (default
# 560) is the script's budget in seconds: el prints the seconds spent, left those remaining; log
# appends a line to the summary and prints it. The summary starts with the machine (date, GPUs, cores).
RET=${OUT:-/tmp/out}; OUT=/tmp/${WORK:?set WORK before sourcing scripts/device_work.sh}; mkdir -p $RET $OUT
T=${T:-560}
trap 'cp $OUT/summary.txt $RET/ 2>/dev/null; tar czf $RET/all.tgz -C $OUT .' EXIT
S0=$(date +%s); el() { echo $(( $(date +%s) - S0 )); }
left() { echo $(( T - $(el) )); }
log() { echo "$*" | tee -a $OUT/summary.txt; }
{ date -u; nvidia-smi -L; nproc; } > $OUT/env.txt 2>&1; cat $OUT/env.txt >> $OUT/summary.txt
