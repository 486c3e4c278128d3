"""Find the faces in a photo: boxes, with landmarks, that ``agegroup.crops`` crops like UTKFace's.

``AGE_FACE_DETECTOR`` picks a detector kind (``KINDS``). Each runs a network's search of the
whole photo and may add other detectors' faces that the search missed:

- ``blazeface`` (the default): BlazeFace's pyramid search (``agegroup.blazeface_search``), then
  MTCNN (``agegroup.mtcnn``) for the small and grey faces it misses;
- ``blazeface-fast``: BlazeFace's search alone (about two thirds of the default's time);
- ``centerface``, ``centerface-fast``: CenterFace's one run over the photo and its second looks
  (``agegroup.centerface_search``), with MTCNN or alone, aligned by CenterFace's own landmarks;
- ``hog``: dlib's HOG detector alone, kept for comparison.

With a network, a colourless photo (grey, sepia) is searched by HOG too (``agegroup.hog``), the
faces the network is unsure of are checked by ONet (``agegroup.face_check``), and a photo where
no face is found is searched again framed as a tight photo, the face alone with its outline
cut off (``search_tight``); with CenterFace, so is one whose face is cut off by its edges.
All boxes are framed alike (``agegroup.boxes``) and aligned by dlib's landmarks
(``agegroup.landmarks``), or by the network's keypoints when that model is not installed or
the kind aligns by its own (CenterFace). ``python -m tools.detection_bench`` measures recall,
false faces, time and accuracy for every kind; ``python -m tools.bench --stages`` the time of
each step (``FaceDetector.stages``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from agegroup.blazeface_search import SURE_SCORE, BlazeFaceSearch
from agegroup.boxes import (
    MTCNN_BOX_IN_CROP,
    FaceBox,
    corners,
    not_found,
    tight_frame,
    utk_box,
)
from agegroup.centerface_search import SURE_SCORE as CENTERFACE_SURE
from agegroup.centerface_search import CenterFaceSearch
from agegroup.config import Settings
from agegroup.crops import crop_face, region_with_edges
from agegroup.face_check import FACE_CHECK_SCORE, FaceCheck
from agegroup.hog import Hog, is_colourless
from agegroup.landmarks import Landmarks, landmark_model_path
from agegroup.mtcnn import Mtcnn
from agegroup.networks import Stages

# The longest side a photo is searched at by HOG, and that of the tight photo's framed copy
# and of the warm-up photo: HOG's 80 px window then finds faces from 5% of the side.
DETECT_SIDE = 1600
MAX_FACES = 20
# A photo where no face is found is searched again framed as a tight photo (the middle
# TIGHT_SEARCH_KEEP of a face's crop, its edges repeated) when it is at most TIGHT_MAX_ASPECT
# times as long as it is wide; only faces of at least TIGHT_MIN_FACE of its longer side are
# taken from that search. docs/detection.md#tight-photos
TIGHT_SEARCH_KEEP = 0.7
TIGHT_MAX_ASPECT = 2.0
TIGHT_MIN_FACE = 0.5
# A face whose box comes within EDGE_MARGIN of the photo's longer side of two or more of its
# edges is cut off by the photo (``touches_edges``). docs/detection-centerface.md#tight-photos
EDGE_MARGIN = 0.03
# MTCNN's faces that the search did not find are added when ONet's probabilities on MTCNN's box
# and on the face's aligned crop multiply to at least this. docs/detection.md#mtcnn
MTCNN_SCORE = 0.7
DEFAULT_DETECTOR = Settings.face_detector
DETECT_PIXELS = Settings.detect_pixels
# AGE_DETECT_PIXELS's range: fewer misses faces of a tenth of a photo; more is beyond a photo
# of AGE_WORK_SIZE's default side.
DETECT_PIXELS_RANGE = (40_000, 2_560_000)


class NetworkSearch(Protocol):
    """A detector network's search of a whole photo (``BlazeFaceSearch`` is one)."""

    def finest(self, rgb: Image.Image) -> Image.Image:
        """The photo at the pixel budget: the search's finest level, which MTCNN shares."""
        ...

    def __call__(self, rgb: Image.Image, finest: Image.Image) -> list[FaceBox]:
        """The faces in ``rgb``'s pixels, framed as ``agegroup.boxes.FaceBox``, with the
        network's keypoints as landmarks (if it has any)."""
        ...


