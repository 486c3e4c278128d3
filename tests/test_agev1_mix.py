"""age-v1's share in the served answer: read from the model's calibration file, applied by
both runtimes and by the app, refused where it cannot apply."""

import io
import json
import shutil

import numpy as np
import pytest

from agegroup.ages import AGE_CLASSES, GROUP_OF_AGE
from agegroup.agev1 import AgeV1, TeacherMix, as_served, to_age_grid
from agegroup.calibration import calibration_path
from agegroup.config import Settings
from agegroup.errors import ModelUnavailable
from agegroup.factory import create_app, load_predictor
from agegroup.predictor import FastaiPredictor, file_sha256
from testsupport.learner import export_tiny_learner


@pytest.fixture(scope="module")
def age_model(tmp_path_factory):
    """A tiny age learner with a calibration file that gives age-v1 a 0.3 share."""
    folder = tmp_path_factory.mktemp("age-model")
    path = export_tiny_learner(folder / "export.pkl", ages=True)
    calibration = {
        "offsets": np.linspace(-1, 1, len(AGE_CLASSES)).tolist(),
        "temperature": 2.0,
        "source_sha256": file_sha256(path),
        "agev1_share": 0.3,
    }
    calibration_path(path).write_text(json.dumps(calibration))
    return path


@pytest.fixture(scope="module")
def agev1():
    return AgeV1()


def test_age_v1_classes_land_on_whole_ages_and_sum_to_one():
    rows = np.zeros((1, 81))
    rows[0, 0] = 0.5  # the 0.25-year class is age 0
    rows[0, 80] = 0.5
    grid = to_age_grid(rows)
    assert grid.shape == (1, len(AGE_CLASSES))
    assert grid[0, 0] == grid[0, 80] == 0.5 and grid[0, 81:].sum() == 0


def test_the_served_answer_is_the_mix_calibrated_as_a_whole(age_model, agev1, grace_crop):
    served = as_served(FastaiPredictor(age_model, age_model.parent))
    assert isinstance(served, TeacherMix) and served.share == 0.3
    assert served.info.name == "tiny-test-model+age-v1"
    # The mix took the calibration over: the network answers uncalibrated.
    assert served.network.calibration is None and served.calibration.temperature == 2.0
    raw = FastaiPredictor(age_model, age_model.parent, calibrated=False).predict([grace_crop])
    mixed = 0.7 * raw + 0.3 * agev1.predict([grace_crop])
    offsets = np.linspace(-1, 1, len(AGE_CLASSES))
    logits = (np.log(mixed) + offsets) / 2.0
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(served.predict([grace_crop]), expected, atol=1e-9)
    # Grace Hopper was 78: age-v1 alone puts most of her in 61+.
    assert (agev1.predict([grace_crop]) @ GROUP_OF_AGE)[0].argmax() == 6


def test_the_app_serves_the_mix_through_its_api(age_model, grace):
    settings = Settings(model_path=age_model, model_dir=age_model.parent)
    predictor = load_predictor(settings)
    assert isinstance(predictor, TeacherMix)
    app = create_app(settings, predictor=predictor)
    body = io.BytesIO()
    grace.save(body, "JPEG")
    answer = app.test_client().post(
        "/api/predict", data={"image": (io.BytesIO(body.getvalue()), "grace.jpg")}
    )
    assert answer.status_code == 200
    assert answer.json["model"]["name"] == "tiny-test-model+age-v1"
    face = answer.json["faces"][0]
    assert "estimate" in face["age"] and sum(face["probabilities"].values()) == pytest.approx(
        1, abs=4e-4
    )


def test_without_a_share_the_network_is_served_alone(tmp_path, age_model):
    shutil.copy(age_model, tmp_path / "export.pkl")
    network = FastaiPredictor(tmp_path / "export.pkl", tmp_path)
    assert as_served(network) is network


def test_a_share_outside_zero_to_one_or_beside_a_group_model_is_refused(
    tmp_path, age_model, model_dir, agev1
):
    shutil.copy(age_model, tmp_path / "export.pkl")
    saved = json.loads(calibration_path(age_model).read_text())
    calibration_path(tmp_path / "export.pkl").write_text(json.dumps(saved | {"agev1_share": 1.5}))
    with pytest.raises(ModelUnavailable, match="agev1_share"):
        FastaiPredictor(tmp_path / "export.pkl", tmp_path)
    groups_only = FastaiPredictor(model_dir / "export.pkl", model_dir)
    with pytest.raises(ModelUnavailable, match="ages 0-100"):
        TeacherMix(groups_only, agev1, 0.3, None)
