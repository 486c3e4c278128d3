"""How a learner is built, started and exported: the cached images, the training transforms,
the data blocks, the ResNet50 learner, its weights from an exported learner, and the export
that the app loads (``agegroup.training.train`` is the command around it).
"""

from __future__ import annotations

import importlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastai.callback.data  # noqa: F401  (adds DataBlock.weighted_dataloaders)
import numpy as np
import torch
from fastai.callback.progress import CSVLogger
from fastai.callback.tracker import SaveModelCallback
from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.transforms import IndexSplitter, Normalize
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat
from fastai.vision.augment import Resize, ResizeMethod, aug_transforms
from fastai.vision.core import PILImage
from fastai.vision.data import ImageBlock
from fastai.vision.learner import vision_learner
from fastai.vision.models import resnet50
from fasttransform import Transform

from agegroup.ages import AGE_CLASSES
from agegroup.buckets import BUCKETS
from agegroup.preprocess import IMAGENET_MEAN, IMAGENET_STD
from agegroup.training import data as utk
from agegroup.training.callbacks import Bf16Autocast
from agegroup.training.degrade import degrade, tight_framing
from agegroup.training.distill import Distillation
from agegroup.training.losses import AgeLoss, age_mae, bucket_accuracy, group_accuracy

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


def find_arch(name: str, known: dict[str, Callable[..., Any]]) -> Callable[..., Any]:
    """The network function that ``--arch`` names: one of ``known`` by its name, or any other as
    ``package.module:function`` (a function taking ``pretrained``, as torchvision's do)."""
    if name in known:
        return known[name]
    module, colon, function = name.partition(":")
    if not colon:
        raise SystemExit(f"--arch: {name!r} is neither {' nor '.join(known)} nor module:function")
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(f"--arch: cannot import {name!r}: {exc}") from exc


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
