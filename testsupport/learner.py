"""A tiny but real exported fastai learner, trained in seconds on synthetic faces.

Its pickle names ``testsupport.learner.tiny_cnn``: a process that loads it (a gunicorn started
from the repository root) imports this module, so it must stay importable from there.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from agegroup.buckets import BUCKETS
from testsupport.images import synthetic_faces

TINY_SIZE = 32


def tiny_cnn(pretrained: bool = False) -> nn.Module:
    """A few-kilobyte CNN with a pooling layer, so fastai's ``vision_learner`` can cut it."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def export_tiny_learner(path: Path, vocab_ok: bool = True, ages: bool = False) -> Path:
    """Train a tiny learner on synthetic images for one epoch and export it like the real one:
    over the seven groups, or (``ages``) over ages 0-100 like the shipped model."""
    from agegroup.ages import AGE_CLASSES
    from agegroup.training.learner import LearnerConfig, build_learner, export_learner, plain_copy

    images = synthetic_faces(2 * len(BUCKETS) + 2, TINY_SIZE)
    vocab = AGE_CLASSES if ages else BUCKETS
    labels = [(i * 13) % len(vocab) for i in range(len(images))]
    config = LearnerConfig(TINY_SIZE, batch_size=8, vocab=vocab, bf16=False)
    learn = build_learner(images, labels, [0, 1], config, arch=tiny_cnn)
    if not vocab_ok:
        from fastai.data.transforms import CategoryMap

        categorize = learn.dls.train_ds.tls[1].tfms.fs[-1]
        categorize.vocab = CategoryMap(list(reversed(BUCKETS)), sort=False)
    learn.fit(1, 1e-3)
    if ages:  # exported like train.py's age models: a plain copy with fastai's own loss
        learn = plain_copy(learn, images, labels, [0, 1], config, arch=tiny_cnn)
    return export_learner(learn, path, name="tiny-test-model", version="0.0.1")
