"""Smoke test of the real training path: ResNet50, one epoch on synthetic images, export, load."""

from __future__ import annotations

import pickle

import numpy as np
import torch
from fastai.learner import load_learner
from PIL import Image

from agegroup.buckets import BUCKETS
from agegroup.predictor import FastaiPredictor
from agegroup.training.train import CachedImages, build_learner, export_learner

from conftest import synthetic_faces


def test_resnet50_trains_a_batch_and_exports_a_loadable_half_precision_learner(tmp_path):
    images = synthetic_faces(16, 32)
    buckets = [i % len(BUCKETS) for i in range(16)]
    learn = build_learner(images, buckets, valid_idx=[0, 1, 2, 3], size=32, batch_size=12)
    before = [p.detach().clone() for p in learn.model.parameters()]
    learn.fit(1, 1e-3)  # one training batch of 12 synthetic images
    assert any(not torch.equal(a, b) for a, b in zip(before, learn.model.parameters(), strict=True))

    path = export_learner(learn, tmp_path / "export.pkl", name="smoke", version="1")
    assert path.stat().st_size < 60_000_000  # fp16 weights: about half of fp32's ~100 MB

    loaded = load_learner(path, cpu=True)
    assert list(loaded.dls.vocab) == list(BUCKETS)
    assert next(loaded.model.parameters()).dtype == torch.float16
    bottlenecks = [m for m in loaded.model.modules() if type(m).__name__ == "Bottleneck"]
    assert len(bottlenecks) == 16  # ResNet50: 3 + 4 + 6 + 3 blocks

    predictor = FastaiPredictor(path, tmp_path)
    face = Image.fromarray(images[5])
    probabilities = predictor.predict([face, face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    assert probabilities.shape == (2, 7)
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert predictor.info.input_size == 32 and predictor.info.name == "smoke"


def test_the_image_cache_is_not_pickled_with_the_learner():
    getter = CachedImages(np.zeros((1000, 64, 64, 3), dtype=np.uint8))
    restored = pickle.loads(pickle.dumps(getter))
    assert restored.images is None
    image = Image.new("RGB", (8, 8))
    assert restored(image) is image  # at serving time items are images, passed through
