"""BlazeFace's search of a whole photo: a pyramid of levels, then a second look at the unsure.

BlazeFace (``agegroup.blazeface``) finds faces whose crop is about 24-110 of its input pixels,
so the photo is searched at several scales (``levels``): the finest has at most the pixel
budget (``AGE_DETECT_PIXELS``), which sets both the smallest face found and the time, and the
coarsest shrinks the photo until a face that fills it is one of the network's sizes. The
candidates it is unsure of get a second look (``_look_again``) in a small window around each
that holds the face near its own pixel size, turned 25 degrees either way if needed: a face
seen only faintly at the finest level is judged again from the photo's own pixels.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from agegroup.blazeface import BlazeFace
from agegroup.boxes import Detections, FaceBox, merged_levels, utk_box, weighted_nms
from agegroup.networks import Stages
from agegroup.preprocess import RESAMPLE

# Levels are a factor LEVEL_STEP apart, so the network's face sizes overlap from one to the
# next. docs/detection.md#the-pyramid-search
LEVEL_STEP = 3.5
# The coarsest level shrinks the photo's long side to this, in a margin of one cell: a face
# that fills the photo is still one of the network's sizes. docs/detection.md#tight-photos
COARSEST_SIDE = 64
# The finest level enlarges a small photo at most this much: more only invents tiny faces.
MAX_UPSCALE = 2.0
# The search keeps candidates from CANDIDATE_SCORE; those under SURE_SCORE get a second look
# (at most MAX_LOOKS network runs in all) and are kept if they score FACE_SCORE there.
# docs/detection.md#second-looks
CANDIDATE_SCORE = 0.3
SURE_SCORE = 0.8
FACE_SCORE = 0.4
MAX_LOOKS = 12
# A second look is a window VERIFY_WINDOW times the candidate's side, read at VERIFY_INPUT px
# (a small face then keeps about its own pixel size), upright and then turned these ways
# (BlazeFace misses heads tilted by more than about 20 degrees). docs/detection.md#second-looks
VERIFY_WINDOW = 3.0
VERIFY_INPUT = 128
VERIFY_TURNS = (0.0, 25.0, -25.0)


def budget_scale(width: int, height: int, pixels: int) -> float:
    """The scale that brings a ``width`` x ``height`` photo to at most ``pixels`` pixels (a small
    photo is enlarged at most ``MAX_UPSCALE`` times)."""
    return min(MAX_UPSCALE, math.sqrt(pixels / (width * height)))


def level_image(rgb: Image.Image, scale: float) -> Image.Image:
    """The photo resized by ``scale`` (itself when that is its size)."""
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    return rgb.resize(size, RESAMPLE, reducing_gap=2.0) if size != rgb.size else rgb


class BlazeFaceSearch:
    """BlazeFace run over a photo's pyramid, its unsure candidates looked at again.

    ``pixels`` is the finest level's budget; ``stages`` receives the time of each level and
    of the second looks.
    """

    def __init__(self, pixels: int, threads: int = 1, stages: Stages | None = None) -> None:
        self.network = BlazeFace(threads=threads)
        self.pixels = pixels
        self.stages = stages or Stages()

    def levels(self, width: int, height: int) -> list[float]:
        """The scales a ``width`` x ``height`` photo is searched at, finest first."""
        scale = budget_scale(width, height, self.pixels)
        # Compared as scales, not as sides: ``side * (COARSEST_SIDE / side)`` can round to
        # just above COARSEST_SIDE, and the search then never ended.
        coarsest = COARSEST_SIDE / max(width, height)
        scales = [scale]
        while scales[-1] > coarsest:
            scales.append(max(scales[-1] / LEVEL_STEP, coarsest))
        return scales

    def finest(self, rgb: Image.Image) -> Image.Image:
        """The photo at the finest level (MTCNN's search starts from it too)."""
        return level_image(rgb, self.levels(rgb.width, rgb.height)[0])

    def __call__(self, rgb: Image.Image, finest: Image.Image) -> list[FaceBox]:
        """The faces in ``rgb`` (``finest``: the photo at the first level), framed as HOG's
        (``utk_box``) with BlazeFace's keypoints as landmarks."""
        faces = self._verified(rgb, self._candidates(rgb, finest))
        return [
            utk_box(box, float(score), points)
            for score, box, points in zip(faces.scores, faces.boxes, faces.keypoints, strict=True)
        ]

    def _candidates(self, rgb: Image.Image, finest: Image.Image) -> Detections:
        """Every level's candidates in ``rgb``'s pixels, blended (``weighted_nms``)."""
        multiple = self.network.network.multiple
        found = []
        source = rgb
        for index, scale in enumerate(self.levels(rgb.width, rgb.height)):
            size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
            # Pad to whole cells; the coarsest level gets a margin so a face that fills the
            # photo is still no larger than the network's faces.
            pad = multiple if max(size) <= COARSEST_SIDE else 0
            padded = (-(-(size[0] + pad) // multiple) * multiple,
                      -(-(size[1] + pad) // multiple) * multiple)  # fmt: skip
            work = np.zeros((padded[1], padded[0], 3), np.uint8)
            offset = ((padded[0] - size[0]) // 2, (padded[1] - size[1]) // 2)
            # Each level is shrunk from the one before: cheaper than from the photo each time.
            if index == 0:
                source = finest
            elif size != source.size:
                source = source.resize(size, RESAMPLE, reducing_gap=2.0)
            work[offset[1] : offset[1] + size[1], offset[0] : offset[0] + size[0]] = source
            with self.stages(f"search level {padded[0]}x{padded[1]}"):
                hits = self.network(work, CANDIDATE_SCORE)
            back = np.array([scale, scale])
            origin = np.array(offset, dtype=np.float32)
            found.append(
                Detections(
                    hits.scores,
                    ((hits.boxes.reshape(-1, 2, 2) - origin) / back).reshape(-1, 4),
                    (hits.keypoints - origin) / back,
                )
            )
        return merged_levels(found)

    def _verified(self, rgb: Image.Image, candidates: Detections) -> Detections:
        """The sure candidates, and the others that BlazeFace finds again in a window around
        each, at their own scale."""
        kept: list[tuple[float, np.ndarray, np.ndarray]] = []
        looks = 0
        order = np.argsort(-candidates.scores)
        with self.stages("second looks"):
            for score, box, points in zip(
                candidates.scores[order],
                candidates.boxes[order],
                candidates.keypoints[order],
                strict=True,
            ):
                if score >= SURE_SCORE:  # no clutter scored this high in the search
                    kept.append((float(score), box, points))
                    continue
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                side = max(box[2] - box[0], box[3] - box[1], 1.0) * VERIFY_WINDOW
                for degrees in VERIFY_TURNS:
                    if looks >= MAX_LOOKS:
                        break
                    looks += 1
                    again = self._look_again(rgb, cx, cy, side, degrees)
                    if again is not None:
                        kept.append(again)
                        break
        if not kept:
            return Detections.none()
        scores, boxes, points = zip(*kept, strict=True)
        return weighted_nms(Detections(np.array(scores), np.array(boxes), np.array(points)))

    def _look_again(
        self, rgb: Image.Image, cx: float, cy: float, side: float, degrees: float
    ) -> tuple[float, np.ndarray, np.ndarray] | None:
        """The face in a ``side`` window centred on ``(cx, cy)``, turned by ``degrees``."""
        f = side / VERIFY_INPUT
        cos, sin = f * math.cos(math.radians(degrees)), f * math.sin(math.radians(degrees))
        c = VERIFY_INPUT / 2
        affine = np.array([[cos, -sin, cx - cos * c + sin * c], [sin, cos, cy - sin * c - cos * c]])
        window = rgb.transform(
            (VERIFY_INPUT, VERIFY_INPUT),
            Image.Transform.AFFINE,
            tuple(affine.ravel()),
            resample=Image.Resampling.BILINEAR,
        )
        hits = self.network(np.asarray(window), FACE_SCORE)
        mid = (hits.boxes[:, :2] + hits.boxes[:, 2:]) / 2
        near = np.flatnonzero(np.hypot(*(mid - c).T) < VERIFY_INPUT / 4)
        if not len(near):
            return None
        best = near[np.argmax(hits.scores[near])]
        centre = affine[:, :2] @ mid[best] + affine[:, 2]
        half = (hits.boxes[best, 2:] - hits.boxes[best, :2]) * f / 2
        points = hits.keypoints[best] @ affine[:, :2].T + affine[:, 2]
        return float(hits.scores[best]), np.concatenate([centre - half, centre + half]), points
