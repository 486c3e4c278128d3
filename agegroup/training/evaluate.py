"""Evaluate an exported learner on the fixed UTKFace test split, through the serving code.

    python -m agegroup.training.evaluate model/export.pkl --out model/metrics.json

Predictions go through ``FastaiPredictor`` (the same preprocessing and network the app uses),
once plainly and once averaged with the horizontally flipped face (test-time flip averaging,
what the app serves), on the clean test split and on its degraded copy (every test face
corrupted by one fixed, seeded mix of ``agegroup.training.degrade``). Reported: accuracy,
within one group, balanced accuracy, per-group recall, calibration error (15 bins) and, for
an age model, the error of the estimated age in years and how often the 80% interval holds
the labelled age.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agegroup.ages import clamp_age, estimate_ages, to_groups
from agegroup.agev1 import as_served
from agegroup.buckets import BUCKETS
from agegroup.predictor import FastaiPredictor, Predictor, mirrored
from agegroup.training import data as utk
from agegroup.training.degrade import degraded_copy, tight_copy
from agegroup.training.metrics import (
    balanced_weights,
    bias_table,
    compute_metrics,
    expected_calibration_error,
)
from agegroup.training.served_crops import served_crop

TEST_SETS = ("clean", "degraded", "served", "tight")


def test_faces(samples: Sequence[utk.Sample], data_dir: Path, test_set: str) -> list[Image.Image]:
    """The test crops as the model receives them, for one of ``TEST_SETS``.

    ``clean``: UTKFace's crops as they are; ``degraded``: the degraded test set's copies;
    ``served``: each face pasted into a photo and cropped by the app's detector and alignment
    (``agegroup.training.served_crops``; the original crop where the detector missed it);
    ``tight``: each crop as the app crops a photo that ends close around the face
    (``agegroup.training.degrade.tight_copy``).
    """
    if test_set not in TEST_SETS:
        raise ValueError(f"test set must be one of {TEST_SETS}, not {test_set!r}")
    image_dir = utk.image_dir_of(data_dir)
    faces = []
    for sample in samples:
        with Image.open(image_dir / sample.name) as image:
            face = image.convert("RGB")
        if test_set == "degraded":
            face = degraded_copy(face, sample.name)
        elif test_set == "served":
            face = served_crop(face, sample.name) or face
        elif test_set == "tight":
            face = tight_copy(face, sample.name)
        faces.append(face)
    return faces


def predict_faces(
    predictor: Predictor, faces: Sequence[Image.Image], batch: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """The model's class probabilities for every face, as it is and mirrored left-right."""
    plain, flipped = [], []
    for start in range(0, len(faces), batch):
        chunk = faces[start : start + batch]
        plain.append(predictor.predict(chunk))
        flipped.append(predictor.predict(mirrored(chunk)))
    return np.concatenate(plain), np.concatenate(flipped)


