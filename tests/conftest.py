"""Shared fixtures: a tiny but real exported fastai learner, the app and its test client."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import nn

from agegroup import create_app
from agegroup.buckets import BUCKETS
from agegroup.config import Settings

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


def synthetic_faces(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Coloured blobs on noise: enough for a learner to fit one batch, no real data needed."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, size=(count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        images[i, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = (i * 37) % 255
    return images


def export_tiny_learner(path: Path, vocab_ok: bool = True, ages: bool = False) -> Path:
    """Train a tiny learner on synthetic images for one epoch and export it like the real one:
    over the seven groups, or (``ages``) over ages 0-100 like the shipped model."""
    from agegroup.ages import AGE_CLASSES
    from agegroup.training.train import build_learner, export_learner, plain_copy

    images = synthetic_faces(2 * len(BUCKETS) + 2, TINY_SIZE)
    vocab = AGE_CLASSES if ages else BUCKETS
    labels = [(i * 13) % len(vocab) for i in range(len(images))]
    options = dict(size=TINY_SIZE, batch_size=8, arch=tiny_cnn, bf16=False, vocab=vocab)
    learn = build_learner(images, labels, valid_idx=[0, 1], **options)
    if not vocab_ok:
        from fastai.data.transforms import CategoryMap

        categorize = learn.dls.train_ds.tls[1].tfms.fs[-1]
        categorize.vocab = CategoryMap(list(reversed(BUCKETS)), sort=False)
    learn.fit(1, 1e-3)
    if ages:  # exported like train.py's age models: a plain copy with fastai's own loss
        learn = plain_copy(learn, images, labels, [0, 1], TINY_SIZE, 0.1, vocab, arch=tiny_cnn)
    return export_learner(learn, path, name="tiny-test-model", version="0.0.1")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    export_tiny_learner(folder / "export.pkl")
    return folder


@pytest.fixture(scope="session")
def settings(model_dir: Path) -> Settings:
    return Settings(model_path=model_dir / "export.pkl", model_dir=model_dir, max_upload_mb=1)


@pytest.fixture(scope="session")
def app(settings: Settings):
    app = create_app(settings)
    app.config["TESTING"] = True
    return app


@pytest.fixture()
def client(app):
    return app.test_client()


def image_bytes(image: Image.Image, fmt: str = "JPEG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


@pytest.fixture()
def face_jpeg() -> bytes:
    return image_bytes(Image.fromarray(synthetic_faces(1, 120, seed=3)[0]))
