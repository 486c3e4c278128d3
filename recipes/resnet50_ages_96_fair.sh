#!/usr/bin/env bash
# The age model made fairer across groups of people: starting from the served learner, every
# race and gender drawn with the overall age-group mix (--balance race-gender), and the mean and
# variance losses against the pull toward the middle of the age range (--mean-weight,
# --variance-weight); the rest as recipes/resnet50_ages_96_kd_mnv2.sh (corrupted and closely
# framed faces, age-v1 distilled). One thread; every epoch its own one-cycle and a checkpoint:
#     BF16=0 EPOCHS=4 bash recipes/resnet50_ages_96_fair.sh
set -euo pipefail
PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/r50_age96_fair}
EPOCHS=${EPOCHS:-4}
LR=${LR:-5e-4}
INIT=${INIT:-model/export.pkl}
BALANCE=${BALANCE:-race-gender}
MEAN_WEIGHT=${MEAN_WEIGHT:-1.0}
VARIANCE_WEIGHT=${VARIANCE_WEIGHT:-0.1}
THREADS=${THREADS:-1}
BF16=${BF16:-1}
NO_BF16=""; [ "$BF16" = 0 ] && NO_BF16="--no-bf16"

$PY -m agegroup.training.data --size 96
[ -f runs/agev1/ages.npz ] || $PY -m agegroup.training.agev1 --out runs/agev1/ages.npz
# The starting learner is copied into the run, so that model/ may change while it trains.
mkdir -p "$RUN"
[ -f "$RUN/init.pkl" ] || cp "$INIT" "$RUN/init.pkl"
RESUME=""; [ -f "$RUN/progress.json" ] && RESUME="--resume"
OMP_NUM_THREADS=$THREADS $PY -m agegroup.training.train $RESUME --threads "$THREADS" $NO_BF16 \
    --size 96 --epochs "$EPOCHS" --schedule restarts --restart-decay 0.75 --lr "$LR" --wd 0.03 \
    --targets ages --degrade 0.5 --tight 0.3 --init "$RUN/init.pkl" \
    --balance "$BALANCE" --mean-weight "$MEAN_WEIGHT" --variance-weight "$VARIANCE_WEIGHT" \
    --teacher runs/agev1/ages.npz --distill-weight 0.3 \
    --run-dir "$RUN" --out "$RUN/export.pkl"
$PY -m agegroup.training.calibrate "$RUN/export.pkl"
$PY -m agegroup.training.evaluate "$RUN/export.pkl" --sets clean degraded tight \
    --out "$RUN/metrics.json" --probabilities "$RUN/test_probs.npz"
echo "Ship only if $RUN/metrics.json beats model/metrics.json (balanced accuracy on the clean,"
echo "degraded and tight tests) and shrinks the age bias per group of people."
