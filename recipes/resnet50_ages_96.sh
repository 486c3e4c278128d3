#!/usr/bin/env bash
# The age model 2026.11.29 (13 epochs: EPOCHS=13), from the 64 px group model that
# recipes/resnet50_groups_64.sh makes (runs/r50_c2_64/export.pkl; the one that started the
# run is commit d2a84be's model/export.pkl: `git show d2a84be:model/export.pkl >
# runs/r50_c2_64/export.pkl`), on 2 CPU cores: 10-14 min per epoch at 96 px with one thread.
# It is the start of recipes/resnet50_ages_96_kd_mnv2.sh (docs/training.md#the-recipes).
# Each stage resumes or is skipped if its output exists; run from the repository root:
#     EPOCHS=13 bash recipes/resnet50_ages_96.sh
# The result is $RUN/export.pkl, its export.calibration.json and metrics.json (clean and degraded).
set -euo pipefail
PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/r50_age96}
EPOCHS=${EPOCHS:-13}
INIT=${INIT:-runs/r50_c2_64/export.pkl}
# Two threads stall each other when anything else runs on a 2-core machine (12 s per batch
# instead of 3.5 s, measured): one thread is the robust choice there.
THREADS=${THREADS:-1}
# BF16=0 on CPUs without AMX / avx512_bf16 (`lscpu | grep -o 'amx[a-z_]*\|avx512_bf16'` prints
# nothing): there bf16 autocast ran ten times slower than float32 (docs/training.md).
BF16=${BF16:-1}
NO_BF16=""; [ "$BF16" = 0 ] && NO_BF16="--no-bf16"

# 1. UTKFace decoded once at 96 px (data-cache/utkface_96.npz).
$PY -m agegroup.training.data --size 96
# 2. The CC0 age-v1 teacher's age distribution for every image (about 5 min).
[ -f runs/agev1/ages.npz ] || $PY -m agegroup.training.agev1 --out runs/agev1/ages.npz
# 3. Ages 0-100 by label-distribution learning, half the images corrupted like uploads,
#    distilling age-v1's groups (weight 0.3); one short one-cycle per epoch (warm restarts),
#    so every epoch's checkpoint is usable. --resume continues an interrupted run.
RESUME=""; [ -f "$RUN/progress.json" ] && RESUME="--resume"
OMP_NUM_THREADS=$THREADS $PY -m agegroup.training.train $RESUME --threads "$THREADS" $NO_BF16 \
    --size 96 --epochs "$EPOCHS" --schedule restarts --restart-decay 0.75 --lr 2e-3 --wd 0.03 \
    --targets ages --degrade 0.5 --init "$INIT" \
    --teacher runs/agev1/ages.npz --distill-weight 0.3 \
    --run-dir "$RUN" --out "$RUN/export.pkl"
# 4. Logit adjustment and temperature, fitted on the validation part: $RUN/export.calibration.json.
$PY -m agegroup.training.calibrate "$RUN/export.pkl"
# 5. Clean and degraded test splits (the calibration file beside the learner is applied).
$PY -m agegroup.training.evaluate "$RUN/export.pkl" --out "$RUN/metrics.json"
echo "If $RUN/metrics.json beats model/metrics.json on the clean and the degraded test:"
echo "  cp $RUN/export.pkl $RUN/export.calibration.json model/"
echo "  cp $RUN/metrics.json $RUN/confusion.png model/"
echo "  $PY -m agegroup.training.onnx_export model/export.pkl --check 200"
