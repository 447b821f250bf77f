#!/usr/bin/env bash
# One lever over the same 5 folds and budget as run_study.sh: brats_cpu with OVERRIDES, each fold's
# final weights predicting its held-out cases at 1 mm, scored by eval.py, then compared with the
# study's brats_cpu and MONAI folders (run run_study.sh first, into the same OUT_DIR).
#   bash experiments/cv_brats_cpu_vs_monai/run_lever.sh DATA_ROOT OUT_DIR NAME MINUTES CPU OVERRIDES...
set -euo pipefail
DATA=$(realpath "$1"); OUT=$(realpath "$2"); NAME=$3; MIN=$4; CPU=$5; shift 5
PIN="taskset -c $CPU"
export OMP_NUM_THREADS=1 WANDB_MODE=offline
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/study.log"; }
for k in 0 1 2 3 4; do
  if [ ! -e "$OUT/$NAME/fold$k/done" ]; then
    log "$NAME fold $k: $*"
    $PIN python train.py experiment=brats_cpu data.root="$DATA" data.fold=$k trainer.max_time="00:00:0$MIN:00" \
        logger=csv paths.cache_dir="$OUT/cache" hydra.run.dir="$OUT/$NAME/fold$k" "$@" > "$OUT/${NAME}_fold$k.log" 2>&1
    touch "$OUT/$NAME/fold$k/done"
  fi
  cases=$(python -c "import json,sys; print(','.join(json.load(open(sys.argv[1]))['val']))" "$OUT/monai/fold$k/split.json")
  [ -e "$OUT/$NAME/fold$k/predicted" ] || { log "predict $NAME fold $k"; $PIN python predict.py \
      ckpt_path="$OUT/$NAME/fold$k/checkpoints/last.ckpt" input="$DATA" "cases=[$cases]" \
      output_dir="$OUT/$NAME/predictions" hydra.run.dir="$OUT/$NAME/predict$k" > "$OUT/${NAME}_predict$k.log" 2>&1; \
      touch "$OUT/$NAME/fold$k/predicted"; }
done
[ -e "$OUT/eval_$NAME/metrics.csv" ] || { log "eval $NAME"; $PIN python eval.py predictions="$OUT/$NAME/predictions" \
    ground_truth="$DATA" data=brats20 logger=csv hydra.run.dir="$OUT/eval_$NAME" > "$OUT/eval_$NAME.log" 2>&1; }
lightning-brats compare "$OUT/eval_monai" "$OUT/eval_brats_cpu" "$OUT/eval_$NAME" out="$OUT/compare_$NAME" \
    names=monai_unet,brats_cpu,$NAME > "$OUT/compare_$NAME.log" 2>&1
log "$NAME done"
