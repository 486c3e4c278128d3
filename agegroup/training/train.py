"""Train the ResNet50 age learner and export it for the web app.

    python -m agegroup.training.train --size 96 --epochs 12 --out model/export.pkl

By default (``--targets ages``) the network predicts a distribution over whole ages 0-100,
trained by label-distribution learning: the target is a Gaussian around the labelled age
(wider for older faces, whose apparent age varies more), plus a cross-entropy on the seven
groups, which are sums over that distribution (``agegroup.ages``). ``--targets groups``
trains the seven groups directly, as the earlier models did. A random half of the training
images is corrupted like real uploads (``agegroup.training.degrade``, ``--degrade``).

The images are decoded once into a uint8 cache (see ``data.build_cache``); every epoch then
only augments tensors. On CPUs with AMX/AVX512-BF16 the forward and backward passes run under
bf16 autocast (``--bf16``, default on) with channels-last tensors. A checkpoint is written after
every epoch under ``--run-dir``; ``--resume`` continues an interrupted run from the last one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
import torch
from fastai.callback.progress import CSVLogger
from fastai.vision.models import resnet50

from agegroup.ages import AGE_CLASSES, clamp_age
from agegroup.buckets import BUCKETS
from agegroup.training import data as utk
from agegroup.training.balance import BALANCE_CHOICES, balancing_weights
from agegroup.training.callbacks import Checkpoint
from agegroup.training.distill import Distillation, load_teacher_targets
from agegroup.training.learner import (
    SEED,
    LearnerConfig,
    build_learner,
    export_learner,
    find_arch,
    load_matching_weights,
    plain_copy,
    seed_everything,
    training_split,
)
from agegroup.training.served_crops import served_training_rows


def add_common_arguments(
    parser: argparse.ArgumentParser, size: int, epochs: int, lr: float, arch: str
) -> None:
    """Network, data, schedule and augmentation options shared by this trainer and the
    teacher's."""
    parser.add_argument(
        "--arch",
        default=arch,
        help=f"the network: {arch}, or package.module:function for another (a function taking"
        " `pretrained`, as torchvision's do; the tests train testsupport.learner:tiny_cnn)",
    )
    parser.add_argument("--data", type=Path, default=utk.DEFAULT_DATA_DIR)
    parser.add_argument("--cache", type=Path, default=Path("data-cache"))
    parser.add_argument("--size", type=int, default=size)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--wd", type=float, default=0.05)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument(
        "--min-zoom", type=float, default=0.9, help="below 1: zoom out too (serving-crop jitter)"
    )
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--targets", choices=("ages", "groups"), default="ages", help="what the network predicts"
    )
    parser.add_argument(
        "--degrade", type=float, default=0.5, help="share of training images corrupted"
    )
    parser.add_argument("--no-bf16", action="store_true", help="float32 (CPUs without AMX)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")


def class_labels(samples: list[utk.Sample], targets: str) -> tuple[tuple[str, ...], list[int]]:
    """The classes a network learns (``targets``: ages or groups) and each sample's index."""
    if targets == "ages":
        return AGE_CLASSES, [clamp_age(s.age) for s in samples]
    return BUCKETS, [s.bucket for s in samples]


