"""Train the ResNet50 age-group learner and export it for the web app.

    python -m agegroup.training.train --size 64 --epochs 12 --out model/export.pkl

The images are decoded once into a uint8 cache (see ``data.build_cache``); every epoch then
only augments tensors. On CPUs with AMX/AVX512-BF16 the forward and backward passes run under
bf16 autocast (``--bf16``, default on) with channels-last tensors. A checkpoint is written after
every epoch under ``--run-dir``; ``--resume`` continues an interrupted run from the last one.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.progress import CSVLogger
from fastai.callback.tracker import SaveModelCallback
from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.transforms import IndexSplitter, Normalize
from fastai.learner import Learner
from fastai.losses import LabelSmoothingCrossEntropyFlat
from fastai.metrics import accuracy
from fastai.vision.augment import Resize, ResizeMethod, aug_transforms
from fastai.vision.core import PILImage
from fastai.vision.data import ImageBlock
from fastai.vision.learner import vision_learner
from fastai.vision.models import resnet50

from agegroup.buckets import BUCKETS
from agegroup.preprocess import IMAGENET_MEAN, IMAGENET_STD
from agegroup.training import data as utk

SEED = 42


class CachedImages:
    """fastai ``get_x``: an integer item is a row of the decoded cache, anything else an image.

    The cache is not pickled with the exported learner, so ``load_learner`` needs no data and
    ``learn.predict`` accepts PIL images, arrays and paths as usual.
    """

    def __init__(self, images: np.ndarray | None) -> None:
        self.images = images

    def __call__(self, item: Any) -> Any:
        if isinstance(item, (int, np.integer)) and self.images is not None:
            return PILImage.create(self.images[int(item)])
        return item

    def __getstate__(self) -> dict[str, Any]:
        return {"images": None}


class CachedLabels:
    """fastai ``get_y``: the bucket label of a cache row (not pickled with the learner)."""

    def __init__(self, buckets: list[int] | None) -> None:
        self.buckets = buckets

    def __call__(self, item: Any) -> str:
        if self.buckets is None:
            raise ValueError("labels are only available while training")
        return BUCKETS[self.buckets[int(item)]]

    def __getstate__(self) -> dict[str, Any]:
        return {"buckets": None}


class TeacherTargets:
    """fastai getter for the soft targets: a cache row's teacher log-probabilities."""

    def __init__(self, log_probs: np.ndarray) -> None:
        self.log_probs = log_probs

    def __call__(self, item: Any) -> torch.Tensor:
        return torch.from_numpy(self.log_probs[int(item)])


class DistillationLoss:
    """Label-smoothed cross-entropy on the true group, mixed with the KL divergence to a
    teacher's tempered probabilities (Hinton et al. 2015) when the batch carries them."""

    def __init__(self, label_smoothing: float, weight: float, temperature: float) -> None:
        self.hard = LabelSmoothingCrossEntropyFlat(eps=label_smoothing)
        self.weight = weight
        self.temperature = temperature

    def __call__(
        self, pred: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor | None = None
    ) -> torch.Tensor:
        hard = self.hard(pred, target)
        if teacher is None or self.weight == 0:
            return hard
        t = self.temperature
        soft_teacher = torch.softmax(teacher.float() / t, dim=1)
        soft = torch.nn.functional.kl_div(
            torch.log_softmax(pred.float() / t, dim=1), soft_teacher, reduction="batchmean"
        )
        return (1 - self.weight) * hard + self.weight * t * t * soft


def bucket_accuracy(pred: torch.Tensor, target: torch.Tensor, *_: Any) -> torch.Tensor:
    """fastai's accuracy, ignoring the teacher's targets when the batch carries them."""
    return accuracy(pred, target)


