"""One photo in, one result per face out: the model-facing core of a request, free of HTTP."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agegroup.ages import AgeEstimate
from agegroup.boxes import MIN_FACE_PX
from agegroup.buckets import BUCKETS
from agegroup.crops import crop_face, whole_photo_as_face
from agegroup.faces import MAX_FACES, FaceDetector, get_detector, select_faces
from agegroup.images import DecodedImage
from agegroup.predictor import ModelInfo, Predictor, predict_groups

NO_FACE_WARNING = (
    "No face was found in this photo, so the result is for the whole photo, read as one face "
    "that fills it."
)


@dataclass(frozen=True)
class FaceResult:
    """The prediction for one face; ``box`` is ``[x, y, w, h]`` in original pixels or ``None``.

    ``face_found`` is false for the whole-photo fallback; ``low_resolution`` marks a face too
    small for the model to judge well; ``age`` is the estimate in years of an age model.
    """

    probabilities: tuple[float, ...]
    box: tuple[int, int, int, int] | None = None
    face_found: bool = False
    low_resolution: bool = False
    age: AgeEstimate | None = None

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
        result: dict[str, Any] = {
            "box": list(self.box) if self.box is not None else None,
            "face_found": self.face_found,
            "low_resolution": self.low_resolution,
            "bucket": self.bucket,
            "confidence": round(self.confidence, 6),
            "probabilities": {
                b: float(p) for b, p in zip(BUCKETS, self.probabilities, strict=True)
            },
        }
        if self.age is not None:
            result["age"] = self.age.to_json()
        return result


@dataclass(frozen=True)
class Analysis:
    width: int
    height: int
    faces: list[FaceResult]
    elapsed_ms: float
    warnings: list[str] = field(default_factory=list)

    @property
    def face_found(self) -> bool:
        return any(face.face_found for face in self.faces)

    def to_json(self, model: ModelInfo) -> dict[str, Any]:
        return {
            "model": {"name": model.name, "version": model.version},
            "image": {"width": self.width, "height": self.height},
            "faces": [face.to_json() for face in self.faces],
            "warnings": list(self.warnings),
            "elapsed_ms": round(self.elapsed_ms, 1),
        }


def _normalised(row: np.ndarray) -> tuple[float, ...]:
    """Probabilities as plain floats that sum to 1 (float64 rounding removed)."""
    row = np.asarray(row, dtype=np.float64)
    return tuple(float(p) for p in row / row.sum())


def _warnings(found: int, kept: list[FaceResult]) -> list[str]:
    messages = []
    if found > len(kept):
        messages.append(
            f"{found} faces were found; only the {len(kept)} largest are shown (at most "
            f"{MAX_FACES})."
        )
    small = [str(i) for i, face in enumerate(kept, start=1) if face.low_resolution]
    if small:
        which = "Face " + small[0] if len(small) == 1 else "Faces " + ", ".join(small)
        messages.append(f"{which}: smaller than {MIN_FACE_PX} pixels, too small to judge reliably.")
    return messages


def analyze(
    decoded: DecodedImage,
    predictor: Predictor,
    started: float | None = None,
    detector: FaceDetector | None = None,
) -> Analysis:
    """Find the faces, crop each like the training data, and predict them in one batch.

    Each face is predicted as it is and mirrored, and the two are averaged.

    Without a face, the whole photo is predicted as a face that fills it
    (``whole_photo_as_face``) and a warning says so. ``started`` is a ``time.perf_counter()``
    value, so the reported time can include decoding; ``detector`` defaults to the process-wide one.
    """
    started = time.perf_counter() if started is None else started
    image = decoded.image
    boxes = (detector or get_detector()).detect(image)
    chosen = select_faces(boxes)
    if not chosen:
        probabilities, ages = predict_groups(predictor, [whole_photo_as_face(image)])
        faces = [FaceResult(probabilities=_normalised(probabilities[0]), age=ages[0])]
        elapsed = (time.perf_counter() - started) * 1000
        return Analysis(decoded.width, decoded.height, faces, elapsed, [NO_FACE_WARNING])
    probabilities, ages = predict_groups(predictor, [crop_face(image, box) for box in chosen])
    faces = [
        FaceResult(
            probabilities=_normalised(row),
            box=box.clipped(image.width, image.height).scaled(decoded.scale),
            face_found=True,
            low_resolution=box.low_resolution,
            age=age,
        )
        for box, row, age in zip(chosen, probabilities, ages, strict=True)
    ]
    elapsed = (time.perf_counter() - started) * 1000
    return Analysis(decoded.width, decoded.height, faces, elapsed, _warnings(len(boxes), faces))
