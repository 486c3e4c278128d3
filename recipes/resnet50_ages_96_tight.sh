#!/usr/bin/env bash
# Tight photos (the face alone, as the aligned faces of age datasets are): the app's crop of
# such a face reaches past the photo, where it repeats the photo's edges
# (agegroup.crops.region_with_edges; docs/detection.md#tight-photos). This fine-tunes the served
# age model for EPOCHS more epochs with a share of its training images framed that way (--tight,
# agegroup.training.degrade.tight_framing), otherwise exactly as the control run of
# recipes/resnet50_ages_96_served.sh (lr 2e-4, age-v1 distilled at 0.3), and evaluates it on the
# four test sets and the served model on the tight one. Measured and not shipped alone
# (docs/experiments.md, 2026-11-29). Run from the repository root:
#     BF16=0 EPOCHS=1 bash recipes/resnet50_ages_96_tight.sh
# About 35 min an epoch at 96 px on one AVX2 core (BF16=0: CPUs without AMX).
set -euo pipefail
PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/r50_age96_tight}
EPOCHS=${EPOCHS:-1}
LR=${LR:-2e-4}
TIGHT=${TIGHT:-0.3}
BF16=${BF16:-1}
NO_BF16=""; [ "$BF16" = 0 ] && NO_BF16="--no-bf16"

$PY -m agegroup.training.data --size 96
[ -f runs/agev1/ages.npz ] || $PY -m agegroup.training.agev1 --out runs/agev1/ages.npz
RESUME=""; [ -f "$RUN/progress.json" ] && RESUME="--resume"
OMP_NUM_THREADS=1 $PY -m agegroup.training.train $RESUME --threads 1 $NO_BF16 \
    --size 96 --epochs "$EPOCHS" --schedule restarts --restart-decay 0.75 --lr "$LR" --wd 0.03 \
    --targets ages --degrade 0.5 --tight "$TIGHT" --init model/export.pkl \
    --teacher runs/agev1/ages.npz --distill-weight 0.3 \
    --run-dir "$RUN" --out "$RUN/export.pkl"
$PY -m agegroup.training.calibrate "$RUN/export.pkl"
$PY -m agegroup.training.evaluate "$RUN/export.pkl" --sets clean degraded served tight \
    --out "$RUN/metrics.json" --probabilities "$RUN/test_probs.npz"
[ -f runs/shipped_tight.json ] || $PY -m agegroup.training.evaluate model/export.pkl --sets tight --out runs/shipped_tight.json
echo "Ship only if $RUN/metrics.json beats model/metrics.json on the clean and degraded tests."
