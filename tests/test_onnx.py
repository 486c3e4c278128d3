"""The ONNX runtime (AGE_RUNTIME=onnx): the learner's probabilities from its ONNX model, never
torch, and a deploy that uses it."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agegroup.config import PROJECT_ROOT, UTKFACE_DIR, Settings
from agegroup.errors import ModelUnavailable
from agegroup.factory import create_app
from agegroup.onnx_runtime import OnnxPredictor, onnx_model_path
from agegroup.predictor import FastaiPredictor
from agegroup.preprocess import to_model_input
from agegroup.training.data import image_dir_of, spread_test_crops
from agegroup.training.onnx_export import TOLERANCE, main
from testsupport.images import synthetic_faces
from testsupport.uploads import image_bytes, post

HAS_UTKFACE = image_dir_of(UTKFACE_DIR).is_dir()


@pytest.fixture(scope="module")
def onnx_predictor(onnx_dir: Path) -> OnnxPredictor:
    return OnnxPredictor(onnx_dir / "export.onnx", onnx_dir)


@pytest.fixture(scope="module")
def reference(onnx_dir: Path) -> FastaiPredictor:
    return FastaiPredictor(onnx_dir / "export.pkl", onnx_dir)


def varied_faces() -> list[Image.Image]:
    """Sizes above, at and below the model's input, and modes other than RGB."""
    faces = [Image.fromarray(a) for a in synthetic_faces(3, 200, seed=5)]
    faces.append(Image.fromarray(synthetic_faces(1, 32, seed=6)[0]))
    faces.append(Image.fromarray(synthetic_faces(1, 17, seed=7)[0]).convert("L"))
    faces.append(Image.fromarray(synthetic_faces(1, 90, seed=8)[0]).convert("RGBA"))
    return faces


def test_same_probabilities_as_fastai_predictor(onnx_predictor, reference) -> None:
    faces = varied_faces()
    batch = onnx_predictor.predict(faces)
    assert batch.shape == (len(faces), 7)
    assert np.allclose(batch.sum(axis=1), 1.0)
    assert np.abs(batch - reference.predict(faces)).max() < TOLERANCE
    # One at a time gives the same rows as a batch (the batch axis is dynamic).
    for face, row in zip(faces, batch):
        assert np.abs(onnx_predictor.predict([face])[0] - row).max() < TOLERANCE


def test_same_probabilities_as_learn_predict(onnx_predictor, reference) -> None:
    size = reference.info.input_size
    for face in varied_faces()[:4]:
        _, _, own = reference.learn.predict(to_model_input(face, size))
        assert np.abs(onnx_predictor.predict([face])[0] - own.float().numpy()).max() < TOLERANCE


@pytest.mark.skipif(not HAS_UTKFACE, reason="UTKFace is not beside the checkout")
def test_same_probabilities_on_utkface_test_crops(onnx_dir) -> None:
    from agegroup.training.onnx_export import compare

    result = compare(onnx_dir / "export.pkl", onnx_dir / "export.onnx", spread_test_crops(5))
    assert result["max_diff_vs_fastai_predictor"] < TOLERANCE
    assert result["max_diff_vs_learn_predict"] < TOLERANCE


def test_onnx_model_carries_the_learner_identity(onnx_predictor, reference) -> None:
    assert onnx_predictor.info == reference.info
    assert onnx_predictor.predict([]).shape == (0, 7)


def test_weights_are_stored_in_half_precision(onnx_dir) -> None:
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(onnx_dir / "export.onnx"))
    kinds = [init.data_type for init in model.graph.initializer if np.prod(init.dims) >= 16]
    assert kinds and set(kinds) == {TensorProto.FLOAT16}
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["vocab"])[0] == "0-10"
    assert int(meta["input_size"]) == 32


def test_cli_writes_the_same_file_again(onnx_dir, tmp_path) -> None:
    shutil.copy(onnx_dir / "export.pkl", tmp_path / "export.pkl")
    assert main([str(tmp_path / "export.pkl"), "--check", "0"]) == 0
    assert (tmp_path / "export.onnx").read_bytes() == (onnx_dir / "export.onnx").read_bytes()


def test_cli_says_so_instead_of_checking_on_noise_when_utkface_is_missing(
    onnx_dir, tmp_path, capsys
) -> None:
    shutil.copy(onnx_dir / "export.pkl", tmp_path / "export.pkl")
    missing = tmp_path / "no-utkface"
    assert main([str(tmp_path / "export.pkl"), "--check", "3", "--data", str(missing)]) == 2
    error = capsys.readouterr().err
    assert "UTKFace is not at" in error and "--check 0" in error


def test_refuses_an_onnx_model_of_another_learner(onnx_dir, tmp_path) -> None:
    shutil.copy(onnx_dir / "export.onnx", tmp_path / "export.onnx")
    (tmp_path / "export.pkl").write_bytes(b"a different learner")
    with pytest.raises(ModelUnavailable, match="not made from"):
        OnnxPredictor(tmp_path / "export.onnx", tmp_path)


