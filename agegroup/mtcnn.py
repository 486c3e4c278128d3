"""MTCNN's cascade (Zhang et al., 2016), run with onnxruntime: the small and grey faces BlazeFace
misses.

BlazeFace learned from colour photos and sees faces down to about 16 of its input pixels, so
small faces in large photos and faces without colour (a black-and-white print in a colour
scene, an old scan) are where it fails. MTCNN's proposal network (PNet) slides a 12 px window
over a pyramid of the photo, its refinement network (RNet) judges each proposal again at
24 x 24, and its output network (ONet, shared with ``agegroup.face_check``) at 48 x 48. Only
faces ONet also takes for faces on their aligned crop are added to the search's
(``agegroup.faces``; docs/detection.md#mtcnn). The networks are facenet-pytorch's weights
(MIT), converted once to ONNX by ``tools/convert_mtcnn.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from agegroup.boxes import same_place, shifted, squared, suppress
from agegroup.face_check import MODEL_DIR, FaceCheck, normalised
from agegroup.networks import small_network_session

PNET_FILE = "pnet.onnx"
RNET_FILE = "rnet.onnx"
PNET_SIDE = 12  # PNet's window, in pixels of its input
PNET_STRIDE = 2
RNET_SIDE = 24
ONET_SIDE = 48
# The smallest face searched for (the side of MTCNN's box, photo pixels) unless the finest level
# would pass the pixel budget (AGE_DETECT_PIXELS); each pyramid level is PYRAMID_FACTOR times the
# one before (MTCNN's own is 0.709: 0.6 is faster for the same recall). docs/detection.md#mtcnn
MIN_FACE = 24
PYRAMID_FACTOR = 0.6
# MTCNN's own thresholds for its first two stages, and its box overlaps for suppression.
PROPOSAL_SCORE = 0.6
REFINE_SCORE = 0.7
LEVEL_OVERLAP = 0.5
OVERLAP = 0.7
# At most this many proposals go to RNet and refined boxes to ONet, strongest first: a photo of
# face-like texture stays cheap.
MAX_PROPOSALS = 100
MAX_REFINED = 40


class Refiner:
    """MTCNN's refinement network (RNet) in an onnxruntime session: how face-like each square of
    a photo is, read at 24 x 24, and the offsets that move it onto the face. Cheap enough to
    judge dozens of squares in one batch (CenterFace's search screens its unsure candidates
    with it)."""

    def __init__(self, folder: Path = MODEL_DIR, threads: int = 1) -> None:
        self._session = small_network_session(Path(folder) / RNET_FILE, threads, "MTCNN RNet")

    def __call__(self, rgb: Image.Image, squares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RNet's face probability ``(n,)`` and box offsets ``(n, 4)`` for square boxes
        ``(n, 4)`` (``x0, y0, x1, y1`` in ``rgb``'s pixels; at least one)."""
        batch = np.stack([normalised(_square_crop(rgb, box, RNET_SIDE)) for box in squares])
        offsets, scores = self._session.run(None, {"input": batch})
        return scores, offsets


