"""Find the faces in a photo and crop each one the way UTKFace's faces were cropped.

Serving crops every detected face with ``crop_face`` and the model sees it exactly as it saw
its training images (square, 200 x 200, face framed like UTKFace), so a holiday photo or a
group picture gets the same framing as the aligned crops the model learned from.

Why dlib's HOG detector (``dlib-bin``): its weights are compiled into the package, it runs
offline on one CPU core, and a process holding it and a 1600 x 1200 photo peaks at about
110 MB. Measured with ``scripts/measure_faces.py --compare`` on 200 UTKFace test faces pasted
into 800 x 600 cluttered backgrounds at 48, 80, 140 and 240 px:

=================================  ======  ===============
detector                           recall  false positives
=================================  ======  ===============
dlib HOG (this module)              0.93          1
OpenCV Haar ``frontalface_default`` 0.93         89
OpenCV Haar ``frontalface_alt2``    0.945        35
=================================  ======  ===============

Alone on the machine, HOG takes about 300 ms on a 1600 x 1200 photo; the cascades were no
faster in our runs (both were measured while a training run held the 2 CPU cores).

The cascades find as many faces but invent 35-90 more (a ghost box on a group photo is worse
than a missed face). dlib's 5-point landmarks would need a separate 100 MB download
(``face-recognition-models``), so faces are not rotated in-plane: the HOG detector only finds
faces within about 15 degrees of upright, which is what UTKFace's aligned crops show anyway.

Framing: on 385 UTKFace training crops (200 x 200) the HOG box is centred on the crop and its
side is 0.90 of the crop's side (its sizes come in pyramid steps, so any one box may be 10%
off). ``crop_face`` inverts that: a square of ``box side / 0.90`` around the box's centre.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from agegroup.preprocess import RESAMPLE

# UTKFace crops are 200 x 200; crops are made at that size so that training and serving
# shrink them to the model's input in the same way.
CROP_SIZE = 200
# HOG box side / UTKFace crop side, and the box centre's offset in crop sides (measured above).
BOX_TO_CROP = 0.90
CENTRE_OFFSET = (0.0, 0.0)
# The detector's window is 80 px: photos are resized so their longest side is this long,
# so a face is found when it is at least 5% of the photo's longest side.
DETECT_SIDE = 1600
# Small photos are enlarged at most this much: more only invents faces of a few pixels.
MAX_UPSCALE = 4.0
# Boxes under MIN_FACE_PX found in enlarged photos are often clutter: they need a surer score
# (real 24 px faces score 0.4-1.1 on test photos; clutter 0.0-0.2).
SMALL_FACE_MIN_SCORE = 0.3
# Faces smaller than this (in the pixels we crop from) carry too little detail to judge.
MIN_FACE_PX = 32
MAX_FACES = 20


@dataclass(frozen=True)
class FaceBox:
    """A detected face: ``x, y, w, h`` in the pixels of the image it was found in."""

    x: int
    y: int
    w: int
    h: int
    score: float = 0.0

    @property
    def area(self) -> int:
        return self.w * self.h

    @property
    def low_resolution(self) -> bool:
        return min(self.w, self.h) < MIN_FACE_PX

    def clipped(self, width: int, height: int) -> FaceBox:
        """The part of the box inside a ``width`` x ``height`` image."""
        x0, y0 = max(0, self.x), max(0, self.y)
        x1, y1 = min(width, self.x + self.w), min(height, self.y + self.h)
        return FaceBox(x0, y0, max(0, x1 - x0), max(0, y1 - y0), self.score)

    def scaled(self, factor: float) -> tuple[int, int, int, int]:
        """``(x, y, w, h)`` multiplied by ``factor`` and rounded (e.g. to original pixels)."""
        return tuple(round(v * factor) for v in (self.x, self.y, self.w, self.h))  # type: ignore[return-value]


class FaceDetector:
    """dlib's frontal-face HOG detector, made once per process (see ``get_detector``)."""

    def __init__(self, detect_side: int = DETECT_SIDE) -> None:
        import dlib

        self._detector: Any = dlib.get_frontal_face_detector()
        self._detect_side = detect_side
        # The dlib object is shared by the server's threads; one detection at a time.
        self._lock = threading.Lock()

    def detect(self, image: Image.Image) -> list[FaceBox]:
        """All faces in ``image`` (any size), boxes in its own pixels, best score first."""
        factor = min(self._detect_side / max(image.size), MAX_UPSCALE)
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        work = rgb.resize(size, RESAMPLE, reducing_gap=2.0)
        with self._lock:
            rects, scores, _ = self._detector.run(np.asarray(work), 0, 0.0)
        boxes = [
            FaceBox(
                round(r.left() / factor),
                round(r.top() / factor),
                round(r.width() / factor),
                round(r.height() / factor),
                float(s),
            )
            for r, s in zip(rects, scores, strict=True)
        ]
        kept = [b for b in boxes if not b.low_resolution or b.score >= SMALL_FACE_MIN_SCORE]
        return sorted(kept, key=lambda b: -b.score)


@lru_cache(maxsize=1)
def get_detector() -> FaceDetector:
    """The process-wide detector, created on first use."""
    return FaceDetector()


def select_faces(boxes: list[FaceBox], limit: int = MAX_FACES) -> list[FaceBox]:
    """The ``limit`` largest faces, ordered left to right (then top to bottom)."""
    largest = sorted(boxes, key=lambda b: (-b.area, b.x, b.y))[:limit]
    return sorted(largest, key=lambda b: (b.x, b.y))


def crop_region(box: FaceBox) -> tuple[float, float, float, float]:
    """The square ``(left, top, right, bottom)`` that UTKFace would have cropped around ``box``."""
    side = max(box.w, box.h) / BOX_TO_CROP
    cx = box.x + box.w / 2 - CENTRE_OFFSET[0] * side
    cy = box.y + box.h / 2 - CENTRE_OFFSET[1] * side
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def crop_face(image: Image.Image, box: FaceBox, size: int = CROP_SIZE) -> Image.Image:
    """Crop the face in ``box`` framed like a UTKFace image, as a ``size`` x ``size`` RGB picture.

    Parts of the square that fall outside the photo are black, as in UTKFace's own crops of
    faces near an edge.
    """
    left, top, right, bottom = (round(v) for v in crop_region(box))
    # Crop first: convert("RGB") copies even an RGB image, and the photo may be 1600 px wide.
    square = image.crop((left, top, right, bottom))
    if square.mode != "RGB":
        square = square.convert("RGB")
    return square.resize((size, size), RESAMPLE, reducing_gap=3.0)
