#!/usr/bin/env bash
# The 64 px group model (seven groups; served on 2026-11-29 until the age model, now the start of
# recipes/resnet50_ages_96.sh), trained from scratch in three
# stages: 16 epochs at 64 px, 5 at 96 px from those weights (progressive resizing), then 20
# more at 64 px from the 96 px weights (a warm restart); then its calibration file and its test
# metrics, all in runs/r50_c2_64/. Wall time on the 2-core development machine: 73 + 32 + 70 min.
# Run from the repository root (UTKFace in ../shared/data/utkface, or AGE_UTKFACE_DIR):
#     bash recipes/resnet50_groups_64.sh
# Every run folder gets args.json (the run's arguments); --resume continues an interrupted stage.
set -euo pipefail
PY=${PY:-.venv/bin/python}
# Seven groups, no corruption: the trainer's defaults are now ages and --degrade 0.5.
G="--targets groups --degrade 0"

# 1. UTKFace decoded once into data-cache/ at both sizes.
$PY -m agegroup.training.data --size 64
$PY -m agegroup.training.data --size 96
# 2. The three stages.
$PY -m agegroup.training.train $G --size 64 --epochs 16 --min-zoom 1.0 \
    --run-dir runs/r50_64 --out runs/r50_64/export.pkl
$PY -m agegroup.training.train $G --size 96 --epochs 5 --lr 1e-3 --min-zoom 1.0 \
    --init runs/r50_64/export.pkl --run-dir runs/r50_96 --out runs/r50_96/export.pkl
$PY -m agegroup.training.train $G --size 64 --epochs 20 --lr 2e-3 --wd 0.03 \
    --init runs/r50_96/export.pkl --run-dir runs/r50_c2_64 --out runs/r50_c2_64/export.pkl
# 3. Calibration (export.calibration.json) and test metrics (metrics.json, confusion.png).
$PY -m agegroup.training.calibrate runs/r50_c2_64/export.pkl
$PY -m agegroup.training.evaluate runs/r50_c2_64/export.pkl