class Mtcnn:
    """PNet and RNet in onnxruntime sessions, with ONet from the face check (``face_check``,
    which also judges aligned crops)."""

    def __init__(self, face_check: FaceCheck, folder: Path = MODEL_DIR, threads: int = 1) -> None:
        self._pnet = small_network_session(Path(folder) / PNET_FILE, threads, "MTCNN PNet")
        self._refiner = Refiner(folder, threads)
        self.face_check = face_check

    def __call__(
        self,
        rgb: Image.Image,
        min_score: float,
        max_pixels: int,
        known: np.ndarray | None = None,
        resized: Image.Image | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Square face boxes ``(n, 4)`` as ``x0, y0, x1, y1`` in ``rgb``'s pixels, and ONet's
        probability for each (at least ``min_score``), best first. PNet's finest level has at
        most ``max_pixels`` (which bounds the time and the memory of the search).

        ``known``: boxes ``(k, 4)`` of faces already found; proposals on them are not judged
        again (``same_place``). ``resized``: ``rgb`` already resized, used for the pyramid
        level of its size.
        """
        proposals = self._proposals(rgb, max_pixels, resized)
        if known is not None and len(known) and len(proposals):
            proposals = proposals[~same_place(proposals, known).any(axis=1)]
        boxes = self._refined(rgb, proposals)
        if not len(boxes):
            return boxes, np.zeros(0, np.float32)
        batch = np.stack([normalised(_square_crop(rgb, box, ONET_SIDE)) for box in boxes])
        scores = self.face_check.probabilities(batch)
        keep = scores >= min_score
        boxes, scores = boxes[keep], scores[keep]
        # A face seen at two sizes leaves a box inside another: overlap of the smaller one.
        kept = suppress(boxes, scores, OVERLAP, of_smaller=True)
        return boxes[kept], scores[kept]

    def levels(self, width: int, height: int, max_pixels: int) -> list[float]:
        """The scales PNet searches a ``width`` x ``height`` photo at, finest first."""
        scale = min(PNET_SIDE / MIN_FACE, math.sqrt(max_pixels / (width * height)))
        scales: list[float] = []
        while min(width, height) * scale >= PNET_SIDE:
            scales.append(scale)
            scale *= PYRAMID_FACTOR
        return scales

    def _proposals(
        self, rgb: Image.Image, max_pixels: int, resized: Image.Image | None
    ) -> np.ndarray:
        """PNet's candidate boxes over the pyramid, offsets applied, squared."""
        found, source = [], rgb
        for scale in self.levels(rgb.width, rgb.height, max_pixels):
            size = (round(rgb.width * scale), round(rgb.height * scale))
            # Each level is shrunk from the one before: cheaper than from the photo each time.
            if resized is not None and resized.size == size:
                source = resized
            else:
                source = source.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
            offsets, probability = self._pnet.run(None, {"input": normalised(source)[None]})
            ys, xs = np.nonzero(probability[0] >= PROPOSAL_SCORE)
            if not len(xs):
                continue
            back = np.array([rgb.width / size[0], rgb.height / size[1]] * 2, np.float32)
            corners = np.stack([xs, ys, xs, ys], axis=1) * PNET_STRIDE
            windows = (corners + np.array([0, 0, PNET_SIDE, PNET_SIDE])) * back
            scores = probability[0, ys, xs]
            level = np.column_stack([windows, scores, offsets[0][:, ys, xs].T])
            found.append(level[suppress(windows, scores, LEVEL_OVERLAP)])
        if not found:
            return np.zeros((0, 4), np.float32)
        every = np.concatenate(found)
        every = every[suppress(every[:, :4], every[:, 4], OVERLAP)][:MAX_PROPOSALS]
        return squared(shifted(every[:, :4], every[:, 5:9]))

    def _refined(self, rgb: Image.Image, boxes: np.ndarray) -> np.ndarray:
        """The proposals RNet takes for faces, offsets applied, squared."""
        if not len(boxes):
            return boxes
        scores, offsets = self._refiner(rgb, boxes)
        keep = np.flatnonzero(scores >= REFINE_SCORE)
        boxes, offsets, scores = boxes[keep], offsets[keep], scores[keep]
        kept = suppress(boxes, scores, OVERLAP)[:MAX_REFINED]
        return squared(shifted(boxes[kept], offsets[kept]))


def _square_crop(rgb: Image.Image, box: np.ndarray, side: int) -> Image.Image:
    """The box's pixels at ``side`` x ``side``; black where it reaches past the photo. A large
    box is first reduced by a whole factor (``reducing_gap``): cheap, and as sharp as needed."""
    x0, y0 = round(float(box[0])), round(float(box[1]))
    x1, y1 = max(round(float(box[2])), x0 + 1), max(round(float(box[3])), y0 + 1)  # never empty
    inside = x0 >= 0 and y0 >= 0 and x1 <= rgb.width and y1 <= rgb.height
    region, within = (rgb, (x0, y0, x1, y1)) if inside else (rgb.crop((x0, y0, x1, y1)), None)
    return region.resize((side, side), Image.Resampling.BILINEAR, box=within, reducing_gap=2.0)
