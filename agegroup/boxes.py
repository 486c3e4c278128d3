"""Face boxes and their geometry: every detector's boxes become one ``FaceBox`` framed alike.

A ``FaceBox`` is a face in the framing of dlib's HOG box, ``BOX_TO_CROP`` of the side of the
crop UTKFace would have cut around it (``crop_region``). BlazeFace's and MTCNN's boxes sit
elsewhere on a face, so ``utk_box`` moves and scales them by where each sits on UTKFace crops
on average. Candidates as arrays (``x0, y0, x1, y1`` rows) are merged here too: blended
(``weighted_nms``, BlazeFace), suppressed (``suppress``, MTCNN) or matched by place
(``same_place``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

Point = tuple[float, float]

# HOG box side / UTKFace crop side, and the box centre's offset in crop sides: the HOG box is
# centred on the crop with a side of 0.90 of it. docs/detection.md#where-a-box-sits-on-a-crop
BOX_TO_CROP = 0.90
CENTRE_OFFSET = (0.0, 0.0)
# Where BlazeFace's and MTCNN's boxes sit in a UTKFace crop (centre offset and side, in crop
# sides), from ``python -m tools.detection_bench --template 300``.
# docs/detection.md#where-a-box-sits-on-a-crop
BLAZE_BOX_IN_CROP = (-0.014, -0.042, 0.99)
MTCNN_BOX_IN_CROP = (-0.027, -0.072, 1.062)
# Faces smaller than this (in the pixels they are cropped from) carry too little detail to judge.
MIN_FACE_PX = 32


@dataclass(frozen=True)
class FaceBox:
    """A detected face: ``x, y, w, h`` in the pixels of the image it was found in."""

    x: int
    y: int
    w: int
    h: int
    score: float = 0.0
    # dlib's 5 landmarks (or BlazeFace's 4 keypoints) in the same pixels as the box.
    landmarks: tuple[Point, ...] | None = None

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
        return FaceBox(x0, y0, max(0, x1 - x0), max(0, y1 - y0), self.score, self.landmarks)

    def moved(self, factor: float, left: float, top: float) -> FaceBox:
        """The box (and landmarks) of a copy shrunk ``factor`` times whose corner is at
        ``(left, top)``, in the pixels of the image it was copied from."""
        x, y = self.x * factor + left, self.y * factor + top
        points = self.landmarks and tuple(
            (px * factor + left, py * factor + top) for px, py in self.landmarks
        )
        return replace(
            self,
            x=round(x),
            y=round(y),
            w=round(self.w * factor),
            h=round(self.h * factor),
            landmarks=points,
        )

    def scaled(self, factor: float) -> tuple[int, int, int, int]:
        """``(x, y, w, h)`` multiplied by ``factor`` and rounded (e.g. to original pixels)."""
        return tuple(round(v * factor) for v in (self.x, self.y, self.w, self.h))  # type: ignore[return-value]


def crop_region(box: FaceBox) -> tuple[float, float, float, float]:
    """The square ``(left, top, right, bottom)`` that UTKFace would have cropped around ``box``."""
    side = max(box.w, box.h) / BOX_TO_CROP
    cx = box.x + box.w / 2 - CENTRE_OFFSET[0] * side
    cy = box.y + box.h / 2 - CENTRE_OFFSET[1] * side
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def tight_frame(width: int, height: int, keep: float) -> tuple[int, int, int, int]:
    """The square ``(left, top, right, bottom)``, centred on a ``width`` x ``height`` photo, of
    which the photo is the middle ``keep`` of the side: the crop of a face that fills the photo
    (a tight photo)."""
    side = round(max(width, height) / keep)
    left, top = round((width - side) / 2), round((height - side) / 2)
    return left, top, left + side, top + side


def utk_box(
    box: np.ndarray,
    score: float,
    keypoints: np.ndarray | None,
    placement: tuple[float, float, float] = BLAZE_BOX_IN_CROP,
) -> FaceBox:
    """A BlazeFace (or MTCNN) box ``x0, y0, x1, y1`` as the ``FaceBox`` HOG would draw.

    The box is moved and scaled by where it sits on UTKFace crops on average (``placement``:
    ``BLAZE_BOX_IN_CROP`` or ``MTCNN_BOX_IN_CROP``); the first 4 ``keypoints`` (the eyes, the
    nose tip and the mouth) become its landmarks.
    """
    dx, dy, side_ratio = placement
    x0, y0, x1, y1 = (float(v) for v in box)
    crop_side = max(x1 - x0, y1 - y0) / side_ratio
    cx, cy = (x0 + x1) / 2 - dx * crop_side, (y0 + y1) / 2 - dy * crop_side
    side = BOX_TO_CROP * crop_side
    points = None if keypoints is None else tuple((float(x), float(y)) for x, y in keypoints[:4])
    return FaceBox(
        round(cx - side / 2), round(cy - side / 2), round(side), round(side), score, points
    )


def corners(boxes: list[FaceBox]) -> np.ndarray:
    """The boxes as an ``(n, 4)`` array of ``x0, y0, x1, y1``."""
    return np.array([(b.x, b.y, b.x + b.w, b.y + b.h) for b in boxes], np.float32).reshape(-1, 4)


def same_place(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """``(n, k)``: whether box i's centre lies inside box j, or box j's inside box i (boxes as
    ``x0, y0, x1, y1``): the same face seen at two sizes."""

    def centre_inside(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        centre = (a[:, None, :2] + a[:, None, 2:4]) / 2
        return ((centre >= b[None, :, :2]) & (centre <= b[None, :, 2:4])).all(axis=2)

    return centre_inside(boxes, others) | centre_inside(others, boxes).T


def not_found(boxes: list[FaceBox], found: list[FaceBox]) -> list[FaceBox]:
    """The boxes that are not one of the ``found`` faces seen again (``same_place``)."""
    if not boxes or not found:
        return boxes
    again = same_place(corners(boxes), corners(found)).any(axis=1)
    return [box for box, seen in zip(boxes, again, strict=True) if not seen]


def intersections(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The area each of ``boxes`` shares with ``box`` (all as ``x0, y0, x1, y1``)."""
    lo = np.maximum(box[:2], boxes[:, :2])
    hi = np.minimum(box[2:4], boxes[:, 2:4])
    return np.prod(np.maximum(hi - lo, 0), axis=1)


