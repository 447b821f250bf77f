#!/usr/bin/env bash
# 5-fold cross-validation of experiment=brats_cpu against the plain MONAI U-Net baseline
# (experiments/baselines/monai_unet.py) at the same wall-clock training budget per fold, both
# scored by eval.py on the original 1 mm grid, then compared case by case (lightning-brats compare).
#   bash experiments/cv_brats_cpu_vs_monai/run_study.sh DATA_ROOT OUT_DIR [MINUTES] [CPU]
# Every job is pinned to one core (taskset -c CPU) with one torch thread, so both methods get the
# same compute; MINUTES (default 5) is the training budget per fold of each method.
set -euo pipefail
DATA=$(realpath "$1"); OUT=$(mkdir -p "$2" && realpath "$2"); MIN=${3:-5}; CPU=${4:-1}
PIN="taskset -c $CPU"
export OMP_NUM_THREADS=1 WANDB_MODE=offline
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/study.log"; }
lscpu | grep -E 'Model name|^CPU\(s\)' > "$OUT/machine.txt"; python -c "import torch; print('torch', torch.__version__)" >> "$OUT/machine.txt"

# the cache of the 20 cases, built once before any timed run
[ -e "$OUT/cache_built" ] || { log "building the cache"; $PIN python train.py experiment=brats_cpu data.root="$DATA" \
    debug=fast_dev_run logger=csv paths.cache_dir="$OUT/cache" hydra.run.dir="$OUT/warmup" > "$OUT/warmup.log" 2>&1; touch "$OUT/cache_built"; }

for k in 0 1 2 3 4; do
  if [ ! -e "$OUT/brats_cpu/fold$k/done" ]; then
    log "brats_cpu fold $k"
    $PIN python train.py experiment=brats_cpu data.root="$DATA" data.fold=$k trainer.max_time="00:00:0$MIN:00" \
        logger=csv paths.cache_dir="$OUT/cache" hydra.run.dir="$OUT/brats_cpu/fold$k" > "$OUT/brats_cpu_fold$k.log" 2>&1
    touch "$OUT/brats_cpu/fold$k/done"
  fi
  if [ ! -e "$OUT/monai/fold$k/summary.json" ]; then
    log "monai fold $k"
    # the poly decay spans the steps that fit in the budget (0.39 s/step measured on this core)
    $PIN python experiments/baselines/monai_unet.py --root "$DATA" --fold $k --minutes "$MIN" \
        --steps $((MIN * 60 * 100 / 39)) --out "$OUT/monai/fold$k" > "$OUT/monai_fold$k.log" 2>&1
  fi
done

# predictions of every held-out case at 1 mm: each fold's final weights (last.ckpt), as the baseline's
mkdir -p "$OUT/monai/predictions"
for k in 0 1 2 3 4; do
  cases=$(python -c "import json,sys; print(','.join(json.load(open(sys.argv[1]))['val']))" "$OUT/monai/fold$k/split.json")
  [ -e "$OUT/brats_cpu/fold$k/predicted" ] || { log "predict brats_cpu fold $k"; $PIN python predict.py \
      ckpt_path="$OUT/brats_cpu/fold$k/checkpoints/last.ckpt" input="$DATA" "cases=[$cases]" \
      output_dir="$OUT/brats_cpu/predictions" hydra.run.dir="$OUT/brats_cpu/predict$k" > "$OUT/predict$k.log" 2>&1; \
      touch "$OUT/brats_cpu/fold$k/predicted"; }
  for f in "$OUT"/monai/fold$k/predictions/*.nii.gz; do ln -sfn "$f" "$OUT/monai/predictions/"; done
done
for m in brats_cpu monai; do
  [ -e "$OUT/eval_$m/metrics.csv" ] || { log "eval $m"; $PIN python eval.py predictions="$OUT/$m/predictions" \
      ground_truth="$DATA" data=brats20 logger=csv hydra.run.dir="$OUT/eval_$m" > "$OUT/eval_$m.log" 2>&1; }
done
log "compare"
lightning-brats compare "$OUT/eval_monai" "$OUT/eval_brats_cpu" out="$OUT/compare" names=monai_unet,brats_cpu \
    > "$OUT/compare.log" 2>&1
log "done"
