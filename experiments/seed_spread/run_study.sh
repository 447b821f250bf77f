#!/usr/bin/env bash
# Run-to-run spread over seeds: experiment=brats_cpu on fold 0 with the same folds (a fixed splits file)
# and a different seed per run (initial weights, sampling, augmentation), MINUTES of training each,
# pinned to one core; prints the final validation Dice of each run (2 mm grid, the fold's 4 cases).
#   bash experiments/seed_spread/run_study.sh DATA_ROOT OUT_DIR SPLITS_FILE MINUTES CPU SEED...
set -euo pipefail
DATA=$(realpath "$1"); OUT=$(mkdir -p "$2" && realpath "$2"); SPLITS=$(realpath "$3"); MIN=$4; CPU=$5; shift 5
export OMP_NUM_THREADS=1 WANDB_MODE=offline
for seed in "$@"; do
  [ -e "$OUT/seed$seed/done" ] || {
    echo "[$(date +%T)] seed $seed" | tee -a "$OUT/study.log"
    taskset -c "$CPU" python train.py experiment=brats_cpu data.root="$DATA" data.fold=0 data.splits_file="$SPLITS" \
        seed=$seed trainer.max_time="00:00:0$MIN:00" logger=csv paths.cache_dir="$(dirname "$(dirname "$SPLITS")")" \
        hydra.run.dir="$OUT/seed$seed" > "$OUT/seed$seed.log" 2>&1
    touch "$OUT/seed$seed/done"; }
  echo "seed $seed: $(grep -o 'val/dice_wt=[0-9.]*, val/dice_tc=[0-9.]*, val/dice_et=[0-9.]*' "$OUT/seed$seed.log" | tail -1)" \
      "$(grep -o '[0-9]* of [0-9]* planned steps' "$OUT/seed$seed.log" | tail -1)"
done