class CpuBf16(Callback):
    """Run forward and loss under bf16 autocast on the CPU, with channels-last inputs."""

    order = 10

    def before_fit(self) -> None:
        self.learn.model.to(memory_format=torch.channels_last)

    def before_batch(self) -> None:
        self.learn.xb = tuple(x.contiguous(memory_format=torch.channels_last) for x in self.xb)
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        self.autocast.__enter__()

    def after_loss(self) -> None:
        self.autocast.__exit__(None, None, None)

    def after_cancel_batch(self) -> None:
        if torch.is_autocast_cpu_enabled():
            self.autocast.__exit__(None, None, None)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_learner(
    images: np.ndarray,
    buckets: list[int],
    valid_idx: list[int],
    size: int,
    batch_size: int = 64,
    weights: str | Path | None = None,
    pretrained: bool = False,
    label_smoothing: float = 0.1,
    bf16: bool = True,
    arch: Callable[..., Any] = resnet50,
    min_zoom: float = 0.9,
    teacher_log_probs: np.ndarray | None = None,
    distill_weight: float = 0.5,
    temperature: float = 2.0,
) -> Learner:
    """A fastai learner (ResNet50 unless ``arch`` says otherwise) over cached uint8 images.

    With ``teacher_log_probs`` (one row per image) every batch also carries the teacher's
    predictions, and the loss distils them (``DistillationLoss``). Export such a learner through
    ``plain_copy`` so that the exported one predicts like any other.

    The random zoom reaches below 1 (``min_zoom``) as well as above: the app's face crops come
    from detector boxes that vary by about 10% in size and position around UTKFace's framing,
    so training sees faces slightly smaller and larger than UTKFace's own crops.
    """
    blocks: list[Any] = [ImageBlock, CategoryBlock(vocab=list(BUCKETS))]
    getters: list[Any] = [CachedImages(images), CachedLabels(buckets)]
    if teacher_log_probs is not None:
        blocks.append(TransformBlock())
        getters.append(TeacherTargets(teacher_log_probs.astype(np.float32)))
    block = DataBlock(
        blocks=blocks,
        get_items=lambda n: list(range(n)),
        getters=getters,
        n_inp=1,
        splitter=IndexSplitter(valid_idx),
        item_tfms=Resize(size, method=ResizeMethod.Squish),
        batch_tfms=[
            *aug_transforms(
                do_flip=True,
                flip_vert=False,
                max_rotate=10.0,
                min_zoom=min_zoom,
                max_zoom=1.1,
                max_lighting=0.3,
                max_warp=0.0,
                p_affine=0.75,
                p_lighting=0.75,
            ),
            Normalize.from_stats(IMAGENET_MEAN, IMAGENET_STD),
        ],
    )
    dls = block.dataloaders(len(images), bs=batch_size, num_workers=0, device="cpu")
    learn = vision_learner(
        dls,
        arch,
        pretrained=pretrained,
        loss_func=DistillationLoss(label_smoothing, distill_weight, temperature)
        if teacher_log_probs is not None
        else LabelSmoothingCrossEntropyFlat(eps=label_smoothing),
        metrics=bucket_accuracy,
        cbs=[CpuBf16()] if bf16 else [],
    )
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        missing, unexpected = learn.model[0].load_state_dict(
            {k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False
        )
        print(f"loaded {weights}: {len(missing)} missing, {len(unexpected)} unexpected keys")
    return learn


def training_split(
    data_dir: Path, size: int, cache_dir: Path, valid_fraction: float = 0.1
) -> tuple[np.ndarray, list[utk.Sample], list[int]]:
    """The cached images of the training split, their samples, and the validation rows.

    Validation comes out of the training split, by duplicate group, with the same kind of hash
    rule as the test split; the test split is never loaded.
    """
    by_name = {s.name: s for s in utk.list_samples(data_dir)}
    images, names = utk.load_cache(utk.build_cache(data_dir, size, cache_dir))
    keep = [i for i, name in enumerate(names) if name in by_name and not by_name[name].is_test]
    samples = [by_name[names[i]] for i in keep]
    valid_idx = [
        i
        for i, s in enumerate(samples)
        if utk.per_mille("valid:" + s.group) < int(valid_fraction * 1000)
    ]
    return images[keep], samples, valid_idx


def load_teacher_targets(path: Path, names: list[str]) -> np.ndarray:
    """The teacher's log-probabilities for ``names``, in that order (all must be present)."""
    with np.load(path) as saved:
        row_of = {str(n): i for i, n in enumerate(saved["names"])}
        missing = [n for n in names if n not in row_of]
        if missing:
            raise ValueError(f"{path} has no teacher targets for {len(missing)} images")
        return saved["log_probs"][[row_of[n] for n in names]]


def plain_copy(
    learn: Learner,
    images: np.ndarray,
    buckets: list[int],
    valid_idx: list[int],
    size: int,
    label_smoothing: float,
) -> Learner:
    """A standard learner (no teacher targets in its data) holding ``learn``'s weights."""
    plain = build_learner(
        images, buckets, valid_idx, size, label_smoothing=label_smoothing, bf16=False
    )
    plain.model.load_state_dict(learn.model.float().state_dict())
    return plain


def export_learner(
    learn: Learner, path: Path, name: str, version: str | None = None, half: bool = True
) -> Path:
    """Export for ``load_learner``: no callbacks needing training code, fp16 weights if asked.

    The app converts the weights back to float32 at load time and shows ``name``/``version``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    learn.agegroup_name = name
    learn.agegroup_version = version or time.strftime("%Y.%m.%d", time.gmtime())
    for cb in [cb for cb in learn.cbs if isinstance(cb, (CpuBf16, SaveModelCallback, CSVLogger))]:
        learn.remove_cb(cb)
    learn.model.to(memory_format=torch.contiguous_format)
    if half:
        learn.model.half()
    learn.export(path.resolve())
    learn.model.float()
    return path


def add_common_arguments(
    parser: argparse.ArgumentParser, size: int, epochs: int, lr: float
) -> None:
    """Data, schedule and augmentation options shared by this trainer and the teacher's."""
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(parser, size=64, epochs=12, lr=3e-3)
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
        help="soft targets to distil (an .npz from agegroup.training.teacher)",
    )
    parser.add_argument("--distill-weight", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/resnet50"))
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--out", type=Path, default=Path("model/export.pkl"))
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    images, samples, valid_idx = training_split(
        args.data, args.size, args.cache, args.valid_fraction
    )
    buckets = [s.bucket for s in samples]
    print(f"train {len(images) - len(valid_idx)}  valid {len(valid_idx)}  size {args.size}")
    teacher = None
    if args.teacher is not None:
        teacher = load_teacher_targets(args.teacher, [s.name for s in samples])
        print(f"distilling {args.teacher} (weight {args.distill_weight}, T={args.temperature})")
    learn = build_learner(
        images,
        buckets,
        valid_idx,
        args.size,
        args.bs,
        weights=args.weights,
        pretrained=args.pretrained,
        label_smoothing=args.label_smoothing,
        bf16=not args.no_bf16,
        min_zoom=args.min_zoom,
        teacher_log_probs=teacher,
        distill_weight=args.distill_weight,
        temperature=args.temperature,
    )
    if args.init is not None:
        from fastai.learner import load_learner

        source = load_learner(args.init, cpu=True)
        learn.model.load_state_dict(source.model.float().state_dict())
        print(f"initialised from {args.init}")
    args.run_dir.mkdir(parents=True, exist_ok=True)
    learn.path = args.run_dir
    learn.model_dir = "."
    start_epoch = 0
    state_file = args.run_dir / "progress.json"
    if args.resume and state_file.exists():
        start_epoch = json.loads(state_file.read_text())["epochs_done"]
        learn.load("last", with_opt=True)
        print(f"resuming after epoch {start_epoch}")

    class Progress(Callback):
        def after_epoch(self) -> None:
            learn.save("last", with_opt=True)
            state_file.write_text(json.dumps({"epochs_done": self.epoch + 1, "time": time.time()}))

    started = time.time()
    learn.fit_one_cycle(
        args.epochs,
        args.lr,
        wd=args.wd,
        start_epoch=start_epoch,
        cbs=[CSVLogger(fname="history.csv", append=True), Progress()],
    )
    print(f"training took {time.time() - started:.0f} s")
    if teacher is not None:
        learn = plain_copy(learn, images, buckets, valid_idx, args.size, args.label_smoothing)
    export_learner(learn, args.out, name=f"resnet50-utkface-{args.size}px")
    print(f"exported {args.out}")


if __name__ == "__main__":
    main()
