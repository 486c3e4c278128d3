"""Retraining an exported learner's head on its frozen features (agegroup.training.head)."""

import json

import numpy as np
import torch
from PIL import Image

from agegroup.predictor import FastaiPredictor
from agegroup.training.head import VIEWS, main, teacher_trust, view_of
from testsupport.images import synthetic_faces
from testsupport.learner import export_tiny_learner


def synthetic_utkface(root, count=48, size=40):
    folder = root / "utk" / "UTKFace"
    folder.mkdir(parents=True)
    for i, face in enumerate(synthetic_faces(count, size)):
        name = f"{(i * 7) % 90 + 1}_{i % 2}_{i % 5}_2017{i:09d}.jpg.chip.jpg"
        Image.fromarray(face).save(folder / name)
    return root / "utk"


def test_views_are_fixed_per_face_and_differ_from_the_clean_one():
    face = synthetic_faces(1, 64)[0]
    clean, degraded, tight = (np.asarray(view_of(face, "a.jpg", v)) for v in VIEWS)
    assert np.array_equal(clean, face)
    assert np.array_equal(np.asarray(view_of(face, "a.jpg", "degraded")), degraded)
    assert np.array_equal(np.asarray(view_of(face, "a.jpg", "tight")), tight)
    assert degraded.shape != clean.shape or not np.array_equal(degraded, clean)
    assert tight.shape != clean.shape or not np.array_equal(tight, clean)


def test_the_teachers_trust_is_its_accuracy_in_each_true_group():
    teacher = np.eye(7)[[0, 0, 1, 6, 5]]
    truth = np.array([0, 1, 1, 6, 6])
    trust = teacher_trust(teacher, truth)
    assert trust[0] == 1.0 and trust[1] == 0.5 and trust[6] == 0.5 and trust[3] == 0.0


def test_only_the_head_changes_and_the_result_loads_like_any_served_learner(tmp_path):
    learner = export_tiny_learner(tmp_path / "tiny.pkl", ages=True)
    data = synthetic_utkface(tmp_path)
    run = tmp_path / "run"
    args = [str(learner), "--data", str(data), "--cache", str(tmp_path / "cache")]
    args += ["--epochs", "2", "--bs", "8", "--run-dir", str(run), "--threads", "1"]
    main(args)
    before = FastaiPredictor(learner, tmp_path, calibrated=False).learn.model
    after = FastaiPredictor(run / "export.pkl", tmp_path, calibrated=False).learn.model
    for old, new in zip(before[0].state_dict().values(), after[0].state_dict().values()):
        assert torch.equal(old.float(), new.float())  # the body is frozen
    changed = [
        not torch.equal(old.float(), new.float())
        for old, new in zip(before[1].state_dict().values(), after[1].state_dict().values())
    ]
    assert any(changed)
    history = json.loads((run / "history.json").read_text())
    assert [row["epoch"] for row in history] == ["start", 0, 1]
    assert set(history[1]["valid_bias"]["male"]) == {"0-20", "21-40", "41-60", "61+"}
    assert json.loads((run / "args.json").read_text())["balance"] == "race-gender"

    # A second run on the same learner and views reuses the features instead of recomputing.
    stamp = (run / "features.npz").stat().st_mtime_ns
    main([*args, "--epochs", "1", "--mean-weight", "0"])
    assert (run / "features.npz").stat().st_mtime_ns == stamp
    # Another learner's features are not reused.
    other = export_tiny_learner(tmp_path / "other.pkl", ages=True)
    main([str(other), *args[1:], "--epochs", "1"])
    assert (run / "features.npz").stat().st_mtime_ns != stamp
