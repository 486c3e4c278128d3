"""Retrain an exported learner's head on its own frozen features (decoupled retraining).

    python -m agegroup.training.head model/export.pkl --run-dir runs/head --out runs/head/export.pkl

A network's body learns what a face looks like; its head turns that into ages, and that is
where the training set's priors live: UTKFace's Asian faces are a third children, its Black
faces aged 41-60 are few, so the head learns race as a cue for age. Retraining only the head
(Kang et al. 2020), with every race and gender drawn with the overall age-group mix
(``agegroup.training.balance``) and the mean and variance losses against the pull toward the
middle ages, costs one forward pass of the body per view of each image, then seconds per epoch.

Each training image is seen in several views, as the app meets faces (``--views``): as it is,
corrupted like an upload (``degrade``), and framed like a photo cut close around the face
(``tight``). Their body features are computed once and kept in ``RUN/features.npz`` (reused by
later runs on the same learner and views). age-v1, the teacher, is asked about each view
itself, so its answers are distilled on the faces the student sees; its weight per face
follows how often it is right in that age group on the validation part.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from agegroup.ages import AGE_CLASSES, GROUP_OF_AGE, clamp_age
from agegroup.onnx_runtime import to_batch
from agegroup.predictor import file_sha256
from agegroup.training import data as utk
from agegroup.training.balance import BALANCE_CHOICES, balancing_weights
from agegroup.training.degrade import degrade, rng_for, tight_framing
from agegroup.training.learner import export_learner, seed_everything, training_split
from agegroup.training.losses import AgeLoss
from agegroup.training.metrics import compute_metrics
from agegroup.training.train import write_args

VIEWS = ("clean", "degraded", "tight")
VIEW_SEED = 2031


def view_of(image: np.ndarray, name: str, view: str) -> Image.Image:
    """One fixed (seeded by file name) view of a cached face: as it is, corrupted like an
    upload, or framed as a photo that ends close around the face (corrupted half the time)."""
    face = Image.fromarray(image)
    rng = rng_for(name, VIEW_SEED)
    if view == "degraded":
        return degrade(face, rng)
    if view == "tight":
        face = tight_framing(face, rng)
        return degrade(face, rng) if rng.random() < 0.5 else face
    return face


def body_features(body: torch.nn.Module, faces: list[Image.Image], size: int) -> np.ndarray:
    """The head's input for each face: the body's output, concat-pooled (max and mean)."""
    with torch.inference_mode():
        maps = body(torch.from_numpy(to_batch(faces, size)))
        return torch.cat([maps.amax(dim=(2, 3)), maps.mean(dim=(2, 3))], dim=1).numpy()


def compute_views(
    learner_path: Path,
    images: np.ndarray,
    names: list[str],
    views: list[str],
    agev1_on_views: bool,
    out: Path,
    batch: int = 128,
) -> dict[str, np.ndarray]:
    """Body features (float16) and, if asked, age-v1's groups for every view of every image,
    saved to ``out`` and reused when it exists for the same learner and views."""
    from fastai.learner import load_learner

    from agegroup.agev1 import AgeV1

    key = {"learner_sha256": file_sha256(learner_path), "views": views, "agev1": agev1_on_views}
    if out.exists():
        with np.load(out) as saved:
            if json.loads(str(saved["key"])) == key:
                return {k: saved[k] for k in saved.files if k != "key"}
    learn = load_learner(learner_path, cpu=True)
    body = learn.model[0].float().eval()
    size = int(learn.dls.after_item.fs[0].size[0])
    teacher = AgeV1() if agev1_on_views else None
    saved: dict[str, np.ndarray] = {}
    started = time.perf_counter()
    for view in views:
        features, groups = [], []
        for start in range(0, len(images), batch):
            faces = [
                view_of(images[i], names[i], view)
                for i in range(start, min(start + batch, len(images)))
            ]
            features.append(body_features(body, faces, size).astype(np.float16))
            if teacher is not None and view != "clean":
                groups.append(teacher.predict(faces) @ GROUP_OF_AGE)
            done = start + len(faces)
            rate = done / (time.perf_counter() - started)
            print(f"{view}: {done}/{len(images)} ({rate:.0f} faces/s)", flush=True)
        saved[f"features_{view}"] = np.concatenate(features)
        if groups:
            saved[f"agev1_{view}"] = np.concatenate(groups).astype(np.float32)
        started = time.perf_counter()
    np.savez(out, key=json.dumps(key), **saved)
    return saved


def teacher_trust(teacher_groups: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """How often the teacher's group is right, per true group, on the faces given (0..1)."""
    right = teacher_groups.argmax(axis=1) == truth
    return np.array([right[truth == g].mean() if (truth == g).any() else 0.0 for g in range(7)])


def head_metrics(head: torch.nn.Module, features: np.ndarray, samples: list[utk.Sample]) -> dict:
    """Group metrics and age bias per race and gender of the head's answers (one view)."""
    head.eval()
    with torch.inference_mode():
        probs = torch.softmax(head(torch.from_numpy(features.astype(np.float32))), dim=1).numpy()
    ages = np.array([clamp_age(s.age) for s in samples])
    subgroups = {
        "race": [utk.RACES[s.race] if s.race is not None else "unknown" for s in samples],
        "gender": [utk.GENDERS[s.gender] if s.gender is not None else "unknown" for s in samples],
    }
    return compute_metrics(
        [s.bucket for s in samples],
        probs @ GROUP_OF_AGE,
        subgroups,
        ages,
        probs @ np.arange(len(AGE_CLASSES)),
    )


