"""Crop each face the way UTKFace's faces were cropped.

Serving crops every detected face with ``crop_face`` and the model sees it as it saw its
training images: square, 200 x 200, the face framed like UTKFace's. UTKFace's crops are aligned
by the eyes, so each face is cropped by the similarity transform (scale, rotation, shift) that
moves its landmarks onto where they sit on UTKFace crops on average (``LANDMARK_TEMPLATE``); a
tilted head comes out upright, as in training. Landmarks pin the framing down about twice as
tightly as a box (docs/detection.md#landmarks). Without landmarks, or when they disagree with
the box, the crop is the square UTKFace would have cut around the box (``crop_region``).

Training images are UTKFace's crops as they are: aligning them again would move them less than
the training's random zoom of 0.9-1.1 does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from agegroup.boxes import FaceBox, Point, crop_region, tight_frame
from agegroup.preprocess import RESAMPLE

# UTKFace crops are 200 x 200; crops are made at that size so that training and serving
# shrink them to the model's input in the same way.
CROP_SIZE = 200
# With no face found, the photo is read as the middle WHOLE_PHOTO_KEEP of a face's crop (a
# tight photo, its edges repeated past it). docs/detection.md#no-face-found
WHOLE_PHOTO_KEEP = 0.6
# Where dlib's 5 landmarks (outer and inner corner of the eye on the image's right, outer and
# inner corner of the other eye, base of the nose) sit on average in a 200 x 200 UTKFace crop,
# from ``python -m tools.detection_bench --template 300``. docs/detection.md#landmarks
LANDMARK_TEMPLATE = ((152.5, 59.8), (121.4, 61.8), (44.3, 59.5), (75.4, 61.8), (98.5, 118.4))
# Landmarks whose crop differs from the box's crop by more than this (in scale, or in centre
# as a fraction of the side) are not trusted: the box's crop is used instead.
LANDMARK_SCALE_RANGE = (0.7, 1.4)
LANDMARK_MAX_SHIFT = 0.25
# Where BlazeFace's keypoints (the eye on the image's left, the other eye, the tip of the nose,
# the middle of the mouth) sit on average in a 200 x 200 UTKFace crop, from the same command.
KEYPOINT_TEMPLATE = ((58.1, 58.5), (136.9, 58.5), (98.7, 106.2), (98.4, 143.3))
# Their weights in the fit, about 1 / variance of each on those crops: the tip of the nose
# moves most as the head turns.
KEYPOINT_WEIGHTS = (1.0, 1.0, 0.3, 0.6)


def similarity_to(points: list[Point] | tuple[Point, ...], size: int) -> tuple[float, ...]:
    """``(a, b, tx, ty)``: the least-squares similarity taking crop pixels to photo pixels.

    It maps the template of these points (``LANDMARK_TEMPLATE`` for dlib's 5 landmarks,
    ``KEYPOINT_TEMPLATE`` for BlazeFace's 4 keypoints), scaled to a ``size`` crop, onto
    ``points``: ``x' = a x - b y + tx``, ``y' = b x + a y + ty``.
    """
    dlib_points = len(points) == len(LANDMARK_TEMPLATE)
    template = LANDMARK_TEMPLATE if dlib_points else KEYPOINT_TEMPLATE
    weights = None if dlib_points else KEYPOINT_WEIGHTS
    return fit_similarity(np.asarray(template) * (size / CROP_SIZE), points, weights)


def fit_similarity(
    src: np.ndarray | Sequence[Point],
    dst: np.ndarray | Sequence[Point],
    weights: Sequence[float] | None = None,
) -> tuple[float, float, float, float]:
    """``(a, b, tx, ty)``: the (weighted) least-squares similarity taking the points ``src`` onto
    ``dst``: ``x' = a x - b y + tx``, ``y' = b x + a y + ty``."""
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w[:, None] / w.sum()
    src_mean, dst_mean = (w * src).sum(0), (w * dst).sum(0)
    src_c, dst_c = (src - src_mean) * np.sqrt(w), (dst - dst_mean) * np.sqrt(w)
    norm = (src_c**2).sum()
    a = float((src_c * dst_c).sum() / norm)
    b = float((src_c[:, 0] * dst_c[:, 1] - src_c[:, 1] * dst_c[:, 0]).sum() / norm)
    tx, ty = dst_mean - np.array([[a, -b], [b, a]]) @ src_mean
    return a, b, float(tx), float(ty)


def _trusted(box: FaceBox, a: float, b: float, tx: float, ty: float, size: int) -> bool:
    """Whether the landmark crop agrees with the box's crop (guards against stray landmarks)."""
    left, top, right, bottom = crop_region(box)
    side = right - left
    ratio = math.hypot(a, b) * size / side
    cx, cy = a * size / 2 - b * size / 2 + tx, b * size / 2 + a * size / 2 + ty
    shift = math.hypot(cx - (left + right) / 2, cy - (top + bottom) / 2) / side
    low, high = LANDMARK_SCALE_RANGE
    return low <= ratio <= high and shift <= LANDMARK_MAX_SHIFT


def region_with_edges(
    image: Image.Image, box: tuple[int, int, int, int], shrink: float = 1.0
) -> Image.Image:
    """The RGB pixels of ``box`` (left, top, right, bottom), which may reach past the photo:
    there each photo edge's pixels are repeated outwards.

    A face that fills the photo (a tight photo) needs a crop larger than the photo: filled
    with black, the model read most such faces as 11-20; repeated edges look like the rest of
    a face's crop (docs/detection.md#tight-photos).
    With ``shrink`` > 1 the region comes back that many times smaller, the part inside the
    photo shrunk before its edges are repeated: a region far larger than the photo stays cheap.
    """
    left, top, right, bottom = box
    inner_left = min(max(left, 0), image.width - 1)
    inner_top = min(max(top, 0), image.height - 1)
    inner_right = max(min(right, image.width), inner_left + 1)
    inner_bottom = max(min(bottom, image.height), inner_top + 1)
    inner = image.crop((inner_left, inner_top, inner_right, inner_bottom))
    if inner.mode != "RGB":
        inner = inner.convert("RGB")
    width, height = right - left, bottom - top
    if shrink > 1.0:
        width, height = max(1, round(width / shrink)), max(1, round(height / shrink))
        small = (max(1, round(inner.width / shrink)), max(1, round(inner.height / shrink)))
        inner = inner.resize(small, RESAMPLE, reducing_gap=3.0)
    elif (inner_left, inner_top, inner_right, inner_bottom) == box:
        return inner
    before_x = round(max(inner_left - left, 0) / max(shrink, 1.0))
    before_y = round(max(inner_top - top, 0) / max(shrink, 1.0))
    pad_x = (before_x, max(width - inner.width - before_x, 0))
    pad_y = (before_y, max(height - inner.height - before_y, 0))
    padded = np.pad(np.asarray(inner), (pad_y, pad_x, (0, 0)), mode="edge")
    return Image.fromarray(padded[:height, :width])


def _aligned_crop(image: Image.Image, transform: tuple[float, ...], size: int) -> Image.Image:
    """Warp the face upright onto a ``size`` crop; past the photo, its edges are repeated.

    The region is first shrunk with the same filter as every other resize (an affine warp
    alone would alias when a large face is reduced), then warped by what remains.
    """
    a, b, tx, ty = transform
    corners = [(0, 0), (size, 0), (0, size), (size, size)]
    xs = [a * x - b * y + tx for x, y in corners]
    ys = [b * x + a * y + ty for x, y in corners]
    left, top = math.floor(min(xs)) - 1, math.floor(min(ys)) - 1
    right, bottom = math.ceil(max(xs)) + 1, math.ceil(max(ys)) + 1
    region = region_with_edges(image, (left, top, right, bottom))
    shrink = math.hypot(a, b)  # photo pixels per crop pixel
    if shrink > 1.0:
        small = (max(1, round(region.width / shrink)), max(1, round(region.height / shrink)))
        region = region.resize(small, RESAMPLE, reducing_gap=3.0)
    fx, fy = region.width / (right - left), region.height / (bottom - top)
    coefficients = (fx * a, -fx * b, fx * (tx - left), fy * b, fy * a, fy * (ty - top))
    return region.transform(
        (size, size), Image.Transform.AFFINE, coefficients, resample=Image.Resampling.BILINEAR
    )


def whole_photo_as_face(image: Image.Image, size: int = CROP_SIZE) -> Image.Image:
    """The whole photo framed as a face that fills it, as a ``size`` x ``size`` RGB crop.

    When no face is found, the likeliest reason in a photo sent for its age is a tight photo,
    the face's outline cut off: the photo is then the middle of a UTKFace-like crop, and
    framed so it is read right about twice as often as squished whole into the model
    (docs/detection.md#no-face-found).
    """
    box = tight_frame(image.width, image.height, WHOLE_PHOTO_KEEP)
    region = region_with_edges(image, box, shrink=max(1.0, (box[2] - box[0]) / size))
    return region.resize((size, size), RESAMPLE)  # a copy when it is that size already


def crop_face(image: Image.Image, box: FaceBox, size: int = CROP_SIZE) -> Image.Image:
    """Crop the face in ``box`` framed like a UTKFace image, as a ``size`` x ``size`` RGB picture.

    With landmarks the face is aligned by the eyes (see the module's docstring); without, it
    is the square around the box. Parts of the crop that fall outside the photo repeat the
    photo's edges (``region_with_edges``).
    """
    if box.landmarks is not None:
        transform = similarity_to(box.landmarks, size)
        if _trusted(box, *transform, size):
            return _aligned_crop(image, transform, size)
    left, top, right, bottom = (round(v) for v in crop_region(box))
    return region_with_edges(image, (left, top, right, bottom)).resize(
        (size, size), RESAMPLE, reducing_gap=3.0
    )