def score(
    samples: Sequence[utk.Sample], probabilities: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """``compute_metrics`` on the groups, plus calibration and, for ages, the error in years."""
    subgroups = {
        "gender": [utk.GENDERS[s.gender] if s.gender is not None else "unknown" for s in samples],
        "race": [utk.RACES[s.race] if s.race is not None else "unknown" for s in samples],
    }
    truth = [s.bucket for s in samples]
    groups = to_groups(probabilities, classes)
    estimates = estimate_ages(probabilities, classes)
    ages = np.array([clamp_age(s.age) for s in samples])
    guessed = None if estimates is None else np.array([e.estimate for e in estimates])
    metrics = compute_metrics(truth, groups, subgroups, ages, guessed)
    metrics["calibration_error"] = round(expected_calibration_error(truth, groups), 4)
    metrics["calibration_error_balanced"] = round(
        expected_calibration_error(truth, groups, weights=balanced_weights(truth)), 4
    )
    if estimates is not None and guessed is not None:
        inside = [e.low <= a <= e.high for e, a in zip(estimates, ages, strict=True)]
        metrics["age_mae_years"] = round(float(np.abs(guessed - ages).mean()), 2)
        metrics["age_interval_coverage"] = round(float(np.mean(inside)), 4)
    return metrics


def plot_confusion(matrix: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(BUCKETS)), BUCKETS, rotation=45)
    ax.set_yticks(range(len(BUCKETS)), BUCKETS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(BUCKETS)):
        for j in range(len(BUCKETS)):
            colour = "white" if rates[i, j] > 0.5 else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8, color=colour)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(
    predictor: Predictor,
    data_dir: Path,
    limit: int | None = None,
    test_sets: Sequence[str] = ("clean", "degraded"),
    probabilities_out: Path | None = None,
) -> dict[str, Any]:
    """The model on the clean test split and its other versions (``TEST_SETS``).

    ``probabilities_out``: also save the served (flip-averaged) class probabilities there
    (``.npz``: one array per test set, the image ``names`` and the model's ``classes``), to
    measure a mix of models (``agegroup.training.mix``).
    """
    samples = [s for s in utk.list_samples(data_dir) if s.is_test][:limit]
    results: dict[str, Any] = {
        "model": {"name": predictor.info.name, "version": predictor.info.version},
        "input_size": predictor.info.input_size,
        "split": "UTKFace test split (see agegroup/training/data.py), one file per duplicate group",
        # Which figures the app's answers match (each face averaged with its mirror).
        "served_as": "flip_average",
    }
    classes = predictor.info.classes
    served: dict[str, np.ndarray] = {}
    for name in test_sets:
        started = time.perf_counter()
        plain, flipped = predict_faces(predictor, test_faces(samples, data_dir, name))
        served[name] = (plain + flipped) / 2
        results[name] = {
            "seconds": round(time.perf_counter() - started, 1),
            "plain": score(samples, plain, classes),
            "flip_average": score(samples, served[name], classes),
        }
    if probabilities_out is not None:
        np.savez(
            probabilities_out,
            names=np.array([s.name for s in samples]),
            classes=np.array(classes),
            **served,
        )
    return results


def summary(results: dict[str, Any]) -> str:
    lines = [f"model {results['model']['name']} {results['model']['version']}"]
    # Only the sets evaluated (older reports used "served" for the "served_as" setting).
    for test in (t for t in TEST_SETS if isinstance(results.get(t), dict)):
        for key in ("plain", "flip_average"):
            m = results[test][key]
            extra = f" mae={m['age_mae_years']:.2f}y" if "age_mae_years" in m else ""
            lines.append(
                f"{test:>8} {key:>12}: n={m['n']} accuracy={m['accuracy']:.4f} "
                f"within-one={m['within_one_bucket']:.4f} balanced={m['balanced_accuracy']:.4f} "
                f"ece={m['calibration_error']:.4f} "
                f"balanced-ece={m['calibration_error_balanced']:.4f}{extra}"
            )
        recall_line = " ".join(
            f"{b} {row['recall']:.2f}"
            for b, row in results[test]["flip_average"]["per_bucket"].items()
        )
        lines.append(f"{'':>8} recall: {recall_line}")
        served = results[test]["flip_average"]
        if "age_mae_years" in served:
            lines.append(f"{test}: age bias per group of people (flip-averaged)")
            lines.append(bias_table(served))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="an exported learner, or 'agev1' (the teacher)")
    parser.add_argument("--data", type=Path, default=utk.DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path, default=None, help="default: metrics.json beside model")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test images")
    parser.add_argument(
        "--sets",
        nargs="+",
        choices=TEST_SETS,
        default=["clean", "degraded"],
        help="test sets: the crops as they are, degraded, as the app crops them (served), or as "
        "it crops photos that end close around the face (tight)",
    )
    parser.add_argument(
        "--probabilities", type=Path, help="also save the served probabilities (.npz) here"
    )
    args = parser.parse_args(argv)
    if str(args.model) == "agev1":
        from agegroup.agev1 import AgeV1

        predictor: Predictor = AgeV1()
        out = args.out or Path("runs/agev1/metrics.json")
    else:
        predictor = as_served(FastaiPredictor(args.model, args.model.resolve().parent))
        out = args.out or args.model.resolve().parent / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results = evaluate(predictor, args.data, args.limit, args.sets, args.probabilities)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(summary(results))
    print(f"wrote {out}")
    if "clean" in results:
        plot_confusion(
            np.array(results["clean"]["flip_average"]["confusion_matrix"]),
            out.with_name("confusion.png"),
            f"{results['model']['name']} (flip-averaged)",
        )
        print(f"wrote {out.with_name('confusion.png')}")


if __name__ == "__main__":
    main()
