#!/usr/bin/env bash
# One brats_cpu arm on one fold at a FIXED number of steps instead of a time budget, then its held-out cases
# predicted at 1 mm: for a lever that does not change the step's cost (sampling, loss, post-processing), a fixed
# step count is the same compute on every CPU, so two arms can share a machine (or run on another one than the
# recorded arms) without the budget depending on the load. Use the steps a timed run recorded (its log's
# "ran N steps"), so that the arm has that run's compute. fp32 (trainer.precision=32, the AVX2-only kernels'
# precision), one pinned thread, the LR schedule over the fixed steps and a last validation at the end.
#   bash experiments/cv_brats_cpu_vs_monai/run_fixed_steps.sh DATA_ROOT OUT_DIR SPLITS_FILE FOLD STEPS CPU ARM [OVERRIDES...]
# Run it from the checkout whose code is measured; eval.py and `compare` score the arms' OUT_DIR/ARM/predictions.
set -euo pipefail
DATA=$(realpath "$1"); OUT=$(mkdir -p "$2" && realpath "$2"); SPLITS=$(realpath "$3"); K=$4; STEPS=$5; CPU=$6; ARM=$7; shift 7
export OMP_NUM_THREADS=1 WANDB_MODE=offline
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/study.log"; }
cases=$(python -c "import json,sys; d=json.load(open(sys.argv[1])); d=d['folds'] if isinstance(d, dict) else d; print(','.join(d[int(sys.argv[2])]['val']))" "$SPLITS" "$K")
if [ ! -e "$OUT/$ARM/fold$K/done" ]; then
  log "$ARM fold $K: $STEPS steps $*"
  taskset -c "$CPU" python train.py experiment=brats_cpu data.root="$DATA" data.splits_file="$SPLITS" data.fold="$K" \
    trainer.max_time=null trainer.max_epochs=1000 trainer.max_steps="$STEPS" trainer.precision=32 logger=csv \
    paths.cache_dir="$OUT/cache_$CPU" hydra.run.dir="$OUT/$ARM/fold$K" "$@" > "$OUT/${ARM}_fold$K.log" 2>&1
  touch "$OUT/$ARM/fold$K/done"
fi
if [ ! -e "$OUT/$ARM/fold$K/predicted" ]; then
  log "predict $ARM fold $K"
  taskset -c "$CPU" python predict.py ckpt_path="$OUT/$ARM/fold$K/checkpoints/last.ckpt" input="$DATA" "cases=[$cases]" \
    output_dir="$OUT/$ARM/predictions" hydra.run.dir="$OUT/$ARM/predict$K" > "$OUT/${ARM}_predict$K.log" 2>&1
  touch "$OUT/$ARM/fold$K/predicted"
fi
log "$ARM fold $K done"
