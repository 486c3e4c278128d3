#!/usr/bin/env bash
# Training on the app's own crops, measured and not shipped (docs/experiments.md, 2026-11-29):
# the served age model fine-tuned for EPOCHS more epochs with
# half of its training images replaced by the crops the app itself makes of them (pasted into a
# photo, found by BlazeFace, aligned by dlib's landmarks: agegroup/training/served_crops.py),
# and the same fine-tune without them (the control), both evaluated on the clean, degraded and
# served test sets. Run from the repository root (both runs at once: one thread each):
#     EPOCHS=1 bash recipes/resnet50_ages_96_served.sh
# BF16=0 on CPUs without AMX / avx512_bf16 (there bf16 autocast ran ten times slower than fp32).
set -euo pipefail
PY=${PY:-.venv/bin/python}
EPOCHS=${EPOCHS:-1}
LR=${LR:-2e-4}
INIT=${INIT:-model/export.pkl}
BF16=${BF16:-1}
NO_BF16=""; [ "$BF16" = 0 ] && NO_BF16="--no-bf16"

$PY -m agegroup.training.data --size 96
[ -f runs/agev1/ages.npz ] || $PY -m agegroup.training.agev1 --out runs/agev1/ages.npz
# About 25 min of one core: every UTKFace image placed, detected and cropped once.
$PY -m agegroup.training.served_crops --size 96 --workers 2

train() {  # RUN, then extra arguments
  local run=$1; shift
  local resume=""; [ -f "$run/progress.json" ] && resume="--resume"
  OMP_NUM_THREADS=1 $PY -m agegroup.training.train $resume --threads 1 $NO_BF16 \
      --size 96 --epochs "$EPOCHS" --schedule restarts --restart-decay 0.75 --lr "$LR" \
      --wd 0.03 --targets ages --degrade 0.5 --init "$INIT" \
      --teacher runs/agev1/ages.npz --distill-weight 0.3 \
      --run-dir "$run" --out "$run/export.pkl" "$@" > "$run.log" 2>&1
}
mkdir -p runs
train runs/r50_age96_served --served-crops data-cache/utkface_96_served.npz --served-share 0.5 &
train runs/r50_age96_control &
wait
# Calibration and the three test sets, both runs at once; the shipped model on the served set.
for run in runs/r50_age96_served runs/r50_age96_control; do
  ( $PY -m agegroup.training.calibrate "$run/export.pkl" &&
    $PY -m agegroup.training.evaluate "$run/export.pkl" --sets clean degraded served \
        --out "$run/metrics.json" ) > "$run.eval.log" 2>&1 &
done
wait
[ -f runs/shipped_served.json ] ||
  $PY -m agegroup.training.evaluate model/export.pkl --sets served --out runs/shipped_served.json
