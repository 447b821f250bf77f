#!/usr/bin/env bash
# What a shipped model costs per case: predict.py on one case with 1 checkpoint and with the same
# checkpoint 5 times (a 5-fold ensemble runs 5 networks; the time depends on the network, not on
# its weights, so copies of one checkpoint time an ensemble).
#   bash experiments/ensemble_brats_cpu/time_prediction.sh CKPT CASE_FOLDER OUT_DIR [REPEATS] [CPU]
# Pinned to core CPU (default 1; one thread, as run_study.sh trains). Per run: the wall seconds, the
# seconds per case predict.py reports (after start-up and loading), and the process's CPU seconds
# (user + sys): on a machine shared with other work the wall time grows with their load, the CPU
# seconds of one pinned thread much less (no OpenMP threads spinning while they wait for a core).
set -euo pipefail
CKPT=$(realpath "$1"); CASE=$(realpath "$2"); OUT=$(mkdir -p "$3" && realpath "$3"); REPEATS=${4:-2}; CPU=${5:-1}
export WANDB_MODE=offline
lscpu | grep -E 'Model name|^CPU\(s\)|Flags' | sed 's/Flags:.*\(avx512_bf16\).*/Flags: ... \1 .../' > "$OUT/machine.txt"
for k in 0 1 2 3 4; do cp "$CKPT" "$OUT/fold$k.ckpt"; done
for rep in $(seq "$REPEATS"); do
  for n in 1 5; do
    list=$(python -c "import sys; print('[' + ','.join('$OUT/fold%d.ckpt' % i for i in range($n)) + ']')")
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/timing.txt"
    /usr/bin/time -f "models=$n run=$rep wall_s=%e user_s=%U sys_s=%S" -a -o "$OUT/timing.txt" \
      taskset -c "$CPU" python predict.py "ckpt_path=$list" input="$CASE" paths.root_dir="$OUT/run_${n}_$rep" overwrite=true \
      > "$OUT/predict_${n}_$rep.log" 2>&1
    grep -o "Predicted 1 cases.*per case" "$OUT/predict_${n}_$rep.log" >> "$OUT/timing.txt"
  done
done
cat "$OUT/timing.txt"
