#!/usr/bin/env bash
# One fold of a splits file at a larger budget, brats_cpu (core 1) and the MONAI baseline (core 0) side by side,
# each pinned to its core with one torch thread (arms.sh's OMP_NUM_THREADS=1, which train.py keeps to since 7d409ce;
# before, train.py took a thread per core of its affinity and, unpinned, spun against the baseline), then each predicts
# the fold's held-out cases at 1 mm, eval.py scores them and `compare` pairs them. 34 CPU-minutes per arm is the
# preset's 17 minutes on two cores (issue 25's budget) in one thread's compute.
#   bash experiments/cv_brats_cpu_vs_monai/run_full_budget.sh DATA_ROOT OUT_DIR SPLITS_FILE FOLD MINUTES [OVERRIDES...]
# OVERRIDES go to the brats_cpu arm (callbacks.training_budget.fill=false: the preset's 1200 planned steps only).
# Run it from the checkout whose code is measured; BUDGET_CLOCK=wall counts wall seconds instead.
set -euo pipefail
DATA=$(realpath "$1"); OUT=$(mkdir -p "$2" && realpath "$2"); SPLITS=$(realpath "$3"); K=$4; MIN=$5; shift 5
. "$(dirname "$(realpath "$0")")/arms.sh"  # log, val_cases, brats_arm, monai_arm, evaluate; BUDGET_CLOCK
machine_note
CASES=$(val_cases "$K")
ARM=${ARM:-brats_cpu}
{ PIN="taskset -c 1"; brats_arm "$ARM" "$K" "$@"; evaluate "$ARM" "$CASES"; log "$ARM done"; } &
{ PIN="taskset -c 0"; monai_arm "$K"; evaluate monai "$CASES"; log "monai done"; } &
wait
python -m lightning_brats.cli compare "$OUT/eval_monai" "$OUT/eval_$ARM" out="$OUT/compare_$ARM" names=monai_unet,$ARM \
    > "$OUT/compare_$ARM.log" 2>&1
log "fold $K at $MIN min done"
