"""Ages: groups as sums over the age distribution, the estimate and its interval, calibration
written into the last layer, the corruptions of the degraded test set and the tight framing."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from agegroup.ages import (
    AGE_CLASSES,
    MAX_AGE,
    clamp_age,
    estimate_age,
    estimate_ages,
    is_age_model,
    to_groups,
)
from agegroup.buckets import BUCKETS, bucket_for_age
from testsupport.images import synthetic_faces


def uniform_over(low: int, high: int) -> np.ndarray:
    p = np.zeros(MAX_AGE + 1)
    p[low : high + 1] = 1.0
    return p / p.sum()


def test_group_probabilities_are_sums_over_each_groups_ages():
    p = np.zeros(MAX_AGE + 1)
    p[[10, 11, 60, 61, 100]] = [0.1, 0.2, 0.3, 0.15, 0.25]
    groups = to_groups(p[None, :], AGE_CLASSES)[0]
    expected = dict(zip(BUCKETS, [0.1, 0.2, 0, 0, 0, 0.3, 0.4], strict=True))
    assert groups == pytest.approx([expected[b] for b in BUCKETS])


def test_a_group_model_passes_through_and_has_no_age_estimate():
    p = np.full((2, 7), 1 / 7)
    assert not is_age_model(BUCKETS)
    assert to_groups(p, BUCKETS) is not None and np.array_equal(to_groups(p, BUCKETS), p)
    assert estimate_ages(p, BUCKETS) is None


def test_the_estimate_is_the_expected_age_and_the_interval_holds_the_central_80_percent():
    estimate = estimate_age(uniform_over(20, 29))  # ten equally likely ages
    assert estimate.estimate == pytest.approx(24.5)
    assert (estimate.low, estimate.high) == (20, 28)  # 10% below 20.x; 90% reached at 28
    peaked = np.zeros(MAX_AGE + 1)
    peaked[7] = 1.0
    single = estimate_age(peaked)
    assert (single.estimate, single.low, single.high) == (7.0, 7, 7)
    assert single.to_json() == {"estimate": 7.0, "interval": [7, 7]}


def test_ages_above_the_grid_count_as_its_last_age():
    assert clamp_age(116) == MAX_AGE and clamp_age(0) == 0 and clamp_age(35) == 35


def test_the_degraded_copy_of_a_file_is_fixed_by_its_name_whatever_the_random_state():
    from agegroup.training.degrade import degrade, degraded_copy

    face = Image.fromarray(synthetic_faces(1, 200, seed=4)[0])
    random.seed(1)
    first = np.asarray(degraded_copy(face, "34_0_1_2017.jpg.chip.jpg"))
    random.seed(2)
    again = np.asarray(degraded_copy(face, "34_0_1_2017.jpg.chip.jpg"))
    other = np.asarray(degraded_copy(face, "35_0_1_2017.jpg.chip.jpg"))
    assert first.shape == (200, 200, 3) and np.array_equal(first, again)
    assert not np.array_equal(first, np.asarray(face))  # at least one corruption applied
    assert not np.array_equal(first, other)
    # Every corruption keeps the size and mode, at the training size too.
    small = Image.fromarray(synthetic_faces(1, 96, seed=5)[0])
    for seed in range(30):
        out = degrade(small, random.Random(seed))
        assert out.size == (96, 96) and out.mode == "RGB"


def test_a_tight_framing_keeps_the_middle_of_the_crop_and_repeats_its_edges_past_it():
    from agegroup.training.degrade import tight_copy, tight_framing

    noise = np.random.default_rng(3).integers(0, 256, (96, 96, 3), np.uint8)
    face = Image.fromarray(noise)
    for seed in range(20):
        out = np.asarray(tight_framing(face, random.Random(seed)))
        assert out.shape == (96, 96, 3)
        kept = (out == noise).all(axis=2)  # the part still the photo (noise repeats nowhere)
        rows, cols = np.flatnonzero(kept.any(axis=1)), np.flatnonzero(kept.any(axis=0))
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        assert kept[top:bottom, left:right].all() and kept.sum() == (bottom - top) ** 2
        assert 0.5 * 96 - 1 <= bottom - top <= 0.9 * 96 + 1 and bottom - top == right - left
        assert abs((top + bottom) / 2 - 48) <= 0.04 * 96 + 1  # about the crop's centre
        assert (out[:top, left:right] == out[top, left:right]).all()  # above: its first row
        assert (out[bottom:, left:right] == out[bottom - 1, left:right]).all()
        assert (out[top:bottom, :left] == out[top:bottom, left : left + 1]).all()
        assert (out[top:bottom, right:] == out[top:bottom, right - 1 : right]).all()
    name = "34_0_1_2017.jpg.chip.jpg"
    assert np.array_equal(np.asarray(tight_copy(face, name)), np.asarray(tight_copy(face, name)))
    assert not np.array_equal(np.asarray(tight_copy(face, name)), np.asarray(tight_copy(face, "x")))


def test_calibration_picks_a_prior_correction_for_a_biased_model():
    from agegroup.ages import GROUP_OF_AGE
    from agegroup.training.calibrate import TAU_TIE, fit

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 7, 700)
    # A model that knows the group but adds a pull towards 21-30's ages (the training prior).
    logits = rng.normal(0, 1, (700, MAX_AGE + 1))
    for i, group in enumerate(truth):
        logits[i, GROUP_OF_AGE[:, group] > 0] += 1.5
    logits[:, 21:31] += 2.0
    log_probs = torch.log_softmax(torch.tensor(logits), dim=1).numpy()
    prior = np.array([0.12, 0.06, 0.33, 0.18, 0.09, 0.1, 0.12])
    calibration, report = fit(log_probs, log_probs, truth, prior, GROUP_OF_AGE, "abc")
    assert report["tau"] > 0
    by_tau = {c["tau"]: c for c in report["candidates"]}
    assert by_tau[report["tau"]]["balanced_accuracy"] > by_tau[0.0]["balanced_accuracy"]
    # Chosen for balanced accuracy (uploads are not spread over the groups like UTKFace): the
    # weakest correction of those as good as the best.
    best = max(c["balanced_accuracy"] for c in report["candidates"])
    assert by_tau[report["tau"]]["balanced_accuracy"] >= best - TAU_TIE
    weaker = [c for c in report["candidates"] if c["tau"] < report["tau"]]
    assert all(c["balanced_accuracy"] < best - TAU_TIE for c in weaker)
    # The offsets are -tau * log prior of each age's group: 21-30's ages are pushed down most.
    offsets = np.array(calibration.offsets)
    assert offsets[25] < offsets[15] and offsets[25] == pytest.approx(report["tau"] * -np.log(0.33))
    assert calibration.source_sha256 == "abc"


def test_a_stronger_correction_no_better_than_a_weaker_one_is_not_chosen():
    from agegroup.training.calibrate import weakest_best_tau

    def candidates(*balanced: float) -> list[dict[str, float]]:
        return [{"tau": t, "balanced_accuracy": b} for t, b in zip((0, 0.5, 1), balanced)]

    assert weakest_best_tau(candidates(0.55, 0.5932, 0.5933)) == 0.5  # 0.01 points: a tie
    assert weakest_best_tau(candidates(0.55, 0.5815, 0.5867)) == 1  # 0.5 points: not
    assert weakest_best_tau(candidates(0.60, 0.58, 0.59)) == 0


def test_both_runtimes_apply_the_calibration_beside_the_model_and_refuse_a_stale_one(
    age_model_dir, tmp_path
):
    import json
    import shutil

    from agegroup.calibration import Calibration
    from agegroup.errors import ModelUnavailable
    from agegroup.onnx_runtime import OnnxPredictor
    from agegroup.predictor import FastaiPredictor, file_sha256

    for name in ("export.pkl", "export.onnx"):
        shutil.copy(age_model_dir / name, tmp_path / name)
    faces = [Image.fromarray(a) for a in synthetic_faces(3, 200, seed=9)]
    raw = FastaiPredictor(tmp_path / "export.pkl", tmp_path).predict(faces)
    offsets = tuple(float(v) for v in np.linspace(-2, 2, MAX_AGE + 1))
    calibration = Calibration(offsets, 1.7, file_sha256(tmp_path / "export.pkl"))
    (tmp_path / "export.calibration.json").write_text(json.dumps(calibration.to_json()))
    logits = (np.log(raw) + np.array(offsets)) / 1.7
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for predictor in (
        FastaiPredictor(tmp_path / "export.pkl", tmp_path),
        OnnxPredictor(tmp_path / "export.onnx", tmp_path),
    ):
        assert np.abs(predictor.predict(faces) - expected).max() < 1e-4
    stale = Calibration(offsets, 1.7, "0" * 64)
    (tmp_path / "export.calibration.json").write_text(json.dumps(stale.to_json()))
    with pytest.raises(ModelUnavailable, match="another learner"):
        FastaiPredictor(tmp_path / "export.pkl", tmp_path)
    with pytest.raises(ModelUnavailable, match="another learner"):
        OnnxPredictor(tmp_path / "export.onnx", tmp_path)


@pytest.fixture(scope="module")
def age_model_dir(tmp_path_factory: pytest.TempPathFactory):
    from agegroup.training.onnx_export import export_onnx
    from testsupport.learner import export_tiny_learner

    folder = tmp_path_factory.mktemp("age_model")
    export_tiny_learner(folder / "export.pkl", ages=True)
    export_onnx(folder / "export.pkl")
    return folder


@pytest.mark.parametrize("runtime", ["fastai", "onnx"])
def test_both_runtimes_serve_the_estimated_age_consistent_with_the_groups(age_model_dir, runtime):
    from agegroup.config import Settings
    from agegroup.factory import create_app
    from testsupport.uploads import image_bytes

    settings = Settings(
        model_path=age_model_dir / "export.pkl", model_dir=age_model_dir, runtime=runtime
    )
    client = create_app(settings).test_client()
    photo = Image.fromarray(synthetic_faces(1, 120, seed=3)[0])
    response = client.post(
        "/api/predict", data={"image": (io.BytesIO(image_bytes(photo)), "a.jpg")}
    )
    assert response.status_code == 200
    face = response.get_json()["faces"][0]
    probabilities = face["probabilities"]
    assert list(probabilities) == list(BUCKETS)
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=4e-4)  # 4 decimals each
    age = face["age"]
    low, high = age["interval"]
    assert 0 <= low <= age["estimate"] <= high <= MAX_AGE
    # The groups are sums over the same distribution: the groups the interval spans hold at
    # least its 80% (what lies outside the interval is at most 20%).
    spanned = BUCKETS[BUCKETS.index(bucket_for_age(low)) : BUCKETS.index(bucket_for_age(high)) + 1]
    assert sum(probabilities[b] for b in spanned) >= 0.8 - 1e-6
    page = client.post(
        "/predict", data={"image": (io.BytesIO(image_bytes(photo)), "a.jpg")}, follow_redirects=True
    )
    assert page.status_code == 200
    assert f"about {age['estimate']:.0f}, likely {low}-{high}" in page.get_data(as_text=True)


def test_the_onnx_twin_of_an_age_model_gives_the_learners_age_probabilities(age_model_dir):
    from agegroup.onnx_runtime import OnnxPredictor
    from agegroup.predictor import FastaiPredictor

    faces = [Image.fromarray(a) for a in synthetic_faces(4, 200, seed=8)]
    ours = OnnxPredictor(age_model_dir / "export.onnx", age_model_dir)
    theirs = FastaiPredictor(age_model_dir / "export.pkl", age_model_dir)
    assert ours.info.classes == theirs.info.classes == AGE_CLASSES
    a, b = ours.predict(faces), theirs.predict(faces)
    assert a.shape == (4, MAX_AGE + 1) and np.abs(a - b).max() < 1e-4
