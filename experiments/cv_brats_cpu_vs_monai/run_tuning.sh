#!/usr/bin/env bash
# The ET threshold and small-component rule chosen on the brats_cpu cross-validation (lightning-brats
# tune-postprocessing), then the held-out cases predicted again with it and scored (run run_study.sh first).
#   bash experiments/cv_brats_cpu_vs_monai/run_tuning.sh DATA_ROOT OUT_DIR CPU [SPLITS_FILE]
# The folds' held-out cases come from SPLITS_FILE (nnU-Net's splits_final.json format) where given, else from
# the MONAI arm's split.json per fold (run_study.sh's layout).
set -euo pipefail
DATA=$(realpath "$1"); OUT=$(realpath "$2"); CPU=$3; SPLITS=${4:+$(realpath "$4")}
PIN="taskset -c $CPU"
export OMP_NUM_THREADS=1 WANDB_MODE=offline
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/study.log"; }
fold_cases() {
  if [ -n "$SPLITS" ]; then
    python -c "import json,sys; d=json.load(open(sys.argv[1])); d=d['folds'] if isinstance(d, dict) else d; print(','.join(d[int(sys.argv[2])]['val']))" "$SPLITS" "$1"
  else
    python -c "import json,sys; print(','.join(json.load(open(sys.argv[1]))['val']))" "$OUT/monai/fold$1/split.json"
  fi
}
RUNS=()
for k in 0 1 2 3 4; do
  RUNS+=("$OUT/brats_cpu/fold$k")
  cases=$(fold_cases "$k")
  [ -e "$OUT/brats_cpu/fold$k/probabilities_done" ] || { log "probabilities fold $k"; $PIN python predict.py \
      ckpt_path="$OUT/brats_cpu/fold$k/checkpoints/last.ckpt" input="$DATA" "cases=[$cases]" save_probabilities=true \
      tuned_postprocessing=false output_dir="$OUT/brats_cpu/cv_probabilities" hydra.run.dir="$OUT/brats_cpu/probs$k" \
      > "$OUT/probs$k.log" 2>&1; touch "$OUT/brats_cpu/fold$k/probabilities_done"; }
done
log "tune"
$PIN lightning-brats tune-postprocessing probabilities="$OUT/brats_cpu/cv_probabilities" ground_truth="$DATA" data=brats20 \
    "write_to=[$(IFS=,; echo "${RUNS[*]}")]" hydra.run.dir="$OUT/tuning" > "$OUT/tuning.log" 2>&1
for k in 0 1 2 3 4; do
  cases=$(fold_cases "$k")
  log "predict tuned fold $k"
  $PIN python predict.py ckpt_path="$OUT/brats_cpu/fold$k/checkpoints/last.ckpt" input="$DATA" "cases=[$cases]" \
      output_dir="$OUT/brats_cpu_tuned/predictions" hydra.run.dir="$OUT/brats_cpu_tuned/predict$k" > "$OUT/tuned$k.log" 2>&1
done
log "eval tuned"
$PIN python eval.py predictions="$OUT/brats_cpu_tuned/predictions" ground_truth="$DATA" data=brats20 logger=csv \
    hydra.run.dir="$OUT/eval_brats_cpu_tuned" > "$OUT/eval_brats_cpu_tuned.log" 2>&1
lightning-brats compare "$OUT/eval_monai" "$OUT/eval_brats_cpu" "$OUT/eval_brats_cpu_tuned" out="$OUT/compare_tuned" \
    names=monai_unet,brats_cpu,brats_cpu_tuned > "$OUT/compare_tuned.log" 2>&1
log "tuning done"