def with_metadata(source: Path, target: Path, key: str, value: object) -> Path:
    """A copy of the ONNX model ``source`` whose metadata ``key`` says ``value`` (as JSON)."""
    import onnx

    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = json.dumps(value)
    onnx.save(model, str(target))
    return target


def test_refuses_an_onnx_model_made_for_another_normalisation(onnx_dir, tmp_path) -> None:
    other = with_metadata(onnx_dir / "export.onnx", tmp_path / "other.onnx", "mean", [0.5] * 3)
    with pytest.raises(ModelUnavailable, match="another normalisation"):
        OnnxPredictor(other, tmp_path)


def test_refuses_wrong_classes_and_broken_files(onnx_dir, tmp_path) -> None:
    with_metadata(onnx_dir / "export.onnx", tmp_path / "wrong.onnx", "vocab", ["young", "old"])
    with pytest.raises(ModelUnavailable, match="seven age groups"):
        OnnxPredictor(tmp_path / "wrong.onnx", tmp_path)
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        OnnxPredictor(tmp_path / "broken.onnx", tmp_path)
    with pytest.raises(ModelUnavailable, match="outside"):
        OnnxPredictor(onnx_dir / "export.onnx", tmp_path)


def test_app_serves_the_same_answer_with_either_runtime(onnx_dir, client) -> None:
    settings = Settings(
        model_path=onnx_dir / "export.pkl", model_dir=onnx_dir, max_upload_mb=1, runtime="onnx"
    )
    onnx_client = create_app(settings).test_client()
    photo = image_bytes(Image.fromarray(synthetic_faces(1, 160, seed=11)[0]))
    answers = [post(c, photo, filename="face.jpg") for c in (client, onnx_client)]
    assert [a.status_code for a in answers] == [200, 200]
    faces = [a.get_json()["faces"] for a in answers]
    assert len(faces[0]) == len(faces[1]) >= 1
    for ours, theirs in zip(faces[1], faces[0]):
        for bucket, value in theirs["probabilities"].items():
            assert abs(ours["probabilities"][bucket] - value) < TOLERANCE


def test_onnx_server_never_imports_torch_or_fastai(onnx_dir) -> None:
    script = """
import json, sys
from agegroup.factory import create_app
from PIL import Image
from testsupport.uploads import image_bytes, post
app = create_app()
photo = image_bytes(Image.new("RGB", (300, 200), (120, 90, 60)))
status = post(app.test_client(), photo).status_code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in
               {"torch", "torchvision", "fastai", "pandas", "matplotlib", "scipy"})
print(json.dumps({"status": status, "heavy": heavy}))
"""
    env = {
        **os.environ,
        "AGE_RUNTIME": "onnx",
        "AGE_MODEL_PATH": str(onnx_dir / "export.pkl"),
        "AGE_MODEL_DIR": str(onnx_dir),
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"status": 200, "heavy": []}


# --- the int8 model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_dir(onnx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny learner, its ONNX model, and that model quantized from 32 synthetic faces."""
    from agegroup.training.quantize import quantize

    folder = tmp_path_factory.mktemp("int8")
    for name in ("export.pkl", "export.onnx"):
        shutil.copy(onnx_dir / name, folder / name)
    size = OnnxPredictor(folder / "export.onnx", folder).info.input_size
    quantize(folder / "export.onnx", folder / "export.int8.onnx", synthetic_faces(32, size), size)
    return folder


def test_int8_model_is_quantized_and_predicts_like_the_float_model(int8_dir) -> None:
    import onnx

    graph = onnx.load(str(int8_dir / "export.int8.onnx")).graph
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)
    assert any(init.data_type == onnx.TensorProto.INT8 for init in graph.initializer)
    int8 = OnnxPredictor(int8_dir / "export.int8.onnx", int8_dir)
    float_model = OnnxPredictor(int8_dir / "export.onnx", int8_dir)
    assert int8.precision == "int8" and float_model.precision == "float"
    assert int8.info == float_model.info  # name, version, input size and classes carried over
    faces = varied_faces()
    ours, theirs = int8.predict(faces), float_model.predict(faces)
    assert np.allclose(ours.sum(axis=1), 1.0)
    assert 0 < np.abs(ours - theirs).max() < 0.05  # quantized, and close


