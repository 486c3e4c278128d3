"""Evaluate an exported learner on the fixed UTKFace test split, through the serving code.

    python -m agegroup.training.evaluate model/export.pkl --out model/metrics.json

Predictions go through ``FastaiPredictor`` (the same preprocessing and network the app uses),
once plainly and once averaged with the horizontally flipped face (test-time flip averaging).
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

from agegroup.buckets import BUCKETS
from agegroup.predictor import FastaiPredictor, mirrored
from agegroup.training import data as utk


def confusion(y_true: Sequence[int], y_pred: Sequence[int], n: int = len(BUCKETS)) -> np.ndarray:
    matrix = np.zeros((n, n), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        matrix[t, p] += 1
    return matrix


def compute_metrics(
    y_true: Sequence[int], probabilities: np.ndarray, subgroups: dict[str, Sequence[str]]
) -> dict[str, Any]:
    """Accuracy, within-one-bucket accuracy, balanced accuracy, per-bucket precision/recall,
    the confusion matrix, and accuracy per value of every subgroup labelling (gender, race)."""
    truth = np.asarray(y_true)
    pred = probabilities.argmax(axis=1)
    matrix = confusion(truth, pred)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    recall = np.divide(np.diag(matrix), support, out=np.zeros(len(BUCKETS)), where=support > 0)
    precision = np.divide(
        np.diag(matrix), predicted, out=np.zeros(len(BUCKETS)), where=predicted > 0
    )
    correct = truth == pred
    by_group: dict[str, dict[str, Any]] = {}
    for labelling, values in subgroups.items():
        by_group[labelling] = {}
        for value in sorted(set(values)):
            mask = np.array([v == value for v in values])
            by_group[labelling][value] = {
                "n": int(mask.sum()),
                "accuracy": round(float(correct[mask].mean()), 4),
            }
    return {
        "n": int(len(truth)),
        "accuracy": round(float(correct.mean()), 4),
        "within_one_bucket": round(float((np.abs(truth - pred) <= 1).mean()), 4),
        "balanced_accuracy": round(float(recall[support > 0].mean()), 4),
        "per_bucket": {
            bucket: {
                "support": int(support[i]),
                "precision": round(float(precision[i]), 4),
                "recall": round(float(recall[i]), 4),
            }
            for i, bucket in enumerate(BUCKETS)
        },
        "confusion_matrix": matrix.tolist(),
        "by_group": by_group,
    }


def predict_files(
    predictor: FastaiPredictor, paths: Sequence[Path], batch: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities for every file, as it is and mirrored left-right."""
    plain, flipped = [], []
    for start in range(0, len(paths), batch):
        faces = []
        for path in paths[start : start + batch]:
            with Image.open(path) as image:
                faces.append(image.convert("RGB"))
        plain.append(predictor.predict(faces))
        flipped.append(predictor.predict(mirrored(faces)))
    return np.concatenate(plain), np.concatenate(flipped)


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


def evaluate(model_path: Path, data_dir: Path, limit: int | None = None) -> dict[str, Any]:
    predictor = FastaiPredictor(model_path, model_path.resolve().parent)
    samples = [s for s in utk.list_samples(data_dir) if s.is_test][:limit]
    image_dir = utk.image_dir_of(data_dir)
    paths = [image_dir / s.name for s in samples]
    truth = [s.bucket for s in samples]
    subgroups = {
        "gender": [utk.GENDERS[s.gender] if s.gender is not None else "unknown" for s in samples],
        "race": [utk.RACES[s.race] if s.race is not None else "unknown" for s in samples],
    }
    results: dict[str, Any] = {
        "model": {"name": predictor.info.name, "version": predictor.info.version},
        "input_size": predictor.info.input_size,
        "split": "UTKFace test split (see agegroup/training/data.py), one file per duplicate group",
    }
    started = time.perf_counter()
    plain, mirrored = predict_files(predictor, paths)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["plain"] = compute_metrics(truth, plain, subgroups)
    results["flip_average"] = compute_metrics(truth, (plain + mirrored) / 2, subgroups)
    return results


def summary(results: dict[str, Any]) -> str:
    lines = [f"model {results['model']['name']} {results['model']['version']}"]
    for key in ("plain", "flip_average"):
        m = results[key]
        lines.append(
            f"{key:>13}: n={m['n']} accuracy={m['accuracy']:.4f} "
            f"within-one={m['within_one_bucket']:.4f} balanced={m['balanced_accuracy']:.4f}"
        )
    m = results["flip_average"]
    for bucket, row in m["per_bucket"].items():
        lines.append(
            f"  {bucket:>6}: support={row['support']:5d} precision={row['precision']:.3f} "
            f"recall={row['recall']:.3f}"
        )
    for labelling, groups in m["by_group"].items():
        parts = ", ".join(f"{k} {v['accuracy']:.3f} (n={v['n']})" for k, v in groups.items())
        lines.append(f"  by {labelling}: {parts}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, default=utk.DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path, default=None, help="default: metrics.json beside model")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test images")
    args = parser.parse_args(argv)
    out = args.out or args.model.resolve().parent / "metrics.json"
    results = evaluate(args.model, args.data, args.limit)
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot_confusion(
        np.array(results["flip_average"]["confusion_matrix"]),
        out.with_name("confusion.png"),
        f"{results['model']['name']} (flip-averaged)",
    )
    print(summary(results))
    print(f"wrote {out} and {out.with_name('confusion.png')}")


if __name__ == "__main__":
    main()