@dataclass(frozen=True)
class Kind:
    """What one ``AGE_FACE_DETECTOR`` value runs."""

    # Makes the network search every photo gets, from (pixel budget, threads, stages); None:
    # HOG alone.
    network: Callable[[int, int, Stages], NetworkSearch] | None
    # MTCNN searches the photo too, for the small and grey faces the network missed.
    mtcnn: bool = False
    # The network's faces scoring under this are kept only if ONet takes them for faces (the
    # face check); 0: none is checked.
    sure_score: float = SURE_SCORE
    # AGE_FACE_LANDMARKS=auto aligns by the network's own landmarks, not by dlib's.
    own_landmarks: bool = False
    # A photo whose face is cut off by its edges is searched again framed as a tight photo: the
    # network's box stops at the edges (CenterFace's does), and the landmarks in it crowd
    # together.
    edge_faces_again: bool = False


KINDS: dict[str, Kind] = {
    "blazeface": Kind(BlazeFaceSearch, mtcnn=True),
    "blazeface-fast": Kind(BlazeFaceSearch),
    # CenterFace's one run and its second looks, with MTCNN or alone; its own landmarks align
    # the faces. docs/detection-centerface.md
    "centerface": Kind(
        CenterFaceSearch,
        mtcnn=True,
        sure_score=CENTERFACE_SURE,
        own_landmarks=True,
        edge_faces_again=True,
    ),
    "centerface-fast": Kind(
        CenterFaceSearch, sure_score=CENTERFACE_SURE, own_landmarks=True, edge_faces_again=True
    ),
    "hog": Kind(None),
}
DETECTORS = tuple(KINDS)