def test_int8_model_is_served_with_the_precision_setting(int8_dir, monkeypatch) -> None:
    monkeypatch.setenv("AGE_RUNTIME", "onnx")
    monkeypatch.setenv("AGE_ONNX_PRECISION", "int8")
    monkeypatch.setenv("AGE_MODEL_PATH", str(int8_dir / "export.pkl"))
    settings = Settings.from_env()
    assert onnx_model_path(settings) == int8_dir / "export.int8.onnx"
    app = create_app(settings)
    assert app.extensions["agegroup"].predictor.precision == "int8"
    photo = image_bytes(Image.fromarray(synthetic_faces(1, 120, seed=3)[0]))
    response = post(app.test_client(), photo, filename="face.jpg")
    assert response.status_code == 200

    monkeypatch.setenv("AGE_ONNX_PRECISION", "int4")
    broken = create_app(Settings.from_env())
    health = broken.test_client().get("/healthz")
    assert health.status_code == 503
    assert "AGE_ONNX_PRECISION must be 'float' or 'int8'" in health.get_data(as_text=True)


def test_refuses_an_int8_model_of_another_learner(int8_dir, tmp_path) -> None:
    shutil.copy(int8_dir / "export.int8.onnx", tmp_path / "export.int8.onnx")
    (tmp_path / "export.pkl").write_bytes(b"a different learner")
    with pytest.raises(ModelUnavailable, match="agegroup.training.quantize"):
        OnnxPredictor(tmp_path / "export.int8.onnx", tmp_path)


# --- the deploy -----------------------------------------------------------------------------


def _requirements(name: str) -> dict[str, str]:
    lines = (PROJECT_ROOT / name).read_text().splitlines()
    found = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            package = line.split(";")[0]
            for mark in ("==", ">=", "<=", "~=", "<", ">", "["):
                package = package.split(mark)[0]
            found[package.strip().lower()] = line
    return found


def test_render_requirements_are_the_runtime_ones_without_torch() -> None:
    full, render = _requirements("requirements.txt"), _requirements("requirements-render.txt")
    assert not {"torch", "torchvision", "fastai", "onnx"} & set(render)
    assert "onnxruntime" in render
    for package, line in render.items():
        assert full.get(package) == line, f"{package} differs from requirements.txt"
    # Everything else the app needs at run time is there too.
    assert set(full) - set(render) <= {"torch", "torchvision", "fastai", "onnx"}


def test_render_blueprint_starts_what_the_procfile_starts() -> None:
    import yaml

    blueprint = yaml.safe_load((PROJECT_ROOT / "render.yaml").read_text())
    (service,) = blueprint["services"]
    procfile = (PROJECT_ROOT / "Procfile").read_text().split("web:", 1)[1].strip()
    assert shlex.split(service["startCommand"]) == shlex.split(procfile)
    assert service["plan"] == "free"
    assert "requirements-render.txt" in service["buildCommand"]
    env = {item["key"]: str(item["value"]) for item in service["envVars"] if "value" in item}
    assert env["AGE_RUNTIME"] == "onnx"
    assert env["AGE_ONNX_PRECISION"] == "int8"  # the committed, checked export.int8.onnx
    assert onnx_model_path(Settings(onnx_precision="int8")).is_file()
    assert env["WEB_CONCURRENCY"] == "1"
    assert service["healthCheckPath"] == "/healthz"


def test_committed_onnx_model_matches_the_committed_learner() -> None:
    """model/export.onnx gives model/export.pkl's probabilities on the bundled example photos,
    and carries its name, version and classes."""
    settings = Settings()
    if not onnx_model_path(settings).exists():
        pytest.skip("no model/export.onnx committed yet")
    # OnnxPredictor refuses an ONNX model made from another learner (its sha256 differs).
    onnx_model = OnnxPredictor(onnx_model_path(settings), settings.model_dir)
    learner = FastaiPredictor(settings.model_path, settings.model_dir)
    assert onnx_model.info == learner.info
    examples = sorted((PROJECT_ROOT / "static" / "examples").glob("*.jpg"))
    photos = [Image.open(path) for path in examples]
    ours, theirs = onnx_model.predict(photos), learner.predict(photos)
    assert ours.shape == (len(photos), len(onnx_model.info.classes))  # 7 groups or 101 ages
    assert np.abs(ours - theirs).max() < TOLERANCE


@pytest.mark.skipif(not HAS_UTKFACE, reason="needs UTKFace (AGE_UTKFACE_DIR)")
def test_committed_int8_model_answers_like_the_float_model() -> None:
    from agegroup.ages import to_groups
    from agegroup.predictor import predict_flip_averaged

    int8 = OnnxPredictor(onnx_model_path(Settings(onnx_precision="int8")), Settings().model_dir)
    float_model = OnnxPredictor(onnx_model_path(Settings()), Settings().model_dir)
    assert int8.precision == "int8" and int8.info == float_model.info
    assert int8.calibration == float_model.calibration  # the learner's calibration file, both
    faces = spread_test_crops(40)
    ours = to_groups(predict_flip_averaged(int8, faces), int8.info.classes)
    theirs = to_groups(predict_flip_averaged(float_model, faces), float_model.info.classes)
    assert np.mean(ours.argmax(1) == theirs.argmax(1)) >= 0.9
    assert np.abs(ours - theirs).max() < 0.25
