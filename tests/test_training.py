"""The training path on synthetic images: one real ResNet50 batch, export and load; the commands
(train, teacher, pack, mix) end to end with a tiny network in ResNet50's place."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from fastai.learner import load_learner
from PIL import Image

from agegroup.ages import AGE_CLASSES
from agegroup.buckets import BUCKETS
from agegroup.config import PROJECT_ROOT
from agegroup.predictor import FastaiPredictor
from agegroup.training.data import list_samples
from agegroup.training.learner import CachedImages, LearnerConfig, build_learner, export_learner
from testsupport.images import synthetic_faces

# The training commands with testsupport's tiny CNN as their network: the commands' whole path
# (data, loaders, losses, checkpoints, export) runs for real, in seconds.
TINY = ["--arch", "testsupport.learner:tiny_cnn"]


def test_resnet50_trains_a_batch_and_exports_a_loadable_half_precision_learner(tmp_path):
    images = synthetic_faces(16, 32)
    buckets = [i % len(BUCKETS) for i in range(16)]
    learn = build_learner(images, buckets, [0, 1, 2, 3], LearnerConfig(size=32, batch_size=12))
    before = [p.detach().clone() for p in learn.model.parameters()]
    learn.fit(1, 1e-3)  # one training batch of 12 synthetic images
    assert any(not torch.equal(a, b) for a, b in zip(before, learn.model.parameters(), strict=True))

    path = export_learner(learn, tmp_path / "export.pkl", name="smoke", version="1")
    assert path.stat().st_size < 60_000_000  # fp16 weights: about half of fp32's ~100 MB

    loaded = load_learner(path, cpu=True)
    assert list(loaded.dls.vocab) == list(BUCKETS)
    assert next(loaded.model.parameters()).dtype == torch.float16
    bottlenecks = [m for m in loaded.model.modules() if type(m).__name__ == "Bottleneck"]
    assert len(bottlenecks) == 16  # ResNet50: 3 + 4 + 6 + 3 blocks

    predictor = FastaiPredictor(path, tmp_path)
    face = Image.fromarray(images[5])
    probabilities = predictor.predict([face, face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    assert probabilities.shape == (2, 7)
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert predictor.info.input_size == 32 and predictor.info.name == "smoke"


def test_the_image_cache_is_not_pickled_with_the_learner():
    getter = CachedImages(np.zeros((1000, 64, 64, 3), dtype=np.uint8))
    restored = pickle.loads(pickle.dumps(getter))
    assert restored.images is None
    image = Image.new("RGB", (8, 8))
    assert restored(image) is image  # at serving time items are images, passed through


def test_the_command_line_trains_exports_and_resumes_after_an_interruption(tmp_path):

    from agegroup.training.train import main

    data = _synthetic_utkface(tmp_path)
    run = tmp_path / "run"
    common = [
        *TINY,
        "--data",
        str(data),
        "--cache",
        str(tmp_path / "cache"),
        "--size",
        "32",
        "--epochs",
        "2",
        "--schedule",
        "restarts",  # one short one-cycle per epoch (the distillation test covers one-cycle)
        "--tight",
        "0.5",  # half the images framed like photos that end close around the face
        "--bs",
        "16",
        "--run-dir",
        str(run),
        "--out",
        str(tmp_path / "m.pkl"),
    ]
    main(common)
    assert json.loads((run / "progress.json").read_text())["epochs_done"] == 2
    assert list(load_learner(tmp_path / "m.pkl", cpu=True).dls.vocab) == list(AGE_CLASSES)
    saved = json.loads((run / "args.json").read_text())
    assert saved["targets"] == "ages" and saved["size"] == 32 and saved["epochs"] == 2
    assert saved["tight"] == 0.5

    # Pretend the run stopped after its first epoch: --resume runs only the second one.
    (run / "progress.json").write_text(json.dumps({"epochs_done": 1}))
    rows_before = (run / "history.csv").read_text().count("\n")
    main([*common, "--resume"])
    history = (run / "history.csv").read_text().splitlines()[rows_before:]
    trained = [row for row in history if row[:2] in ("0,", "1,") and row.count(",") > 2]
    assert len(trained) == 1  # only the second epoch ran (each restart logs as its own fit)
    assert json.loads((run / "progress.json").read_text())["epochs_done"] == 2


def _synthetic_utkface(root, count=60, size=40):
    images = root / "utk" / "UTKFace"
    images.mkdir(parents=True)
    for i, face in enumerate(synthetic_faces(count, size)):
        Image.fromarray(face).save(
            images / f"{(i * 7) % 90 + 1}_{i % 2}_{i % 5}_2017{i:09d}.jpg.chip.jpg"
        )
    return root / "utk"


def test_the_distillation_loss_mixes_the_true_group_with_the_teachers_probabilities():
    from agegroup.training.losses import DistillationLoss

    torch.manual_seed(0)
    logits = torch.randn(8, 7)
    target = torch.randint(0, 7, (8,))
    loss = DistillationLoss(label_smoothing=0.1, weight=0.6, temperature=2.0)
    hard = loss.hard(logits, target)
    assert torch.allclose(loss(logits, target), hard)  # no teacher in the batch
    # A teacher that agrees exactly adds nothing (KL 0) ...
    same = torch.log_softmax(logits, dim=1)
    assert torch.allclose(loss(logits, target, same), 0.4 * hard, atol=1e-6)
    # ... one that disagrees adds a positive penalty.
    other = torch.log_softmax(torch.randn(8, 7) * 3, dim=1)
    assert loss(logits, target, other) > 0.4 * hard + 1e-3


def test_a_teacher_is_fine_tuned_and_its_soft_targets_distil_into_an_exportable_student(
    tmp_path,
):
    from agegroup.training import teacher
    from agegroup.training.train import main as train_main

    data = _synthetic_utkface(tmp_path)
    cache = str(tmp_path / "cache")
    run = tmp_path / "teacher"
    # Random initial weights: the point is the path (fit, soft targets, export), not ImageNet.
    teacher.main(
        [*TINY, "--data", str(data), "--cache", cache, "--size", "32", "--epochs", "1"]
        + ["--freeze-epochs", "0", "--bs", "16", "--run-dir", str(run), "--no-pretrained"]
    )
    assert json.loads((run / "args.json").read_text())["freeze_epochs"] == 0  # the run's record
    with np.load(run / "soft_targets.npz") as saved:
        names, log_probs = list(saved["names"]), saved["log_probs"]
    samples = [s for s in list_samples(data) if not s.is_test]
    assert sorted(names) == sorted(s.name for s in samples)  # the training split, never test
    assert log_probs.shape == (len(names), len(BUCKETS))
    assert np.allclose(np.exp(log_probs).sum(axis=1), 1.0, atol=1e-4)
    # By default the teacher learns what the served network learns: ages, half of them from
    # corrupted images; its export is plain (no corruption step) and its ages sum into groups.
    exported_teacher = load_learner(run / "export.pkl", cpu=True)
    assert tuple(exported_teacher.dls.vocab) == AGE_CLASSES
    assert not any(type(t).__name__ == "Degrade" for t in exported_teacher.dls.after_item.fs)

    out = tmp_path / "student.pkl"
    train_main(
        [*TINY, "--data", str(data), "--cache", cache, "--size", "32", "--epochs", "1"]
        + ["--bs", "16", "--teacher", str(run / "soft_targets.npz")]
        + ["--run-dir", str(tmp_path / "s")]
        + ["--out", str(out)]
    )
    student = load_learner(out, cpu=True)
    # An age model distilling the teacher's groups, exported plain: no teacher targets, no
    # corruption transform, fastai's own loss, so loading it needs no training code.
    assert type(student.loss_func).__name__ == "CrossEntropyLossFlat"
    assert len(student.dls.train_ds.tfms) == 2  # images and ages only: no teacher targets
    assert not any(type(t).__name__ == "Degrade" for t in student.dls.after_item.fs)
    predictor = FastaiPredictor(out, tmp_path)
    assert predictor.info.classes == AGE_CLASSES
    probabilities = predictor.predict([Image.fromarray(synthetic_faces(1, 32)[0])])
    assert probabilities.shape == (1, 101) and np.isclose(probabilities.sum(), 1.0)


def test_the_age_loss_rewards_the_labelled_age_and_its_group_and_distils_the_teachers_groups():
    from agegroup.training.losses import AgeLoss

    def peaked_at(age: int) -> torch.Tensor:
        logits = torch.full((1, 101), -5.0)
        logits[0, age] = 5.0
        return logits

    loss = AgeLoss(group_weight=1.0, label_smoothing=0.1, distill_weight=0.0)
    target = torch.tensor([34])
    right, near, wrong_group = (loss(peaked_at(a), target) for a in (34, 37, 52))
    assert right < near < wrong_group  # nearer ages cost less; another group costs most
    groups = loss.group_log_probs(peaked_at(34)).exp()
    assert torch.allclose(groups.sum(dim=1), torch.ones(1))
    assert groups.argmax().item() == BUCKETS.index("31-40")

    distilling = AgeLoss(group_weight=1.0, label_smoothing=0.1, distill_weight=0.5)
    agreeing = loss.group_log_probs(peaked_at(34))
    assert torch.allclose(distilling(peaked_at(34), target, agreeing), 0.5 * right, atol=1e-5)
    disagreeing = torch.log_softmax(torch.tensor([[0.0, 0, 0, 0, 0, 0, 9.0]]), dim=1)
    assert distilling(peaked_at(34), target, disagreeing) > 0.5 * right + 1.0


def test_a_mix_of_saved_probabilities_is_scored_with_the_weights_it_is_given(tmp_path):
    from agegroup.training.mix import main as mix_main
    from agegroup.training.mix import mix

    data = _synthetic_utkface(tmp_path)
    test = [s for s in list_samples(data) if s.is_test]
    names = np.array([s.name for s in test])
    # An age model that is always right, and a group model that is always one group off.
    right = np.zeros((len(test), len(AGE_CLASSES)))
    right[np.arange(len(test)), [min(s.age, 100) for s in test]] = 1.0
    wrong = np.zeros((len(test), len(BUCKETS)))
    wrong[np.arange(len(test)), [s.bucket + 1 if s.bucket < 6 else 5 for s in test]] = 1.0
    for name, probs, classes in (("right", right, AGE_CLASSES), ("wrong", wrong, BUCKETS)):
        np.savez(tmp_path / f"{name}.npz", names=names, classes=np.array(classes), clean=probs)

    mostly_right = mix([(tmp_path / "right.npz", 0.7), (tmp_path / "wrong.npz", 0.3)], data)
    mostly_wrong = mix([(tmp_path / "right.npz", 1.0), (tmp_path / "wrong.npz", 3.0)], data)
    assert mostly_right["clean"]["accuracy"] == 1.0 and mostly_right["clean"]["n"] == len(test)
    assert mostly_wrong["clean"]["accuracy"] == 0.0
    assert mostly_wrong["clean"]["within_one_bucket"] == 1.0
    assert set(mostly_right) == {"parts", "clean"}  # only the sets the files hold

    # Files of other images, or without their classes, are refused with a message, not mixed.
    np.savez(tmp_path / "other.npz", names=names[::-1], classes=np.array(BUCKETS), clean=wrong)
    np.savez(tmp_path / "bare.npz", names=names, clean=wrong)
    for bad in ("other.npz", "bare.npz"):
        try:
            mix_main([str(tmp_path / "right.npz"), str(tmp_path / bad), "--data", str(data)])
        except SystemExit as exc:
            assert exc.code == 2
        else:
            raise AssertionError(f"{bad} was mixed")


def test_the_gpu_pack_holds_the_train_split_and_trains_as_the_gpu_recipe_does(tmp_path):
    """recipes/gpu_h200.sh's path, small and on the CPU: pack the train split with the
    teacher's targets, then train from the pack alone with the recipe's options."""
    from agegroup.training.pack import pack

    data = _synthetic_utkface(tmp_path)
    samples = list_samples(data)
    train_names = sorted(s.name for s in samples if not s.is_test)
    assert 0 < len(train_names) < len(samples)  # the synthetic set has test files to leave out
    # A teacher file like agev1's: every image, test ones included, log-probabilities of groups.
    rng = np.random.default_rng(0)
    groups = rng.dirichlet(np.ones(len(BUCKETS)), size=len(samples))
    teacher = tmp_path / "ages.npz"
    np.savez(teacher, names=np.array([s.name for s in samples]), log_probs=np.log(groups))

    out = tmp_path / "gpu-pack"
    assert pack(data, out, size=32, quality=80, teacher=teacher) > 0
    packed = list_samples(out / "utkface")
    assert sorted(s.name for s in packed) == train_names  # the test split never travels
    assert all(not s.is_test for s in packed)  # each keeps its split, as the names carry it
    with np.load(out / "teacher.npz") as saved:
        assert sorted(saved["names"]) == train_names and saved["log_probs"].dtype == np.float16
        row = {s.name: i for i, s in enumerate(samples)}[str(saved["names"][0])]
        assert np.allclose(saved["log_probs"][0], np.log(groups[row]), atol=1e-2)

    run = tmp_path / "run"
    # In a process of its own, as the recipe runs it: its 2 loader workers are forked, and a
    # fork of this test process (threads of other tests' sessions and servers) may deadlock.
    done = subprocess.run(
        [sys.executable, "-m", "agegroup.training.train", *TINY, "--device", "cpu"]
        + ["--workers", "2", "--bs", "16", "--size", "32", "--epochs", "1"]
        + ["--lr", "4e-3", "--wd", "0.05", "--targets", "ages", "--degrade", "0.5"]
        + ["--tight", "0.3", "--teacher", str(out / "teacher.npz"), "--distill-weight", "0.3"]
        + ["--data", str(out / "utkface"), "--cache", str(tmp_path / "cache")]
        + ["--run-dir", str(run), "--out", str(run / "export.pkl")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    saved_args = json.loads((run / "args.json").read_text())
    assert saved_args["workers"] == 2 and saved_args["teacher"].endswith("teacher.npz")
    assert (run / "history.csv").is_file()  # what the recipe sends back with the learner
    assert tuple(load_learner(run / "export.pkl", cpu=True).dls.vocab) == AGE_CLASSES


def test_an_arch_that_is_neither_known_nor_importable_stops_the_command(tmp_path):
    from agegroup.training.train import main

    for arch, says in (("resnet5O", "neither resnet50 nor module:function"),
                       ("testsupport.learner:nothing", "cannot import")):  # fmt: skip
        with pytest.raises(SystemExit, match=says):
            main(["--arch", arch, "--data", str(tmp_path), "--run-dir", str(tmp_path / "r")])
