#!/usr/bin/env bash
# A 5-fold ensemble of experiment=brats_cpu against its single folds on the same unseen cases.
#   bash experiments/ensemble_brats_cpu/run_study.sh DATA_ROOT OUT_DIR [MINUTES] [CPU]
# 4 of the 20 cases (fold 0 of the default 5-fold split, seed 12345) are kept out as a test set;
# the other 16 are split into 5 folds (splits.json, nnU-Net's format) and one brats_cpu run trains
# per fold for MINUTES (default 3) pinned to one core. Each fold's final weights (last.ckpt) and
# their ensemble (predict.py ckpt_path=[...]: probabilities averaged after each model's flip TTA)
# segment the 4 test cases; eval.py scores each at 1 mm and lightning-brats compare ranks them.
set -euo pipefail
DATA=$(realpath "$1"); OUT=$(mkdir -p "$2" && realpath "$2"); MIN=${3:-3}; CPU=${4:-1}
PIN="taskset -c $CPU"
export OMP_NUM_THREADS=1 WANDB_MODE=offline
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/study.log"; }
lscpu | grep -E 'Model name|^CPU\(s\)' > "$OUT/machine.txt"

TEST=$(python - "$DATA" "$OUT/splits.json" <<'PY'
import json, sys
from lightning_brats.data.splits import kfold_split, make_splits
ids = sorted(p.name for p in __import__("pathlib").Path(sys.argv[1]).iterdir() if p.is_dir())
pool, test = kfold_split(ids, 5, 0, 12345)
json.dump(make_splits(pool, 5, 12345), open(sys.argv[2], "w"), indent=1)
print(",".join(test))
PY
)
log "test cases: $TEST"
CKPTS=()
for k in 0 1 2 3 4; do
  if [ ! -e "$OUT/fold$k/done" ]; then
    log "train fold $k"
    $PIN python train.py experiment=brats_cpu data.root="$DATA" data.splits_file="$OUT/splits.json" data.fold=$k \
        trainer.max_time="00:00:0$MIN:00" logger=csv paths.cache_dir="$OUT/../study16/cache" \
        hydra.run.dir="$OUT/fold$k" > "$OUT/train_fold$k.log" 2>&1
    touch "$OUT/fold$k/done"
  fi
  CKPTS+=("$OUT/fold$k/checkpoints/last.ckpt")
done
predict_eval() {  # name ckpt_path-value
  [ -e "$OUT/eval_$1/metrics.csv" ] && return
  log "predict + eval $1"
  $PIN python predict.py "ckpt_path=$2" input="$DATA" "cases=[$TEST]" output_dir="$OUT/pred_$1" \
      hydra.run.dir="$OUT/predict_$1" > "$OUT/predict_$1.log" 2>&1
  $PIN python eval.py predictions="$OUT/pred_$1" ground_truth="$DATA" data=brats20 "cases=[$TEST]" logger=csv \
      hydra.run.dir="$OUT/eval_$1" > "$OUT/eval_$1.log" 2>&1
}
for k in 0 1 2 3 4; do predict_eval fold$k "${CKPTS[$k]}"; done
predict_eval ensemble "[$(IFS=,; echo "${CKPTS[*]}")]"
log "compare"
lightning-brats compare "$OUT"/eval_fold{0,1,2,3,4} "$OUT/eval_ensemble" out="$OUT/compare" \
    names=fold0,fold1,fold2,fold3,fold4,ensemble > "$OUT/compare.log" 2>&1
log "done"
