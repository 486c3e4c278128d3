"""What the result page shows, checked number by number, and the API answer's shape.

A result travels in its own signed URL (``/result?r=...``, agegroup.links); the page is built
here from the numbers it carries, each checked again before it is shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from agegroup.buckets import BUCKETS
from agegroup.errors import BadLink
from agegroup.faces import MAX_FACES
from agegroup.links import DAMAGED_LINK

DECIMALS = 4


def shaped_json(result: dict[str, Any]) -> dict[str, Any]:
    """The API answer with every probability rounded to 4 decimals and listed in age order."""
    faces = []
    for face in result["faces"]:
        probabilities = {b: round(float(face["probabilities"][b]), DECIMALS) for b in BUCKETS}
        faces.append(
            {**face, "confidence": probabilities[face["bucket"]], "probabilities": probabilities}
        )
    return {**result, "faces": faces}


@dataclass(frozen=True)
class FaceView:
    """One face (or the whole-photo fallback) as the page shows it."""

    number: int
    probabilities: tuple[float, ...]
    box: tuple[int, int, int, int] | None
    face_found: bool
    low_resolution: bool
    age_estimate: float | None = None
    age_interval: tuple[float, float] | None = None

    @property
    def bucket_index(self) -> int:
        return max(range(len(BUCKETS)), key=lambda i: self.probabilities[i])

    @property
    def bucket(self) -> str:
        return BUCKETS[self.bucket_index]

    @property
    def confidence(self) -> float:
        return self.probabilities[self.bucket_index]

    @property
    def age_text(self) -> str | None:
        """'about 34, likely 28-41' when the model estimates years, else ``None``."""
        if self.age_estimate is None:
            return None
        text = f"about {self.age_estimate:.0f}"
        if self.age_interval is not None:
            low, high = self.age_interval
            text += f", likely {low:.0f}-{high:.0f}"
        return text


@dataclass(frozen=True)
class ResultView:
    """A whole result: what the template needs, built only from validated numbers."""

    width: int
    height: int
    faces: list[FaceView]
    model_name: str
    model_version: str
    elapsed_ms: float | None

    @property
    def face_found(self) -> bool:
        return any(face.face_found for face in self.faces)

    @property
    def summary(self) -> str:
        """'3 faces: 0-10, 31-40, 61+', or 'No face found'."""
        if not self.face_found:
            return "No face found"
        count = len(self.faces)
        groups = ", ".join(face.bucket for face in self.faces)
        return f"{count} face{'s' if count != 1 else ''}: {groups}"

    @property
    def low_resolution_numbers(self) -> list[int]:
        return [face.number for face in self.faces if face.low_resolution]

    @property
    def at_face_limit(self) -> bool:
        return len(self.faces) >= MAX_FACES

    def label_size(self) -> float:
        """Font size of the box labels in photo pixels (the script adapts it to the screen)."""
        return max(12.0, max(self.width, self.height) / 32)


def _number(value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("not a number")
    if not low <= value <= high:
        raise ValueError("out of range")
    return float(value)


def _face(number: int, face: dict[str, Any], width: int, height: int) -> FaceView:
    probabilities = tuple(_number(face["probabilities"][b], 0, 1) for b in BUCKETS)
    if abs(sum(probabilities) - 1) > 0.01:
        raise ValueError("probabilities do not sum to 1")
    box = None
    if face.get("box") is not None:
        x, y, w, h = (int(_number(v, 0, 10**6)) for v in face["box"])
        if w < 1 or h < 1 or x >= width or y >= height:
            raise ValueError("box outside the photo")
        box = (x, y, w, h)
    found = face.get("face_found") is True
    if found != (box is not None):
        raise ValueError("face_found and box disagree")
    estimate = interval = None
    age = face.get("age")
    if isinstance(age, dict) and age.get("estimate") is not None:
        estimate = _number(age["estimate"], 0, 150)
        if age.get("interval") is not None:
            low, high = (_number(v, 0, 150) for v in age["interval"])
            interval = (low, high)
    return FaceView(
        number=number,
        probabilities=probabilities,
        box=box,
        face_found=found,
        low_resolution=face.get("low_resolution") is True,
        age_estimate=estimate,
        age_interval=interval,
    )


def result_view(result: dict[str, Any]) -> ResultView:
    """Check an API-shaped result (possibly from a link) and build the page's view of it."""
    try:
        width = int(_number(result["image"]["width"], 1, 10**6))
        height = int(_number(result["image"]["height"], 1, 10**6))
        raw_faces = result["faces"]
        if not isinstance(raw_faces, list) or not 1 <= len(raw_faces) <= MAX_FACES:
            raise ValueError("wrong number of faces")
        faces = [_face(i, face, width, height) for i, face in enumerate(raw_faces, start=1)]
        if len(faces) > 1 and not all(face.face_found for face in faces):
            raise ValueError("a whole-photo guess comes alone")
        model = result.get("model") or {}
        name, version = str(model.get("name", ""))[:80], str(model.get("version", ""))[:40]
        elapsed = result.get("elapsed_ms")
        elapsed = None if elapsed is None else _number(elapsed, 0, 10**7)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BadLink(DAMAGED_LINK) from exc
    return ResultView(width, height, faces, name, version, elapsed)