def write_args(args: argparse.Namespace) -> None:
    """Record a run's arguments in ``args.run_dir/args.json``, so the run can be repeated."""
    args.run_dir.mkdir(parents=True, exist_ok=True)
    (args.run_dir / "args.json").write_text(
        json.dumps(
            {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, indent=2
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(parser, size=64, epochs=12, lr=3e-3, arch="resnet50")
    parser.add_argument(
        "--group-weight", type=float, default=1.0, help="weight of the group loss (ages only)"
    )
    parser.add_argument(
        "--served-crops",
        type=Path,
        help="the app's own crops of the same images (agegroup.training.served_crops)",
    )
    parser.add_argument(
        "--served-share", type=float, default=0.5, help="share of training images taken from them"
    )
    parser.add_argument(
        "--tight",
        type=float,
        default=0.0,
        help="share of training images framed like photos that end close around the face",
    )
    parser.add_argument(
        "--mean-weight", type=float, default=0.0, help="weight of the mean loss (ages only)"
    )
    parser.add_argument(
        "--variance-weight", type=float, default=0.0, help="weight of the variance loss (ages)"
    )
    parser.add_argument(
        "--balance",
        choices=BALANCE_CHOICES,
        default="none",
        help="draw images so that every race (and gender) has the overall age-group mix",
    )
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--valid-fraction", type=float, default=0.1, help="of the training split")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument(
        "--pretrained", action="store_true", help="fastai's ImageNet weights (internet)"
    )
    weights.add_argument("--weights", type=Path, help="a local torchvision resnet50 state_dict")
    weights.add_argument(
        "--no-pretrained", action="store_true", help="train from scratch (default)"
    )
    parser.add_argument(
        "--init",
        type=Path,
        help="start from the weights of an exported learner (e.g. a larger"
        " resolution after a smaller one: progressive resizing)",
    )
    parser.add_argument(
        "--teacher",
        type=Path,
        help="soft targets to distil: an .npz of group log-probabilities"
        " (agegroup.training.teacher or agegroup.training.agev1)",
    )
    parser.add_argument("--distill-weight", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument(
        "--schedule",
        choices=("one-cycle", "restarts"),
        default="one-cycle",
        help="one one-cycle over all epochs, or one per epoch with a decaying peak (warm"
        " restarts: every epoch's checkpoint is annealed, so a run can stop at any epoch)",
    )
    parser.add_argument("--restart-decay", type=float, default=0.7, help="peak lr factor per epoch")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/resnet50"))
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: a GPU if any"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="processes preparing batches (a GPU needs some)"
    )
    parser.add_argument("--out", type=Path, default=Path("model/export.pkl"))
    args = parser.parse_args(argv)
    arch = find_arch(args.arch, {"resnet50": resnet50})  # before any data is read

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    seed_everything(args.seed)
    images, samples, valid_idx = training_split(
        args.data, args.size, args.cache, args.valid_fraction
    )
    vocab, buckets = class_labels(samples, args.targets)
    print(f"train {len(images) - len(valid_idx)}  valid {len(valid_idx)}  size {args.size}")
    teacher = None
    if args.teacher is not None:
        log_probs = load_teacher_targets(args.teacher, [s.name for s in samples])
        teacher = Distillation(log_probs, args.distill_weight, args.temperature)
        print(f"distilling {args.teacher} (weight {args.distill_weight}, T={args.temperature})")
    served = None
    if args.served_crops is not None:
        served = served_training_rows(args.served_crops, samples, images, valid_idx)
        print(f"{args.served_share:.0%} of training images from {args.served_crops}")
    config = LearnerConfig(
        size=args.size,
        batch_size=args.bs,
        vocab=vocab,
        label_smoothing=args.label_smoothing,
        min_zoom=args.min_zoom,
        degrade_share=args.degrade,
        tight_share=args.tight,
        served_share=args.served_share if served is not None else 0.0,
        group_weight=args.group_weight,
        mean_weight=args.mean_weight,
        variance_weight=args.variance_weight,
        bf16=not args.no_bf16,
        pretrained=args.pretrained,
        weights=args.weights,
        device=args.device,
        workers=args.workers,
    )
    sample_weights = None
    if args.balance != "none":
        sample_weights = balancing_weights(samples, args.balance)
        low, high = sample_weights.min(), sample_weights.max()
        print(f"balanced by {args.balance}: weights {low:.2f}-{high:.2f}")
    learn = build_learner(
        images,
        buckets,
        valid_idx,
        config,
        arch,
        teacher=teacher,
        served=served,
        sample_weights=sample_weights,
    )
    if args.init is not None:
        load_matching_weights(learn, args.init)
    write_args(args)
    learn.path = args.run_dir
    learn.model_dir = "."
    start_epoch = 0
    state_file = args.run_dir / "progress.json"
    if args.resume and state_file.exists():
        start_epoch = json.loads(state_file.read_text())["epochs_done"]
        learn.load("last", with_opt=True)
        print(f"resuming after epoch {start_epoch}")

    started = time.time()
    logger = CSVLogger(fname="history.csv", append=True)
    if args.schedule == "one-cycle":
        learn.fit_one_cycle(
            args.epochs,
            args.lr,
            wd=args.wd,
            start_epoch=start_epoch,
            cbs=[logger, Checkpoint(state_file)],
        )
    else:  # every epoch its own short one-cycle, each peak lower: any checkpoint is usable
        for epoch in range(start_epoch, args.epochs):
            lr = args.lr * args.restart_decay**epoch
            learn.fit_one_cycle(1, lr, wd=args.wd, cbs=[logger, Checkpoint(state_file, epoch)])
    print(f"training took {time.time() - started:.0f} s")
    # Teacher targets, the age loss, Degrade and the served getter all need training code.
    if teacher is not None or args.targets == "ages" or config.degrades or served is not None:
        learn = plain_copy(learn, images, buckets, valid_idx, config, arch)
    export_learner(learn, args.out, name=f"{arch.__name__}-utkface-{args.size}px")
    print(f"exported {args.out}")


if __name__ == "__main__":
    main()
