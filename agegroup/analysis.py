"""One photo in, one result per face out: the model-facing core of a request, free of HTTP."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agegroup.buckets import BUCKETS
from agegroup.images import DecodedImage
from agegroup.predictor import ModelInfo, Predictor


@dataclass(frozen=True)
class FaceResult:
    """The prediction for one face; ``box`` is ``[x, y, w, h]`` in original pixels or ``None``."""

    probabilities: tuple[float, ...]
    box: tuple[int, int, int, int] | None = None

    @property
    def bucket_index(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def bucket(self) -> str:
        return BUCKETS[self.bucket_index]

    @property
    def confidence(self) -> float:
        return float(self.probabilities[self.bucket_index])

    def to_json(self) -> dict[str, Any]:
        return {
            "box": list(self.box) if self.box is not None else None,
            "bucket": self.bucket,
            "confidence": round(self.confidence, 6),
            "probabilities": {b: float(p) for b, p in zip(BUCKETS, self.probabilities)},
        }


@dataclass(frozen=True)
class Analysis:
    width: int
    height: int
    faces: list[FaceResult]
    elapsed_ms: float
    warnings: list[str] = field(default_factory=list)

    def to_json(self, model: ModelInfo) -> dict[str, Any]:
        return {
            "model": {"name": model.name, "version": model.version},
            "image": {"width": self.width, "height": self.height},
            "faces": [face.to_json() for face in self.faces],
            "elapsed_ms": round(self.elapsed_ms, 1),
        }


def _normalised(row: np.ndarray) -> tuple[float, ...]:
    """Probabilities as plain floats that sum to 1 (float64 rounding removed)."""
    row = np.asarray(row, dtype=np.float64)
    return tuple(float(p) for p in row / row.sum())


def analyze(decoded: DecodedImage, predictor: Predictor, started: float | None = None) -> Analysis:
    """Predict the age group of the photo (the whole image until face detection exists).

    ``started`` is a ``time.perf_counter()`` value, so the reported time can include decoding.
    """
    started = time.perf_counter() if started is None else started
    probabilities = predictor.predict([decoded.image])
    faces = [FaceResult(probabilities=_normalised(probabilities[0]), box=None)]
    elapsed = (time.perf_counter() - started) * 1000
    return Analysis(decoded.width, decoded.height, faces, elapsed)
