#!/usr/bin/env bash
# The age model trained from scratch on one GPU (H200 class, about ten minutes), run ON the GPU
# machine from a copy of the repository. Not yet run on a GPU;
# tests/test_training.py::test_the_gpu_pack_holds_the_train_split_and_trains_as_the_gpu_recipe_does
# runs its path (pack, then train from the pack with these options) small on the CPU.
# Prepare on the CPU machine, from the repository root:
#
#   .venv/bin/python -m agegroup.training.pack --size 112 --quality 80 \
#       --teacher runs/agev1/ages.npz --out gpu-pack           # ~52 MiB, train split only
#   .venv/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl fastai==2.8.12 fastcore==2.2.41 fasttransform==0.0.5 fastprogress==1.0.3 \
#       fastdownload==0.0.8 plum-dispatch==2.9.0 beartype==0.23.1
#   (fastai is not on that machine, whose Python is 3.12; fastprogress 1.0.3 because later ones
#   need python-fasthtml; this set trained here with fastai 2.8.12. .whl/ and gpu-pack/ are
#   ignored by git.)
#
# Copy the working tree with gpu-pack/ and .whl/ to the GPU machine (without model/export.pkl
# and export.onnx, ~100 MB, which training does not need) and run `bash recipes/gpu_h200.sh`
# there. The learner is written to $OUT in parts of 15 MB; join them on the CPU machine with
# `cat OUT/export.pkl.part* > runs/gpu/export.pkl`, then calibrate, evaluate and export the ONNX
# twin there as in recipes/resnet50_ages_96.sh (docs/training.md#on-a-gpu).
set -euo pipefail
OUT=${OUT:-runs/gpu}
EPOCHS=${EPOCHS:-40}
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:.
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# Ages 0-100 (label distributions), half the images corrupted, 30% framed as tight photos
# (--tight: docs/training.md#the-training-command), age-v1's groups distilled, as
# recipes/resnet50_ages_96.sh, but from scratch at 112 px with a large batch.
timeout 480 python3 -m agegroup.training.train --device cuda --workers 14 --bs 256 \
    --size 112 --epochs "$EPOCHS" --lr 4e-3 --wd 0.05 --targets ages --degrade 0.5 --tight 0.3 \
    --teacher gpu-pack/teacher.npz --distill-weight 0.3 \
    --data gpu-pack/utkface --cache /tmp/cache --run-dir /tmp/run --out /tmp/run/export.pkl \
    || { echo "training failed or ran out of time"; exit 1; }
cp /tmp/run/args.json /tmp/run/history.csv "$OUT/"
split -b 15M -d /tmp/run/export.pkl "$OUT/export.pkl.part"
ls -la "$OUT"
