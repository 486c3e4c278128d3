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
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastai.callback.data  # noqa: F401  (adds DataBlock.weighted_dataloaders)
import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.progress import CSVLogger
from fastai.callback.tracker import SaveModelCallback
from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.transforms import IndexSplitter, Normalize
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat
from fastai.metrics import accuracy
from fastai.vision.augment import Resize, ResizeMethod, aug_transforms
from fastai.vision.core import PILImage
from fastai.vision.data import ImageBlock
from fastai.vision.learner import vision_learner
from fastai.vision.models import resnet50
from fasttransform import Transform

from agegroup.ages import AGE_CLASSES, GROUP_OF_AGE, MAX_AGE, clamp_age
from agegroup.buckets import BUCKETS
from agegroup.preprocess import IMAGENET_MEAN, IMAGENET_STD
from agegroup.training import data as utk
from agegroup.training.balance import BALANCE_CHOICES, balancing_weights
from agegroup.training.degrade import degrade, tight_framing
from agegroup.training.distill import Distillation, load_teacher_targets
from agegroup.training.served_crops import served_training_rows

SEED = 42


class CachedImages:
    """fastai ``get_x``: an integer item is a row of the decoded cache, anything else an image.

    With ``served`` (rows of the same images as the app's face cropper framed them, see
    ``agegroup.training.served_crops``) a share ``served_share`` of the items come from there.
    Neither array is pickled with the exported learner, so ``load_learner`` needs no data and
    ``learn.predict`` accepts PIL images, arrays and paths as usual.
    """

    def __init__(
        self, images: np.ndarray | None, served: np.ndarray | None = None, served_share: float = 0.0
    ) -> None:
        self.images = images
        self.served = served
        self.served_share = served_share

    def __call__(self, item: Any) -> Any:
        if isinstance(item, (int, np.integer)) and self.images is not None:
            source = self.images
            if self.served is not None and random.random() < self.served_share:
                source = self.served
            return PILImage.create(source[int(item)])
        return item

    def __getstate__(self) -> dict[str, Any]:
        return {"images": None, "served": None, "served_share": 0.0}


class CachedLabels:
    """fastai ``get_y``: a cache row's class name, ``vocab[labels[row]]`` (not pickled)."""

    def __init__(self, labels: list[int] | None, vocab: tuple[str, ...] = BUCKETS) -> None:
        self.labels = labels
        self.vocab = vocab

    def __call__(self, item: Any) -> str:
        if self.labels is None:
            raise ValueError("labels are only available while training")
        return self.vocab[self.labels[int(item)]]

    def __getstate__(self) -> dict[str, Any]:
        return {"labels": None, "vocab": self.vocab}


class Degrade(Transform):
    """Training-only item transform: a random share ``tight`` of images framed as the app crops
    a photo that ends close around the face, then a share ``p`` corrupted like uploads."""

    split_idx = 0
    order = 0  # before Resize

    def __init__(self, p: float, tight: float = 0.0) -> None:
        super().__init__()
        self.p = p
        self.tight = tight

    def encodes(self, image: PILImage) -> PILImage:
        rng = random._inst  # type: ignore[attr-defined]
        if random.random() < self.tight:
            image = PILImage.create(np.asarray(tight_framing(image, rng)))
        if random.random() >= self.p:
            return image
        return PILImage.create(np.asarray(degrade(image, rng)))


def bucket_accuracy(pred: torch.Tensor, target: torch.Tensor, *_: Any) -> torch.Tensor:
    """fastai's accuracy, ignoring the teacher's targets when the batch carries them."""
    return accuracy(pred, target)


def age_sigma(age: torch.Tensor) -> torch.Tensor:
    """The label distribution's width in years: apparent age varies more with age."""
    return 1.0 + 0.07 * age


