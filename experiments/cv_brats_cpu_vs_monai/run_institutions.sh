#!/usr/bin/env bash
# run_study.sh over the folds of a splits file (nnU-Net's splits_final.json format) instead of the 5 seeded
# folds: by default splits_institutions.json, which holds out each group of institutions of the shared
# BraTS 2018 cases in turn (fold 0: 2013_*, fold 1: CBICA_*, fold 2: TCIA*). Without NAME: brats_cpu and
# the plain MONAI U-Net at the same wall-clock budget per fold; with NAME and OVERRIDES: one more brats_cpu
# arm (a lever) over the same folds, compared with both. Each fold's final weights predict its held-out
# cases at 1 mm, eval.py scores them, `compare` pairs them case by case.
#   bash experiments/cv_brats_cpu_vs_monai/run_institutions.sh DATA_ROOT OUT_DIR SPLITS_FILE MINUTES CPU [NAME OVERRIDES...]
# Run it from the checkout whose code is measured (train.py, predict.py, eval.py are taken from the working
# directory). Every job is pinned to one core (taskset -c CPU) with one torch thread; the load average is
# logged beside every step.
set -euo pipefail
DATA=$(realpath "$1"); OUT=$(mkdir -p "$2" && realpath "$2"); SPLITS=$(realpath "$3"); MIN=$4; CPU=$5; shift 5
NAME=${1:-}; [ $# -gt 0 ] && shift
PIN="taskset -c $CPU"
. "$(dirname "$(realpath "$0")")/arms.sh"  # log, val_cases, brats_arm, monai_arm, evaluate; BUDGET_CLOCK
NF=$(num_folds)
machine_note

# the cache of the cases, built once before any timed run
[ -e "$OUT/cache_built" ] || { log "building the cache"; $PIN python train.py experiment=brats_cpu data.root="$DATA" \
    debug=fast_dev_run logger=csv paths.cache_dir="$OUT/cache" hydra.run.dir="$OUT/warmup" > "$OUT/warmup.log" 2>&1; touch "$OUT/cache_built"; }

if [ -z "$NAME" ]; then
  for ((k = 0; k < NF; k++)); do brats_arm brats_cpu $k; monai_arm $k; done
  evaluate brats_cpu; evaluate monai
  log "compare"
  python -m lightning_brats.cli compare "$OUT/eval_monai" "$OUT/eval_brats_cpu" out="$OUT/compare" \
      names=monai_unet,brats_cpu > "$OUT/compare.log" 2>&1
else
  for ((k = 0; k < NF; k++)); do brats_arm "$NAME" $k "$@"; done
  evaluate "$NAME"
  python -m lightning_brats.cli compare "$OUT/eval_monai" "$OUT/eval_brats_cpu" "$OUT/eval_$NAME" out="$OUT/compare_$NAME" \
      names=monai_unet,brats_cpu,$NAME > "$OUT/compare_$NAME.log" 2>&1
fi
log "${NAME:-study} done"
