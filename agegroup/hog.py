"""dlib's HOG face detector, and the photos it is asked to search: the colourless ones.

BlazeFace and MTCNN learned from colour photos and score faces in a photo without colour much
lower; HOG reads only gradients and is not affected. So a photo whose colours are all one tint
(``is_colourless``: grey, sepia, a yellowed scan) is searched by HOG too
(docs/detection.md#grey-and-sepia-photos). HOG alone is also a detector kind of its own
(``AGE_FACE_DETECTOR=hog``), kept for comparison.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
from PIL import Image

from agegroup.boxes import FaceBox
from agegroup.preprocess import RESAMPLE

# A small photo is enlarged at most this much: more only invents faces of a few pixels.
MAX_UPSCALE = 4.0
# Boxes under MIN_FACE_PX found in enlarged photos are often clutter: they need this score.
# docs/detection.md#grey-and-sepia-photos
SMALL_FACE_MIN_SCORE = 0.3
# A photo is colourless when every channel of a copy shrunk to about COLOUR_PROBE_SIDE px is a
# straight-line function of its brightness within COLOURLESS_RESIDUAL levels (root mean square,
# of 255). docs/detection.md#grey-and-sepia-photos
COLOURLESS_RESIDUAL = 2.5
COLOUR_PROBE_SIDE = 64


class Hog:
    """dlib's frontal face detector (HOG features), on the photo resized to ``side`` px.

    dlib builds the detector in about 0.3 s of CPU (3 s of a cold start at a tenth of a CPU),
    so it is built by the first search that needs it (a colourless photo), not at startup.
    """

    def __init__(self, side: int) -> None:
        self._detector: Any = None
        self._side = side
        # Shared by the server's threads: one detection at a time.
        self._lock = threading.Lock()

    def __call__(self, rgb: Image.Image) -> list[FaceBox]:
        """HOG's faces, without landmarks; small ones only when HOG is fairly sure."""
        factor = min(self._side / max(rgb.size), MAX_UPSCALE)
        size = (max(1, round(rgb.width * factor)), max(1, round(rgb.height * factor)))
        work = np.asarray(rgb.resize(size, RESAMPLE, reducing_gap=2.0))
        with self._lock:
            if self._detector is None:
                import dlib

                self._detector = dlib.get_frontal_face_detector()
            rects, scores, _ = self._detector.run(work, 0, 0.0)
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
        return [b for b in boxes if not b.low_resolution or b.score >= SMALL_FACE_MIN_SCORE]


def is_colourless(image: Image.Image) -> bool:
    """Whether ``image`` is grey or one tint of grey (sepia, a cyanotype, a yellowed scan)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    # Block averages (cheap), so that a grey scan's pixel noise does not read as colour.
    probe = rgb.reduce(max(1, max(rgb.size) // COLOUR_PROBE_SIDE))
    pixels = np.asarray(probe, dtype=np.float64).reshape(-1, 3)
    brightness = np.column_stack([pixels.mean(axis=1), np.ones(len(pixels))])
    fit, *_ = np.linalg.lstsq(brightness, pixels, rcond=None)
    residual = math.sqrt(float(((pixels - brightness @ fit) ** 2).mean()))
    return residual < COLOURLESS_RESIDUAL
