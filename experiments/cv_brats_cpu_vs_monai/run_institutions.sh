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
# BUDGET_CLOCK=cpu (default): the training budgets count CPU seconds of the job (cpu_clock.py), so a core shared
# with other jobs does not shrink them; BUDGET_CLOCK=wall: wall seconds, as run_study.sh
HERE=$(dirname "$(realpath "$0")")
[ "${BUDGET_CLOCK:-cpu}" = cpu ] && CLOCK="$HERE/cpu_clock.py" || CLOCK=
export OMP_NUM_THREADS=1 WANDB_MODE=offline
log() { echo "[$(date +%T)] $* (load $(uptime | sed 's/.*load average: //'))" | tee -a "$OUT/study.log"; }
NF=$(python -c "import json,sys; d=json.load(open(sys.argv[1])); print(len(d['folds'] if isinstance(d, dict) else d))" "$SPLITS")
val_cases() { python -c "import json,sys; d=json.load(open(sys.argv[1])); d=d['folds'] if isinstance(d, dict) else d; print(','.join(d[int(sys.argv[2])]['val']))" "$SPLITS" "$1"; }
[ -e "$OUT/machine.txt" ] || { lscpu | grep -E 'Model name|^CPU\(s\)' > "$OUT/machine.txt"
  python -c "import torch; print('torch', torch.__version__)" >> "$OUT/machine.txt"
  echo "BUDGET_CLOCK=${BUDGET_CLOCK:-cpu} ONEDNN_MAX_CPU_ISA=${ONEDNN_MAX_CPU_ISA:-} ATEN_CPU_CAPABILITY=${ATEN_CPU_CAPABILITY:-} LD_PRELOAD=${LD_PRELOAD:-}" >> "$OUT/machine.txt"; }

# the cache of the cases, built once before any timed run
[ -e "$OUT/cache_built" ] || { log "building the cache"; $PIN python train.py experiment=brats_cpu data.root="$DATA" \
    debug=fast_dev_run logger=csv paths.cache_dir="$OUT/cache" hydra.run.dir="$OUT/warmup" > "$OUT/warmup.log" 2>&1; touch "$OUT/cache_built"; }

# train.py ARM fold OVERRIDES: one timed brats_cpu run, then its held-out cases predicted at 1 mm from last.ckpt
brats_arm() {
  local arm=$1 k=$2; shift 2
  if [ ! -e "$OUT/$arm/fold$k/done" ]; then
    log "$arm fold $k: $*"
    $PIN python $CLOCK train.py experiment=brats_cpu data.root="$DATA" data.splits_file="$SPLITS" data.fold=$k \
        trainer.max_time="00:00:0$MIN:00" logger=csv paths.cache_dir="$OUT/cache" hydra.run.dir="$OUT/$arm/fold$k" "$@" \
        > "$OUT/${arm}_fold$k.log" 2>&1
    touch "$OUT/$arm/fold$k/done"
  fi
  [ -e "$OUT/$arm/fold$k/predicted" ] || { log "predict $arm fold $k"; $PIN python predict.py \
      ckpt_path="$OUT/$arm/fold$k/checkpoints/last.ckpt" input="$DATA" "cases=[$(val_cases "$k")]" \
      output_dir="$OUT/$arm/predictions" hydra.run.dir="$OUT/$arm/predict$k" > "$OUT/${arm}_predict$k.log" 2>&1; \
      touch "$OUT/$arm/fold$k/predicted"; }
}
evaluate() {
  [ -e "$OUT/eval_$1/metrics.csv" ] || { log "eval $1"; $PIN python eval.py predictions="$OUT/$1/predictions" \
      ground_truth="$DATA" data=brats20 logger=csv hydra.run.dir="$OUT/eval_$1" > "$OUT/eval_$1.log" 2>&1; }
}

if [ -z "$NAME" ]; then
  mkdir -p "$OUT/monai/predictions"
  for ((k = 0; k < NF; k++)); do
    brats_arm brats_cpu $k
    if [ ! -e "$OUT/monai/fold$k/summary.json" ]; then
      log "monai fold $k"
      # the poly decay spans the steps that fit in the budget (0.39 s/step measured on this core)
      $PIN python $CLOCK experiments/baselines/monai_unet.py --root "$DATA" --splits-file "$SPLITS" --fold $k --minutes "$MIN" \
          --steps $((MIN * 60 * 100 / 39)) --out "$OUT/monai/fold$k" > "$OUT/monai_fold$k.log" 2>&1
    fi
    for f in "$OUT"/monai/fold$k/predictions/*.nii.gz; do ln -sfn "$f" "$OUT/monai/predictions/"; done
  done
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