class FaceDetector:
    """Finds the faces of a photo as the detector ``kind`` (``KINDS``) says, with landmarks.

    ``landmarks`` (a dlib 5-point model file) aligns every face when given; otherwise the
    network's keypoints do, unless ``keypoints`` is false. ``hog_on_colourless`` (HOG searches
    colourless photos too) and ``face_check`` (ONet checks the faces the network is unsure of)
    are off only to measure what they add. Made once per process (the app keeps one; scripts
    use ``get_detector``). ``stages`` times each step when given a dict to fill.
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
        if kind not in KINDS:
            raise ValueError(f"AGE_FACE_DETECTOR must be one of {DETECTORS}, not {kind!r}")
        low, high = DETECT_PIXELS_RANGE
        if not low <= detect_pixels <= high:
            raise ValueError(f"AGE_DETECT_PIXELS must be {low}-{high}, not {detect_pixels}")
        self.kind = kind
        self.stages = Stages()
        chosen = KINDS[kind]
        self.network: NetworkSearch | None = None
        if chosen.network is not None:
            self.network = chosen.network(detect_pixels, threads, self.stages)
        self._sure_score = chosen.sure_score
        self._edge_faces_again = chosen.edge_faces_again
        self._face_check: FaceCheck | None = None
        if self.network is not None and face_check:
            self._face_check = FaceCheck(threads=threads)
        self.mtcnn: Mtcnn | None = None
        if chosen.mtcnn:
            self.mtcnn = Mtcnn(self._face_check or FaceCheck(threads=threads), threads=threads)
        # HOG is the detector of ``hog``, and the network's partner on colourless photos.
        self._hog = Hog(detect_side)
        self._keypoints = keypoints and self.network is not None
        self._landmarks: Landmarks | None = None
        if landmarks is not None:
            self._landmarks = Landmarks(landmarks)
            self._keypoints = False
        self._detect_side = detect_side
        self._detect_pixels = detect_pixels
        self._hog_on_colourless = hog_on_colourless
        # One search at a time: each holds tens of MB of activations, and the server's threads
        # share one CPU anyway. docs/robustness.md#one-search-at-a-time
        self._search_lock = threading.RLock()

    @property
    def has_landmarks(self) -> bool:
        return self._landmarks is not None or self._keypoints

    def detect(self, image: Image.Image) -> list[FaceBox]:
        """All faces in ``image`` (any size), boxes in its own pixels, best score first.

        The faces only MTCNN or HOG found follow the network's (their scores are on other
        scales). A photo where none is found is searched again as a tight photo; so is one whose
        face is cut off by its edges, for the kinds whose box stops there (``edge_faces_again``):
        the faces that search finds replace those it finds again.
        """
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        if self.network is None:
            return sorted(self._with_landmarks(rgb, self._hog_faces(rgb)), key=lambda b: -b.score)
        with self._search_lock:
            faces = self.search_photo(rgb)
            if not faces:
                return self.search_tight(rgb)
            if self._edge_faces_again and any(touches_edges(f, *rgb.size) for f in faces):
                again = self.search_tight(rgb)
                return again + not_found(faces, again)
            return faces

    def search_photo(self, rgb: Image.Image, hog: bool = True) -> list[FaceBox]:
        """The network's faces in the photo as it is, then MTCNN's and (colourless photos,
        unless not ``hog``) HOG's that it did not find."""
        assert self.network is not None
        with self._search_lock:
            finest = self.network.finest(rgb)  # both searches start from it: resized once
            boxes = self.network(rgb, finest)
            if not self._keypoints:
                boxes = [replace(b, landmarks=None) for b in boxes]
            boxes = self._checked(rgb, self._with_landmarks(rgb, boxes), self._sure_score)
            boxes = sorted(boxes, key=lambda b: -b.score)
            if self.mtcnn is not None:
                boxes += self._mtcnn_faces(rgb, boxes, finest)
            if hog and self._hog_on_colourless and is_colourless(rgb):
                # Landmarks only for the faces HOG adds; each is checked (HOG's scores are on
                # another scale: none counts as sure).
                more = not_found(self._hog_faces(rgb), boxes)
                more = self._checked(rgb, self._with_landmarks(rgb, more), unsure_below=math.inf)
                boxes += sorted(more, key=lambda b: -b.score)
            return boxes

    def search_tight(self, rgb: Image.Image) -> list[FaceBox]:
        """The faces found when the photo is searched again framed as a tight photo
        (``tight_frame``: in the middle of a square, its edges repeated around it).

        A tight photo shows no outline of the head, and the detectors often miss its face;
        framed so, they find many of those faces. The boxes are in ``rgb``'s pixels and
        may reach past it; ``crop_face`` repeats its edges there, as the framing did.
        """
        if max(rgb.size) > TIGHT_MAX_ASPECT * min(rgb.size):
            return []
        left, top, right, bottom = tight_frame(rgb.width, rgb.height, TIGHT_SEARCH_KEEP)
        # The framed copy keeps the photo's pixels (its landmarks are read there) up to the
        # largest photo searched; HOG, slow on large photos, is left out.
        shrink = max(1.0, (right - left) / self._detect_side)
        framed = region_with_edges(rgb, (left, top, right, bottom), shrink)
        boxes = [box.moved(shrink, left, top) for box in self.search_photo(framed, hog=False)]
        return [box for box in boxes if box.w >= TIGHT_MIN_FACE * max(rgb.size)]

    def warm_up(self) -> None:
        """Search a photo once, so that the networks' memory arenas (bounded by the pixel
        budget) are taken at startup, not by the first large upload. HOG keeps no arena, so
        ``hog`` has nothing to warm."""
        if self.network is None:
            return
        # A square at the pixel budget, in two thirds of the time of a DETECT_SIDE photo's
        # search; the first large uploads add the rest of the arenas, once
        # (docs/robustness.md#onnxruntime-memory).
        side = math.isqrt(self._detect_pixels)
        noise = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
        # One search: the tight photo's search of a faceless photo takes no more memory. Not
        # HOG's: it keeps no arena, and noise reads as colourless (its block averages are
        # grey), so it would build and run HOG at startup (8 s at a tenth of a CPU).
        self.search_photo(Image.fromarray(noise), hog=False)

    def _with_landmarks(self, rgb: Image.Image, boxes: list[FaceBox]) -> list[FaceBox]:
        if self._landmarks is None:
            return boxes
        with self.stages("dlib landmarks"):
            return self._landmarks(rgb, boxes)

    def _hog_faces(self, rgb: Image.Image) -> list[FaceBox]:
        with self.stages("HOG"):
            return self._hog(rgb)

    def _checked(
        self, rgb: Image.Image, boxes: list[FaceBox], unsure_below: float
    ) -> list[FaceBox]:
        """The faces, less those scoring below ``unsure_below`` that ONet does not take for
        faces."""
        unsure = [i for i, box in enumerate(boxes) if box.score < unsure_below]
        if self._face_check is None or not unsure:
            return boxes
        with self.stages("face check"):
            probabilities = self._face_check([crop_face(rgb, boxes[i]) for i in unsure])
        rejected = {i for i, p in zip(unsure, probabilities, strict=True) if p < FACE_CHECK_SCORE}
        return [box for i, box in enumerate(boxes) if i not in rejected]

    def _mtcnn_faces(
        self, rgb: Image.Image, found: list[FaceBox], finest: Image.Image
    ) -> list[FaceBox]:
        """MTCNN's faces that are not among ``found``, with landmarks, best first.

        ONet judges each face twice: on MTCNN's box and on the aligned crop. A face is kept
        when the product of the two is at least MTCNN_SCORE: a real face that MTCNN's box
        frames badly still scores high on its aligned crop, clutter rarely on both.
        """
        assert self.mtcnn is not None
        with self.stages("MTCNN, all of it"):
            squares, scores = self.mtcnn(
                rgb, MTCNN_SCORE, self._detect_pixels, known=corners(found), resized=finest
            )
            boxes = [utk_box(b, float(s), None, MTCNN_BOX_IN_CROP) for b, s in zip(squares, scores)]
            new = self._with_landmarks(rgb, not_found(boxes, found))
            if not new:
                return new
            again = self.mtcnn.face_check([crop_face(rgb, box) for box in new])
        both = [replace(box, score=box.score * float(p)) for box, p in zip(new, again, strict=True)]
        return sorted((box for box in both if box.score >= MTCNN_SCORE), key=lambda b: -b.score)