# At most this many candidates of a search go into suppression: a photo of many faces, or of
# face-like patterns, stays cheap.
MAX_CANDIDATES = 400


@dataclass(frozen=True)
class Detections:
    """Candidate faces: ``boxes`` as ``x0, y0, x1, y1``, with the network's keypoints (BlazeFace
    has 6)."""

    scores: np.ndarray  # (n,)
    boxes: np.ndarray  # (n, 4)
    keypoints: np.ndarray  # (n, k, 2)

    @classmethod
    def none(cls, keypoints: int = 6) -> Detections:
        return cls(np.zeros(0), np.zeros((0, 4)), np.zeros((0, keypoints, 2)))


def weighted_nms(found: Detections, overlap: float = 0.3) -> Detections:
    """MediaPipe's blending suppression: overlapping candidates are averaged, score-weighted.

    Blending (rather than keeping the best candidate) steadies the box and the keypoints,
    which the crop is aligned by.
    """
    order = np.argsort(-found.scores)
    scores, boxes, points = found.scores[order], found.boxes[order], found.keypoints[order]
    areas = np.prod(np.maximum(boxes[:, 2:] - boxes[:, :2], 0), axis=1)
    remaining = np.ones(len(order), dtype=bool)
    out_s, out_b, out_k = [], [], []
    for i in range(len(order)):
        if not remaining[i]:
            continue
        inter = intersections(boxes[i], boxes)
        iou = inter / np.maximum(areas[i] + areas - inter, 1e-6)
        group = remaining & (iou > overlap)
        remaining &= ~group
        weights = scores[group] / scores[group].sum()
        out_s.append(scores[i])
        out_b.append((boxes[group] * weights[:, None]).sum(0))
        out_k.append((points[group] * weights[:, None, None]).sum(0))
    if not out_s:
        return Detections.none(found.keypoints.shape[1])
    return Detections(np.array(out_s), np.array(out_b), np.array(out_k))


def merged_levels(found: list[Detections]) -> Detections:
    """The candidates of every level of a search, blended by ``weighted_nms``: at most
    ``MAX_CANDIDATES`` of them, the best scoring."""
    merged = Detections(*(np.concatenate(parts) for parts in zip(*(
        (f.scores, f.boxes, f.keypoints) for f in found), strict=True)))  # fmt: skip
    if len(merged.scores) > MAX_CANDIDATES:
        top = np.argsort(-merged.scores)[:MAX_CANDIDATES]
        merged = Detections(merged.scores[top], merged.boxes[top], merged.keypoints[top])
    return weighted_nms(merged)


def suppress(
    boxes: np.ndarray, scores: np.ndarray, overlap: float, of_smaller: bool = False
) -> np.ndarray:
    """Indices of the boxes kept by non-maximum suppression, best score first: a box goes when
    its intersection with a better one is more than ``overlap`` of their union (or, with
    ``of_smaller``, of the smaller box)."""
    order = np.argsort(-scores)
    areas = np.prod(np.maximum(boxes[:, 2:4] - boxes[:, :2], 0), axis=1)
    kept = []
    while len(order):
        best, rest = order[0], order[1:]
        kept.append(best)
        inter = intersections(boxes[best], boxes[rest])
        whole = (
            np.minimum(areas[best], areas[rest])
            if of_smaller
            else areas[best] + areas[rest] - inter
        )
        order = rest[inter / np.maximum(whole, 1e-6) <= overlap]
    return np.array(kept, dtype=np.int64)


def shifted(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Boxes moved by a network's offsets (fractions of the box's width and height)."""
    sides = np.tile(boxes[:, 2:4] - boxes[:, 0:2], 2)
    return boxes + offsets * sides


def squared(boxes: np.ndarray) -> np.ndarray:
    """Each box made square about its centre, on its longer side (at least 1 px: offsets can
    turn a box inside out)."""
    centre = (boxes[:, :2] + boxes[:, 2:4]) / 2
    half = np.maximum(np.max(boxes[:, 2:4] - boxes[:, :2], axis=1, keepdims=True), 1.0) / 2
    return np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)
