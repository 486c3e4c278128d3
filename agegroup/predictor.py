"""Face crops in, probabilities over the model's classes out (ages 0-100, or the seven groups).

One small interface with two implementations of the same exported learner:

* ``FastaiPredictor`` loads ``export.pkl`` with fastai's ``load_learner`` and runs the
  learner's own pipeline (the reference; about 1 GB resident with CUDA builds of torch).
* the lean twin (``agegroup.onnx_runtime``) runs an ONNX copy of the same network with onnxruntime,
  for hosts with 512 MB of memory; a test proves both give the same probabilities.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from agegroup.ages import AGE_CLASSES, AgeEstimate, estimate_ages, to_groups
from agegroup.buckets import BUCKETS
from agegroup.calibration import Calibration, load_calibration
from agegroup.errors import ModelUnavailable
from agegroup.preprocess import to_model_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    input_size: int
    # What the network's outputs are: ``AGE_CLASSES`` (an age model) or ``BUCKETS``.
    classes: tuple[str, ...] = BUCKETS


class Predictor(Protocol):
    """What the web layer needs from a model."""

    info: ModelInfo

    def predict(self, faces: Sequence[Image.Image]) -> np.ndarray:
        """Return an ``(n, len(info.classes))`` array of probabilities, one row per face."""
        ...


def mirrored(faces: Sequence[Image.Image]) -> list[Image.Image]:
    """The faces mirrored left to right (a face's age does not depend on its side)."""
    return [face.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for face in faces]


def predict_flip_averaged(predictor: Predictor, faces: Sequence[Image.Image]) -> np.ndarray:
    """What the app serves: each face's probabilities averaged with its mirror image's.

    One batch of twice the faces. On the test split this adds 0.4 points of accuracy and makes
    the answer the same for a photo and its mirror image (``model/metrics.json``,
    ``flip_average``).
    """
    if not faces:
        return np.zeros((0, len(predictor.info.classes)))
    both = predictor.predict([*faces, *mirrored(faces)])
    return (both[: len(faces)] + both[len(faces) :]) / 2


def predict_groups(
    predictor: Predictor, faces: Sequence[Image.Image]
) -> tuple[np.ndarray, list[AgeEstimate | None]]:
    """What the app serves for each face: flip-averaged group probabilities ``(n, 7)`` and
    its estimated age (``None`` each for a group model, which has none)."""
    classes = predictor.info.classes
    probabilities = predict_flip_averaged(predictor, faces)
    ages = estimate_ages(probabilities, classes)
    return to_groups(probabilities, classes), list(ages) if ages else [None] * len(faces)


def check_model_path(path: Path, model_dir: Path) -> Path:
    """Resolve ``path`` and refuse it unless it lies inside ``model_dir`` and exists.

    A model file is a pickle, and unpickling runs code: only trusted files in the configured
    folder are ever loaded.
    """
    resolved = path.resolve()
    folder = model_dir.resolve()
    if not resolved.is_relative_to(folder):
        raise ModelUnavailable(
            "Refusing to load a model from outside the configured model folder (AGE_MODEL_DIR)."
        )
    if not resolved.is_file():
        raise ModelUnavailable(
            "No model is installed yet. Train one with `python -m agegroup.training.train` "
            f"(see docs/training.md#export) so that {path.name} exists in the model folder."
        )
    return resolved


def check_vocab(vocab: Sequence[str]) -> tuple[str, ...]:
    """The model must predict ages 0-100 or exactly the seven groups, in age order."""
    classes = tuple(str(v) for v in vocab)
    if classes not in (AGE_CLASSES, BUCKETS):
        shown = list(classes) if len(classes) <= 12 else [*classes[:10], "..."]
        raise ModelUnavailable(
            f"The model's classes {shown} are neither the ages 0-100 nor the seven age groups "
            f"{list(BUCKETS)}."
        )
    return classes


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def probabilities_of(logits: np.ndarray, calibration: Calibration | None) -> np.ndarray:
    """The served probabilities of the network's logits: calibrated, if the model has a file."""
    return softmax(calibration.adjust(logits) if calibration is not None else logits)


class FastaiPredictor:
    """The exported fastai learner, loaded once and run on the CPU."""

    def __init__(
        self, path: Path, model_dir: Path, threads: int = 0, calibrated: bool = True
    ) -> None:
        resolved = check_model_path(path, model_dir)
        import torch
        from fastai.learner import load_learner
        from fastai.vision.augment import Resize

        if threads:
            torch.set_num_threads(threads)
        try:
            learn = load_learner(resolved, cpu=True)
        except Exception as exc:
            log.error("loading %s failed: %r", path, exc)
            raise ModelUnavailable(
                f"The model file {path.name} could not be loaded (see the server log)."
            ) from exc
        if not hasattr(learn, "dls") or not hasattr(learn, "model"):
            raise ModelUnavailable(f"The model file {path.name} is not a fastai learner.")
        classes = check_vocab(learn.dls.vocab)
        learn.model.float().eval()  # shipped weights may be stored in half precision
        sizes = [t.size for t in learn.dls.after_item.fs if isinstance(t, Resize)]
        if not sizes:
            raise ModelUnavailable(
                f"The model file {path.name} has no Resize step, so its input size is unknown."
            )
        if not hasattr(learn, "agegroup_version"):
            raise ModelUnavailable(
                f"The model file {path.name} carries no version; export it with "
                "agegroup.training.train.export_learner."
            )
        self.learn = learn
        self._torch = torch
        self.calibration = (
            load_calibration(resolved, lambda: file_sha256(resolved), len(classes))
            if calibrated
            else None
        )
        self.info = ModelInfo(
            name=str(getattr(learn, "agegroup_name", resolved.stem)),
            version=str(learn.agegroup_version),
            input_size=int(sizes[0][0]),
            classes=classes,
        )

    def predict(self, faces: Sequence[Image.Image]) -> np.ndarray:
        """Run the learner's own transforms and network on a batch of faces."""
        prepared = [to_model_input(face, self.info.input_size) for face in faces]
        dl = self.learn.dls.test_dl(prepared, bs=max(1, len(prepared)))
        (batch,) = dl.one_batch()[:1]
        with self._torch.inference_mode():
            logits = self.learn.model(batch.as_subclass(self._torch.Tensor))
        return probabilities_of(logits.float().numpy().astype(np.float64), self.calibration)
