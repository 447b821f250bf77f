# The steps of one study arm, shared by run_institutions.sh and run_full_budget.sh (sourced, not run): a timed
# training run, the prediction of the fold's held-out cases at 1 mm, and eval.py's scores. Every step is skipped
# when its output is there, so a study that stopped resumes. The caller sets DATA (the cases), OUT (the study
# folder), SPLITS (nnU-Net's splits_final.json format), MIN (the budget in minutes) and PIN ("" or "taskset -c N");
# EXPERIMENT (default brats_cpu) is the preset brats_arm trains, e.g. brats_cpu_3d for the 3D networks.
# BUDGET_CLOCK=cpu (default): the training budgets count CPU seconds of the job (cpu_clock.py), so a core shared
# with other jobs does not shrink them; BUDGET_CLOCK=wall: wall seconds, as run_study.sh.
ARMS_DIR=$(dirname "$(realpath "${BASH_SOURCE[0]}")")
[ "${BUDGET_CLOCK:-cpu}" = cpu ] && CLOCK="$ARMS_DIR/cpu_clock.py" || CLOCK=
export OMP_NUM_THREADS=1 WANDB_MODE=offline
log() { echo "[$(date +%T)] $* (load $(uptime | sed 's/.*load average: //'))" | tee -a "$OUT/study.log"; }
# val_cases FOLD: the fold's held-out cases, comma-separated
val_cases() { python -c "import json,sys; d=json.load(open(sys.argv[1])); d=d['folds'] if isinstance(d, dict) else d; print(','.join(d[int(sys.argv[2])]['val']))" "$SPLITS" "$1"; }
num_folds() { python -c "import json,sys; d=json.load(open(sys.argv[1])); print(len(d['folds'] if isinstance(d, dict) else d))" "$SPLITS"; }
machine_note() { [ -e "$OUT/machine.txt" ] && return; lscpu | grep -E 'Model name|^CPU\(s\)' > "$OUT/machine.txt"
  python -c "import torch; print('torch', torch.__version__)" >> "$OUT/machine.txt"
  echo "BUDGET_CLOCK=${BUDGET_CLOCK:-cpu} ONEDNN_MAX_CPU_ISA=${ONEDNN_MAX_CPU_ISA:-} ATEN_CPU_CAPABILITY=${ATEN_CPU_CAPABILITY:-} LD_PRELOAD=${LD_PRELOAD:-}" >> "$OUT/machine.txt"; }

# brats_arm ARM FOLD OVERRIDES...: one timed `experiment=$EXPERIMENT` run with OVERRIDES, then its held-out cases
# predicted at 1 mm from last.ckpt into $OUT/ARM/predictions
brats_arm() {
  local arm=$1 k=$2; shift 2
  if [ ! -e "$OUT/$arm/fold$k/done" ]; then
    log "$arm fold $k, $MIN min: $*"
    $PIN python $CLOCK train.py experiment="${EXPERIMENT:-brats_cpu}" data.root="$DATA" data.splits_file="$SPLITS" data.fold="$k" \
        trainer.max_time="$(printf '00:00:%02d:00' "$MIN")" logger=csv paths.cache_dir="$OUT/cache" \
        hydra.run.dir="$OUT/$arm/fold$k" "$@" > "$OUT/${arm}_fold$k.log" 2>&1
    touch "$OUT/$arm/fold$k/done"
  fi
  [ -e "$OUT/$arm/fold$k/predicted" ] && return
  log "predict $arm fold $k"
  $PIN python predict.py ckpt_path="$OUT/$arm/fold$k/checkpoints/last.ckpt" input="$DATA" "cases=[$(val_cases "$k")]" \
      output_dir="$OUT/$arm/predictions" hydra.run.dir="$OUT/$arm/predict$k" > "$OUT/${arm}_predict$k.log" 2>&1
  touch "$OUT/$arm/fold$k/predicted"
}

# monai_arm FOLD: the plain MONAI U-Net (experiments/baselines/monai_unet.py) for the same budget, its
# predictions linked into $OUT/monai/predictions
monai_arm() {
  local k=$1
  if [ ! -e "$OUT/monai/fold$k/summary.json" ]; then
    log "monai fold $k, $MIN min"
    # the poly decay spans the steps that fit in the budget (0.39 s/step measured on one core)
    $PIN python $CLOCK experiments/baselines/monai_unet.py --root "$DATA" --splits-file "$SPLITS" --fold "$k" \
        --minutes "$MIN" --steps $((MIN * 60 * 100 / 39)) --out "$OUT/monai/fold$k" > "$OUT/monai_fold$k.log" 2>&1
  fi
  mkdir -p "$OUT/monai/predictions"
  for f in "$OUT"/monai/fold$k/predictions/*.nii.gz; do ln -sfn "$f" "$OUT/monai/predictions/"; done
}

# evaluate ARM [CASES]: eval.py on $OUT/ARM/predictions at 1 mm against the expert labels (only CASES when given)
evaluate() {
  [ -e "$OUT/eval_$1/metrics.csv" ] && return
  log "eval $1"
  $PIN python eval.py predictions="$OUT/$1/predictions" ground_truth="$DATA" data=brats20 logger=csv \
      ${2:+"cases=[$2]"} hydra.run.dir="$OUT/eval_$1" > "$OUT/eval_$1.log" 2>&1
}
