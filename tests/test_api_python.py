"""The Python API: ``AgeGroupDetector.predict`` on a path, the bytes and a PIL image gives the
JSON API's answer for the same photo; bad photos raise the API's errors; importing it loads
neither Flask nor torch.

The detector is the real one, loading the tiny exported learner (and its ONNX twin) through
the same loaders as the server, with the real face detector.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from agegroup.config import PROJECT_ROOT, Settings
from agegroup.errors import CorruptImage, ModelUnavailable, UnsupportedImage
from agegroup.pipeline import AgeGroupDetector, UnreadableFile
from testsupport.batch import EXAMPLES, portrait, unreadable_files
from testsupport.uploads import image_bytes, post


def without_time(answer: dict) -> dict:
    return {key: value for key, value in answer.items() if key != "elapsed_ms"}


@pytest.fixture(scope="module")
def detector(settings: Settings) -> AgeGroupDetector:
    return AgeGroupDetector(settings=settings)


@pytest.fixture()
def portrait_file(tmp_path: Path) -> Path:
    path = tmp_path / "portrait.jpg"
    path.write_bytes(image_bytes(portrait(1), "JPEG", quality=90))
    return path


def test_path_bytes_and_pil_image_give_the_json_apis_answer(detector, client, portrait_file):
    data = portrait_file.read_bytes()
    served = post(client, data)
    assert served.status_code == 200
    api = without_time(served.get_json())

    by_path = detector.predict(portrait_file)
    by_text_path = detector.predict(str(portrait_file))
    by_bytes = detector.predict(data)
    with Image.open(portrait_file) as image:
        by_image = detector.predict(image)

    assert by_path["faces"][0]["face_found"] is True
    for answer in (by_path, by_text_path, by_bytes, by_image):
        assert set(answer) == {"model", "image", "faces", "warnings", "elapsed_ms"}
        assert answer["elapsed_ms"] > 0
        # Everything the server answers, the API answers alike (the server adds its links).
        assert without_time(answer) == {key: api[key] for key in without_time(answer)}
        json.dumps(answer)  # plain data, as documented


def test_a_pil_image_is_turned_upright_by_its_exif_like_an_upload(detector, tmp_path):
    upright = portrait(2)
    # Stored lying on its side with orientation 6 (turn 90 degrees clockwise to view).
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    data = image_bytes(sideways, "JPEG", quality=95, exif=exif.tobytes())
    from_bytes = detector.predict(data)
    with Image.open(io.BytesIO(data)) as image:
        from_image = detector.predict(image)
    assert from_bytes["image"] == {"width": upright.width, "height": upright.height}
    assert without_time(from_image) == without_time(from_bytes)


def test_transparent_and_grey_images_read_as_their_uploads(detector):
    clear = portrait(3).convert("RGBA")
    clear.paste((0, 0, 0, 0), (0, 0, 40, 40))  # a transparent corner: white on the server
    grey = portrait(4).convert("L")
    for image in (clear, grey):
        png = image_bytes(image, "PNG")
        assert without_time(detector.predict(image)) == without_time(detector.predict(png))


def test_bad_photos_raise_the_apis_errors(detector, tmp_path):
    (text_name, text), (cut_name, cut) = unreadable_files()
    with pytest.raises(UnsupportedImage) as unsupported:
        detector.predict(text)
    assert unsupported.value.code == "unsupported_type"
    with pytest.raises(CorruptImage) as corrupt:
        detector.predict(cut)
    assert corrupt.value.code == "corrupt_image"
    with pytest.raises(UnreadableFile) as missing:
        detector.predict(tmp_path / "missing.jpg")
    assert missing.value.code == "unreadable_file"
    assert "missing.jpg" in missing.value.message
    assert "No such file" in missing.value.message
    with pytest.raises(UnreadableFile):
        detector.predict(tmp_path)  # a folder
    with pytest.raises(TypeError, match="path, bytes or a PIL image"):
        detector.predict(42)  # type: ignore[arg-type]


def test_onnx_runtime_gives_the_learners_answer(detector, onnx_dir):
    twin = AgeGroupDetector(runtime="onnx", model_path=onnx_dir / "export.pkl")
    assert twin.settings.runtime == "onnx"
    assert twin.info == detector.info
    group = (EXAMPLES / "group.jpg").read_bytes()
    fastai_faces = detector.predict(group)["faces"]
    onnx_faces = twin.predict(group)["faces"]
    assert len(onnx_faces) == len(fastai_faces) == 5
    for ours, theirs in zip(onnx_faces, fastai_faces):
        assert ours["box"] == theirs["box"]
        for bucket, p in theirs["probabilities"].items():
            assert ours["probabilities"][bucket] == pytest.approx(p, abs=2e-4)


def test_a_runtime_that_does_not_exist_is_refused(settings):
    with pytest.raises(ModelUnavailable, match="'fastai' or 'onnx'"):
        AgeGroupDetector(runtime="tensorflow", settings=settings)


def test_neither_flask_nor_torch_is_loaded_by_the_package_or_the_onnx_runtime(onnx_dir):
    code = (
        "import sys, agegroup\n"
        "heavy = ('flask', 'werkzeug', 'torch', 'fastai', 'onnxruntime', 'dlib')\n"
        "print([m for m in heavy if m in sys.modules])\n"
        "detector = agegroup.AgeGroupDetector(runtime='onnx', model_path=sys.argv[1])\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(onnx_dir / "export.pkl")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    # Importing loads nothing heavy; the ONNX runtime loads its own libraries, never Flask.
    assert done.stdout.splitlines() == ["[]", "['onnxruntime', 'dlib']"]