def touches_edges(box: FaceBox, width: int, height: int) -> bool:
    """Whether the face's box comes within EDGE_MARGIN (of the photo's longer side) of two or
    more of the photo's edges: a face cut off by the photo."""
    margin = EDGE_MARGIN * max(width, height)
    near = (
        box.x <= margin,
        box.y <= margin,
        box.x + box.w >= width - margin,
        box.y + box.h >= height - margin,
    )
    return sum(near) >= 2


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

    ``auto`` aligns faces by dlib's packaged 5-point model, found on any detector's boxes (on a
    turned face, twice as close to the upright crop as BlazeFace's keypoints,
    docs/detection.md#landmarks), and by BlazeFace's keypoints when that model is not
    installed; ``keypoints`` asks for BlazeFace's keypoints; ``off`` crops by the box; a path
    names another dlib 5-point model. ``hog_on_colourless``, ``face_check``: see
    ``FaceDetector``.
    """
    setting = landmarks.strip().lower()
    options: dict[str, Any] = {
        "threads": threads,
        "hog_on_colourless": hog_on_colourless,
        "face_check": face_check,
        "detect_pixels": detect_pixels,
    }
    networked = kind not in KINDS or KINDS[kind].network is not None
    if setting == "auto" and kind in KINDS and KINDS[kind].own_landmarks:
        setting = "keypoints"
    if networked and setting in ("keypoints", "off"):
        return FaceDetector(kind=kind, keypoints=setting == "keypoints", **options)
    path = landmark_model_path(landmarks)
    return FaceDetector(kind=kind, landmarks=path, keypoints=path is None, **options)


def select_faces(boxes: list[FaceBox], limit: int = MAX_FACES) -> list[FaceBox]:
    """The ``limit`` largest faces, ordered left to right (then top to bottom)."""
    largest = sorted(boxes, key=lambda b: (-b.area, b.x, b.y))[:limit]
    return sorted(largest, key=lambda b: (b.x, b.y))