class AgeLoss:
    """Label-distribution learning over ages, with the seven groups and an optional teacher.

    ``(1 - W) * (CE(Gaussian around the age, ages) + g * smoothed CE(group, groups)
    + m * mean loss + v * variance loss) + W * KL(teacher's groups || groups)``, where a
    group's log-probability is the log-sum-exp of its ages' log-probabilities. The mean and
    variance losses (Pan et al. 2018, in decades) pull the expected age onto the labelled one
    and keep the distribution from spreading toward the middle of the age range.
    """

    def __init__(
        self,
        group_weight: float = 1.0,
        label_smoothing: float = 0.1,
        distill_weight: float = 0.0,
        mean_weight: float = 0.0,
        variance_weight: float = 0.0,
    ) -> None:
        ages = torch.arange(MAX_AGE + 1, dtype=torch.float32)
        spread = age_sigma(ages)[:, None]
        table = torch.exp(-0.5 * ((ages[None, :] - ages[:, None]) / spread) ** 2)
        self.age_targets = table / table.sum(dim=1, keepdim=True)
        member = torch.from_numpy(GROUP_OF_AGE.T.astype(np.float32))  # (7, ages)
        self.group_mask = torch.where(member > 0, 0.0, float("-inf"))
        self.group_of_age = member.argmax(dim=0)
        self.group_weight = group_weight
        self.label_smoothing = label_smoothing
        self.distill_weight = distill_weight
        self.mean_weight = mean_weight
        self.variance_weight = variance_weight
        self.decades = ages / 10

    def _follow(self, device: torch.device) -> None:
        """Keep the constant tables on the predictions' device (CPU or GPU)."""
        if self.age_targets.device != device:
            self.age_targets = self.age_targets.to(device)
            self.group_mask = self.group_mask.to(device)
            self.group_of_age = self.group_of_age.to(device)
            self.decades = self.decades.to(device)

    def _log_probs(self, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ages' and the groups' log-probabilities of ``pred``."""
        self._follow(pred.device)
        log_probs = torch.log_softmax(pred.float(), dim=1)
        return log_probs, torch.logsumexp(log_probs[:, None, :] + self.group_mask, dim=2)

    def group_log_probs(self, pred: torch.Tensor) -> torch.Tensor:
        return self._log_probs(pred)[1]

    def __call__(
        self, pred: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor | None = None
    ) -> torch.Tensor:
        log_probs, groups = self._log_probs(pred)
        target = torch.as_tensor(target).long().view(-1)
        ldl = -(self.age_targets[target] * log_probs).sum(dim=1).mean()
        eps = self.label_smoothing
        true_group = groups.gather(1, self.group_of_age[target][:, None]).squeeze(1)
        group_ce = -((1 - eps) * true_group + eps * groups.mean(dim=1)).mean()
        hard = ldl + self.group_weight * group_ce
        if self.mean_weight or self.variance_weight:
            probs = log_probs.exp()
            mean = probs @ self.decades
            variance = (probs * (self.decades[None, :] - mean[:, None]) ** 2).sum(dim=1)
            mean_loss = 0.5 * ((mean - target.float() / 10) ** 2).mean()
            hard = hard + self.mean_weight * mean_loss + self.variance_weight * variance.mean()
        if teacher is None or self.distill_weight == 0:
            return hard
        teacher_log = teacher.float()
        kl = (teacher_log.exp() * (teacher_log - groups)).sum(dim=1).mean()
        return (1 - self.distill_weight) * hard + self.distill_weight * kl


def group_accuracy(pred: torch.Tensor, target: torch.Tensor, *_: Any) -> torch.Tensor:
    """Accuracy on the seven groups of an age model (groups are sums over ages)."""
    member = torch.from_numpy(GROUP_OF_AGE.astype(np.float32)).to(pred.device)
    predicted = (torch.softmax(pred.float(), dim=1) @ member).argmax(dim=1)
    truth = member.argmax(dim=1)[torch.as_tensor(target).long().view(-1)]
    return (predicted == truth).float().mean()


def age_mae(pred: torch.Tensor, target: torch.Tensor, *_: Any) -> torch.Tensor:
    """Mean absolute error in years of the expected age."""
    ages = torch.arange(MAX_AGE + 1, dtype=torch.float32, device=pred.device)
    expected = torch.softmax(pred.float(), dim=1) @ ages
    return (expected - torch.as_tensor(target).float().view(-1)).abs().mean()


class Bf16Autocast(Callback):
    """Run forward and loss under bf16 autocast on the model's device (CPU with AMX, or a
    GPU), with channels-last inputs."""

    order = 10

    def before_fit(self) -> None:
        self.learn.model.to(memory_format=torch.channels_last)
        self.device_type = next(self.learn.model.parameters()).device.type

    def before_batch(self) -> None:
        self.learn.xb = tuple(x.contiguous(memory_format=torch.channels_last) for x in self.xb)
        self.autocast = torch.autocast(self.device_type, dtype=torch.bfloat16)
        self.autocast.__enter__()

    def after_loss(self) -> None:
        self.autocast.__exit__(None, None, None)

    def after_cancel_batch(self) -> None:
        if torch.is_autocast_enabled(self.device_type):
            self.autocast.__exit__(None, None, None)


class Checkpoint(Callback):
    """After every epoch: save weights and optimiser as ``last``, and the epochs done so far
    (``--resume`` continues from there). ``offset``: epochs run before this ``fit`` call."""

    def __init__(self, state_file: Path, offset: int = 0) -> None:
        self.state_file = state_file
        self.offset = offset

    def after_epoch(self) -> None:
        self.learn.save("last", with_opt=True)
        done = self.offset + self.epoch + 1
        self.state_file.write_text(json.dumps({"epochs_done": done, "time": time.time()}))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class LearnerConfig:
    """How a learner is built: input size, classes, batch, loss and augmentation settings.

    ``vocab`` is ``BUCKETS`` (the seven groups) or ``AGE_CLASSES`` (ages 0-100, trained with
    ``AgeLoss``, whose group term ``group_weight`` weighs). ``min_zoom`` below 1 zooms out too:
    the app's face crops come from detector boxes that vary by about 10% in size and position
    around UTKFace's framing, so training sees faces slightly smaller and larger than UTKFace's
    own crops. ``degrade_share`` of the training images are corrupted like real uploads,
    ``tight_share`` framed like photos that end close around the face, and
    ``served_share`` of them are taken from ``served`` (the crops the app itself makes).
    ``weights`` is a local torchvision state_dict for the body; ``pretrained`` fastai's own
    (downloaded) ImageNet weights. ``device`` is where batches go (``cuda`` on a GPU machine,
    with ``workers`` processes preparing them).
    """

    size: int
    batch_size: int = 64
    vocab: tuple[str, ...] = BUCKETS
    label_smoothing: float = 0.1
    min_zoom: float = 0.9
    degrade_share: float = 0.0
    tight_share: float = 0.0
    served_share: float = 0.0
    group_weight: float = 1.0
    mean_weight: float = 0.0
    variance_weight: float = 0.0
    bf16: bool = True
    pretrained: bool = False
    weights: Path | None = None
    device: str = "cpu"
    workers: int = 0

    @property
    def degrades(self) -> bool:
        """Whether training images pass through ``Degrade`` (corrupted or framed tight)."""
        return self.degrade_share > 0 or self.tight_share > 0


def build_learner(
    images: np.ndarray,
    labels: list[int],
    valid_idx: list[int],
    config: LearnerConfig,
    arch: Callable[..., Any] = resnet50,
    teacher: Distillation | None = None,
    served: np.ndarray | None = None,
    sample_weights: np.ndarray | None = None,
) -> Learner:
    """A fastai learner (ResNet50 unless ``arch`` says otherwise) over cached uint8 images.

    ``labels`` are each image's class index in ``config.vocab``. ``sample_weights`` (one per
    image, e.g. ``balance.balancing_weights``) make training draw images in proportion to
    them, with replacement, instead of one pass in random order. With a ``teacher`` every batch
    also carries the teacher's predictions and the loss distils them
    (``agegroup.training.distill``); export such a learner through ``plain_copy`` so that the
    exported one predicts like any other.
    """
    ages = config.vocab == AGE_CLASSES
    blocks: list[Any] = [ImageBlock, CategoryBlock(vocab=list(config.vocab), sort=False)]
    getters: list[Any] = [
        CachedImages(images, served, config.served_share),
        CachedLabels(labels, config.vocab),
    ]
    if teacher is not None:
        blocks.append(TransformBlock())
        getters.append(teacher.getter())
    resize = Resize(config.size, method=ResizeMethod.Squish)
    block = DataBlock(
        blocks=blocks,
        get_items=lambda n: list(range(n)),
        getters=getters,
        n_inp=1,
        splitter=IndexSplitter(valid_idx),
        item_tfms=[Degrade(config.degrade_share, config.tight_share), resize]
        if config.degrades
        else resize,
        batch_tfms=[
            *aug_transforms(
                do_flip=True,
                flip_vert=False,
                max_rotate=10.0,
                min_zoom=config.min_zoom,
                max_zoom=1.1,
                max_lighting=0.3,
                max_warp=0.0,
                p_affine=0.75,
                p_lighting=0.75,
            ),
            Normalize.from_stats(IMAGENET_MEAN, IMAGENET_STD),
        ],
    )
    loader_options = {"bs": config.batch_size, "num_workers": config.workers}
    if sample_weights is None:
        dls = block.dataloaders(len(images), device=config.device, **loader_options)
    else:
        dls = block.weighted_dataloaders(
            len(images), sample_weights, device=config.device, **loader_options
        )
    if ages:
        distill_weight = teacher.weight if teacher is not None else 0.0
        loss: Any = AgeLoss(
            config.group_weight,
            config.label_smoothing,
            distill_weight,
            config.mean_weight,
            config.variance_weight,
        )
        metrics: list[Any] = [group_accuracy, age_mae]
    elif teacher is not None:
        loss, metrics = teacher.loss(config.label_smoothing), [bucket_accuracy]
    else:
        loss = LabelSmoothingCrossEntropyFlat(eps=config.label_smoothing)
        metrics = [bucket_accuracy]
    learn = vision_learner(
        dls,
        arch,
        pretrained=config.pretrained,
        loss_func=loss,
        metrics=metrics,
        cbs=[Bf16Autocast()] if config.bf16 else [],
    )
    if config.weights is not None:
        state = torch.load(config.weights, map_location="cpu", weights_only=True)
        missing, unexpected = learn.model[0].load_state_dict(
            {k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False
        )
        print(f"loaded {config.weights}: {len(missing)} missing, {len(unexpected)} unexpected keys")
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


def load_matching_weights(learn: Learner, exported: Path) -> None:
    """Start from an exported learner's weights; layers whose shape differs (a head over
    other classes) keep their fresh initialisation."""
    from fastai.learner import load_learner

    source = load_learner(exported, cpu=True).model.float().state_dict()
    target = learn.model.state_dict()
    kept = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    learn.model.load_state_dict(kept, strict=False)
    print(f"initialised from {exported}: {len(kept)} of {len(target)} tensors")


def plain_copy(
    learn: Learner,
    images: np.ndarray,
    labels: list[int],
    valid_idx: list[int],
    config: LearnerConfig,
    arch: Callable[..., Any] = resnet50,
) -> Learner:
    """A standard learner holding ``learn``'s weights: plain cross-entropy over the vocab, no
    teacher targets, no corruption, so the exported file needs nothing of training to load."""
    plain_config = LearnerConfig(
        config.size, vocab=config.vocab, label_smoothing=config.label_smoothing, bf16=False
    )
    plain = build_learner(images, labels, valid_idx, plain_config, arch=arch)
    if config.vocab != BUCKETS:
        plain.loss_func = CrossEntropyLossFlat()
        plain.metrics = []
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
    for cb in [
        cb for cb in learn.cbs if isinstance(cb, (Bf16Autocast, SaveModelCallback, CSVLogger))
    ]:
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
    add_common_arguments(parser, size=64, epochs=12, lr=3e-3)
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
        learn = plain_copy(learn, images, buckets, valid_idx, config)
    export_learner(learn, args.out, name=f"resnet50-utkface-{args.size}px")
    print(f"exported {args.out}")


if __name__ == "__main__":
    main()