def epoch_report(epoch: int | str, train_loss: float | None, metrics: dict) -> dict:
    """One line of the run's history: the loss and the validation figures, bias included."""
    return {
        "epoch": epoch,
        "train_loss": None if train_loss is None else round(train_loss, 4),
        "valid_accuracy": metrics["accuracy"],
        "valid_balanced_accuracy": metrics["balanced_accuracy"],
        "valid_bias": {
            value: {band: cell["years"] for band, cell in entry["age_bias_years"].items()}
            for labelling in ("race", "gender")
            for value, entry in metrics["by_group"][labelling].items()
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("learner", type=Path, help="the exported learner whose head is retrained")
    parser.add_argument("--data", type=Path, default=utk.DEFAULT_DATA_DIR)
    parser.add_argument("--cache", type=Path, default=Path("data-cache"))
    parser.add_argument("--views", nargs="+", choices=VIEWS, default=list(VIEWS))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--wd", type=float, default=0.01)
    parser.add_argument("--bs", type=int, default=256)
    parser.add_argument("--balance", choices=BALANCE_CHOICES, default="race-gender")
    parser.add_argument("--mean-weight", type=float, default=1.0)
    parser.add_argument("--variance-weight", type=float, default=0.1)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument(
        "--teacher",
        type=Path,
        help="age-v1's answers on the clean images (agegroup.training.agev1)",
    )
    parser.add_argument("--distill-weight", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/head"))
    parser.add_argument(
        "--features", type=Path, help="the views' features (default: RUN/features.npz)"
    )
    parser.add_argument("--out", type=Path, default=None, help="default: RUN/export.pkl")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    write_args(args)
    out = args.out or args.run_dir / "export.pkl"

    from fastai.learner import load_learner

    learn = load_learner(args.learner, cpu=True)
    size = int(learn.dls.after_item.fs[0].size[0])
    images, samples, valid_idx = training_split(args.data, size, args.cache)
    names = [s.name for s in samples]
    saved = compute_views(
        args.learner,
        images,
        names,
        args.views,
        args.teacher is not None,
        args.features or args.run_dir / "features.npz",
    )
    valid = set(valid_idx)
    train_rows = np.array([i for i in range(len(samples)) if i not in valid])
    valid_rows = np.array(valid_idx)
    truth = np.array([s.bucket for s in samples])
    ages = np.array([clamp_age(s.age) for s in samples])

    features = np.concatenate([saved[f"features_{v}"][train_rows] for v in args.views])
    targets = np.tile(ages[train_rows], len(args.views))
    weights = np.ones(len(train_rows))
    if args.balance != "none":
        weights = balancing_weights([samples[i] for i in train_rows], args.balance)
    weights = np.tile(weights, len(args.views))
    teacher = trust = None
    if args.teacher is not None:
        from agegroup.training.distill import load_teacher_targets

        clean = np.exp(load_teacher_targets(args.teacher, names))
        per_view = [clean if v == "clean" else saved[f"agev1_{v}"] for v in args.views]
        trust = teacher_trust(clean[valid_rows], truth[valid_rows])
        print("age-v1 right per group on validation:", np.round(trust, 3).tolist())
        teacher = np.concatenate([groups[train_rows] for groups in per_view])
        teacher = np.log(np.clip(teacher, 1e-8, None)).astype(np.float32)

    head = learn.model[1].float()
    loss = AgeLoss(1.0, args.label_smoothing, 0.0, args.mean_weight, args.variance_weight)
    optimiser = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=args.wd)
    steps = args.epochs * (len(features) // args.bs)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, args.lr, total_steps=steps)
    x_all = torch.from_numpy(features)
    y_all = torch.from_numpy(targets)
    draw = torch.from_numpy(weights / weights.sum())
    trust_of = None
    if trust is not None:
        trust_of = torch.from_numpy(trust[np.tile(truth[train_rows], len(args.views))])
    valid_samples = [samples[i] for i in valid_rows]
    valid_features = saved["features_clean"][valid_rows]
    history = [epoch_report("start", None, head_metrics(head[2:], valid_features, valid_samples))]
    print(json.dumps(history[0]), flush=True)
    for epoch in range(args.epochs):
        head.train()
        order = torch.multinomial(draw, len(features), replacement=True)
        total = 0.0
        for start in range(0, len(order) - args.bs + 1, args.bs):
            rows = order[start : start + args.bs]
            pred = head[2:](x_all[rows].float())  # features are already concat-pooled
            value = loss(pred, y_all[rows])
            if teacher is not None and trust_of is not None:
                groups = loss.group_log_probs(pred)
                t = torch.from_numpy(teacher[rows.numpy()])
                kl = (t.exp() * (t - groups)).sum(dim=1)
                value = value + args.distill_weight * (trust_of[rows] * kl).mean()
            optimiser.zero_grad()
            value.backward()
            optimiser.step()
            schedule.step()
            total += value.item()
        m = head_metrics(head[2:], valid_features, valid_samples)
        row = epoch_report(epoch, total / (len(order) // args.bs), m)
        history.append(row)
        print(json.dumps(row), flush=True)
    (args.run_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    head.eval()
    learn.model[1] = head
    export_learner(learn, out, name=str(learn.agegroup_name))
    print(f"exported {out}")


if __name__ == "__main__":
    main()
