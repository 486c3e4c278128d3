"""CenterFace's search of a whole photo: one run at the pixel budget, a closer look at the unsure.

CenterFace (``agegroup.centerface``) sees faces from about 24 to several hundred of its input
pixels in one run, so one level, the photo at the pixel budget (``AGE_DETECT_PIXELS``), replaces
BlazeFace's pyramid. Faces smaller than about 60 input pixels score low there, on cluttered
photos most of all, so the candidates it is unsure of get a second look: a window around each,
enlarged so that the face is ``LOOK_FACE`` px, run on its own (``_look_again``). A small face
may score only a few thousandths in the run, like dozens of spots of clutter in the same photo,
so MTCNN's refinement network (``agegroup.mtcnn.Refiner``) screens those candidates first, all
in one batch: the looks go to the ones it takes for faces, then to those scoring as much as a
turned face does (RNet, trained on upright faces, misses those).

Each face comes back framed as HOG's box (``agegroup.boxes.utk_box``, by where CenterFace's box
sits on UTKFace crops) with CenterFace's 5 landmarks translated into dlib's layout
(``dlib_layout``): the crop that ``agegroup.crops`` aligns by them is the similarity that takes
CenterFace's points onto where they sit on UTKFace crops.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from agegroup.blazeface_search import budget_scale, level_image
from agegroup.boxes import Detections, FaceBox, merged_levels, utk_box, weighted_nms
from agegroup.centerface import MULTIPLE, CenterFace
from agegroup.crops import LANDMARK_TEMPLATE, fit_similarity
from agegroup.mtcnn import Refiner
from agegroup.networks import Stages
from agegroup.preprocess import RESAMPLE

# Where CenterFace's box sits in a UTKFace crop (centre offset and height, in crop sides) and
# where its 5 landmarks sit in a 200 x 200 UTKFace crop (the eye on the image's left, the other
# eye, the tip of the nose, the mouth's left and right corners), on 300 training crops
# (``python -m tools.detection_bench --template 300``). docs/detection-centerface.md
CENTERFACE_BOX_IN_CROP = (-0.001, -0.014, 0.948)
CENTERFACE_TEMPLATE = ((58.8, 64.1), (138.0, 61.5), (97.6, 101.3), (68.4, 139.3), (132.0, 137.1))
# The search keeps candidates from CANDIDATE_SCORE. Those under FACE_SCORE get a second look
# if RNet scores their square SCREEN_SCORE or more, or if they score UNSCREENED_SCORE in the run
# (RNet learned upright faces, and scores faces turned by 20-30 degrees low); at most MAX_LOOKS,
# RNet's faces first. They are kept if they score LOOK_SCORE there. A look is a window
# LOOK_WINDOW times the candidate's height, enlarged (or shrunk) so the face is LOOK_FACE px.
# docs/detection-centerface.md
CANDIDATE_SCORE = 0.003
SCREEN_SCORE = 0.5
UNSCREENED_SCORE = 0.02
FACE_SCORE = 0.3
LOOK_SCORE = 0.3
MAX_LOOKS = 12
LOOK_WINDOW = 2.0
LOOK_FACE = 64
# Faces scoring under this are kept only if ONet takes them for faces (``agegroup.faces``' face
# check): it drops a cap badge or a pattern that a second look scored just over LOOK_SCORE.
# docs/detection-centerface.md
SURE_SCORE = 0.5
# Large faces, turned or blurred, can score low at the budget and high smaller: the photo is
# also run COARSE_STEP times smaller, unless that is under COARSEST_SIDE px on its long side.
# docs/detection-centerface.md
COARSE_STEP = 3.0
COARSEST_SIDE = 64


def dlib_layout(points: np.ndarray) -> tuple[tuple[float, float], ...]:
    """CenterFace's 5 landmarks as the 5 points of dlib's layout (``LANDMARK_TEMPLATE``) that
    the same similarity places: the one that takes ``CENTERFACE_TEMPLATE`` onto ``points``."""
    a, b, tx, ty = fit_similarity(CENTERFACE_TEMPLATE, points)
    mapped = np.asarray(LANDMARK_TEMPLATE) @ np.array([[a, -b], [b, a]]).T + (tx, ty)
    return tuple((float(x), float(y)) for x, y in mapped)


def coarser(finest: Image.Image) -> Image.Image | None:
    """The photo COARSE_STEP times smaller than at the budget, or None when that is under
    COARSEST_SIDE on its long side (no face would be larger there than at the budget)."""
    size = (round(finest.width / COARSE_STEP), round(finest.height / COARSE_STEP))
    if max(size) < COARSEST_SIDE:
        return None
    return finest.resize(size, RESAMPLE, reducing_gap=2.0)


def padded(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` (H x W x 3) with black added right and below to whole ``MULTIPLE``s."""
    height, width = pixels.shape[:2]
    out = np.zeros(
        (-(-height // MULTIPLE) * MULTIPLE, -(-width // MULTIPLE) * MULTIPLE, 3), np.uint8
    )
    out[:height, :width] = pixels
    return out


class CenterFaceSearch:
    """CenterFace run once over the photo at the pixel budget, its unsure candidates looked at
    again. ``stages`` receives the time of the run and of the second looks."""

    def __init__(self, pixels: int, threads: int = 1, stages: Stages | None = None) -> None:
        self.network = CenterFace(threads=threads)
        self.screen = Refiner(threads=threads)
        self.pixels = pixels
        self.stages = stages or Stages()

    def finest(self, rgb: Image.Image) -> Image.Image:
        """The photo at the pixel budget (MTCNN's search starts from it too)."""
        return level_image(rgb, budget_scale(rgb.width, rgb.height, self.pixels))

    def __call__(self, rgb: Image.Image, finest: Image.Image) -> list[FaceBox]:
        """The faces in ``rgb`` (``finest``: the photo at the budget), framed as HOG's box with
        CenterFace's landmarks in dlib's layout."""
        scale = finest.width / rgb.width
        faces = self._verified(rgb, self._candidates(rgb, finest), scale)
        return [
            self.face_box(box, float(score), points)
            for score, box, points in zip(faces.scores, faces.boxes, faces.keypoints, strict=True)
        ]

    @staticmethod
    def face_box(box: np.ndarray, score: float, points: np.ndarray) -> FaceBox:
        framed = utk_box(box, score, None, CENTERFACE_BOX_IN_CROP)
        return FaceBox(framed.x, framed.y, framed.w, framed.h, score, dlib_layout(points))

    def _candidates(self, rgb: Image.Image, finest: Image.Image) -> Detections:
        """The candidates of the run at the budget and of one COARSE_STEP times smaller (a
        face that fills much of the photo), in ``rgb``'s pixels, blended (``weighted_nms``)."""
        found = []
        # The coarse level's faces are large: only its sure ones count (a look is for small faces).
        for level, min_score in ((finest, CANDIDATE_SCORE), (coarser(finest), FACE_SCORE)):
            if level is None:
                continue
            with self.stages(f"CenterFace {level.width}x{level.height}"):
                hits = self.network(padded(np.asarray(level)), min_score)
            back = np.array([rgb.width / level.width, rgb.height / level.height])
            found.append(
                Detections(
                    hits.scores,
                    (hits.boxes.reshape(-1, 2, 2) * back).reshape(-1, 4),
                    hits.keypoints * back,
                )
            )
        return merged_levels(found)

    def _verified(self, rgb: Image.Image, candidates: Detections, scale: float) -> Detections:
        """The candidates scoring FACE_SCORE, and those below it, smaller than LOOK_FACE px in
        the run (``scale``: its pixels per photo pixel), that score LOOK_SCORE in a second look
        (``_to_look`` chooses which get one): a larger face is seen well enough already."""
        sure = candidates.scores >= FACE_SCORE
        heights = (candidates.boxes[:, 3] - candidates.boxes[:, 1]) * scale
        kept = [
            (float(candidates.scores[i]), candidates.boxes[i], candidates.keypoints[i])
            for i in np.flatnonzero(sure)
        ]
        small = ~sure & (heights < LOOK_FACE)
        with self.stages("second looks"):
            for box in self._to_look(rgb, candidates.boxes[small], candidates.scores[small]):
                again = self._look_again(rgb, box)
                if again is not None:
                    kept.append(again)
        if not kept:
            return Detections.none()
        scores, boxes, points = zip(*kept, strict=True)
        return weighted_nms(Detections(np.array(scores), np.array(boxes), np.array(points)))

    def _to_look(self, rgb: Image.Image, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """The boxes that get a second look, at most MAX_LOOKS: first those whose square (about
        the box's centre, its height a side: a low-scoring cell's width can be anything) RNet
        scores SCREEN_SCORE or more, likeliest first; then those of the rest that score
        UNSCREENED_SCORE in the run (``scores``), best first."""
        if not len(boxes) or not MAX_LOOKS:
            return boxes[:0]
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        half = np.maximum(boxes[:, 3:] - boxes[:, 1:2], 1.0) / 2
        screen, _ = self.screen(rgb, np.concatenate([centres - half, centres + half], axis=1))
        faces = np.flatnonzero(screen >= SCREEN_SCORE)
        rest = np.flatnonzero((screen < SCREEN_SCORE) & (scores >= UNSCREENED_SCORE))
        order = [*faces[np.argsort(-screen[faces], kind="stable")],
                 *rest[np.argsort(-scores[rest], kind="stable")]]  # fmt: skip
        return boxes[order[:MAX_LOOKS]]

    def _look_again(
        self, rgb: Image.Image, box: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray] | None:
        """The face in a window LOOK_WINDOW times ``box``'s height around its centre, read so
        that the face is LOOK_FACE px; None when none scores LOOK_SCORE near the middle."""
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        height = max(box[3] - box[1], 1.0)
        side = -(-round(LOOK_WINDOW * LOOK_FACE) // MULTIPLE) * MULTIPLE
        f = height / LOOK_FACE  # photo pixels per window pixel
        left, top = cx - f * side / 2, cy - f * side / 2
        window = rgb.transform(
            (side, side),
            Image.Transform.AFFINE,
            (f, 0.0, left, 0.0, f, top),
            resample=Image.Resampling.BILINEAR,
        )
        hits = self.network(np.asarray(window), LOOK_SCORE)
        mid = (hits.boxes[:, :2] + hits.boxes[:, 2:]) / 2
        near = np.flatnonzero(np.hypot(*(mid - side / 2).T) < LOOK_FACE / 2)
        if not len(near):
            return None
        best = near[np.argmax(hits.scores[near])]
        origin = np.array([left, top])
        return (
            float(hits.scores[best]),
            (hits.boxes[best].reshape(2, 2) * f + origin).ravel(),
            hits.keypoints[best] * f + origin,
        )
