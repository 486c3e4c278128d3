"""The figures a model is judged by: accuracy, within one group, balanced accuracy, per-group
precision and recall, calibration error, and per race and gender the accuracy and the age bias
per band of true age (with its markdown table)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from agegroup.buckets import BUCKETS


def confusion(y_true: Sequence[int], y_pred: Sequence[int], n: int = len(BUCKETS)) -> np.ndarray:
    matrix = np.zeros((n, n), dtype=np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        matrix[t, p] += 1
    return matrix


AGE_BIAS_BANDS = (("0-20", 0, 20), ("21-40", 21, 40), ("41-60", 41, 60), ("61+", 61, 200))


def age_bias(ages: np.ndarray, estimated: np.ndarray) -> dict[str, dict[str, Any]]:
    """For every band of true ages: its faces and the signed mean error of the estimated age
    (estimate minus truth, in years; ``None`` for an empty band)."""
    bias = {}
    for band, low, high in AGE_BIAS_BANDS:
        mask = (ages >= low) & (ages <= high)
        years = round(float((estimated[mask] - ages[mask]).mean()), 2) if mask.any() else None
        bias[band] = {"n": int(mask.sum()), "years": years}
    return bias


def recalls(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each group's recall and support (a group without faces has recall 0)."""
    matrix = confusion(truth, pred)
    support = matrix.sum(axis=1)
    recall = np.divide(np.diag(matrix), support, out=np.zeros(len(BUCKETS)), where=support > 0)
    return recall, support


def compute_metrics(
    y_true: Sequence[int],
    probabilities: np.ndarray,
    subgroups: dict[str, Sequence[str]],
    ages: Sequence[int] | None = None,
    estimated: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Accuracy, within-one-bucket accuracy, balanced accuracy, per-bucket precision/recall,
    the confusion matrix, and per value of every subgroup labelling (gender, race) its
    faces, accuracy, balanced accuracy and, given the true ``ages`` and the ``estimated``
    ones, the age bias per band (``age_bias``)."""
    truth = np.asarray(y_true)
    pred = probabilities.argmax(axis=1)
    matrix = confusion(truth, pred)
    recall, support = recalls(truth, pred)
    predicted = matrix.sum(axis=0)
    precision = np.divide(
        np.diag(matrix), predicted, out=np.zeros(len(BUCKETS)), where=predicted > 0
    )
    correct = truth == pred
    by_group: dict[str, dict[str, Any]] = {}
    for labelling, values in subgroups.items():
        by_group[labelling] = {}
        for value in sorted(set(values)):
            mask = np.array([v == value for v in values])
            group_recall, group_support = recalls(truth[mask], pred[mask])
            entry: dict[str, Any] = {
                "n": int(mask.sum()),
                "accuracy": round(float(correct[mask].mean()), 4),
                "balanced_accuracy": round(float(group_recall[group_support > 0].mean()), 4),
            }
            if ages is not None and estimated is not None:
                entry["age_bias_years"] = age_bias(
                    np.asarray(ages)[mask], np.asarray(estimated)[mask]
                )
            by_group[labelling][value] = entry
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


def balanced_weights(y_true: Sequence[int]) -> np.ndarray:
    """One weight per face so that every group present weighs the same in total (sum 1)."""
    truth = np.asarray(y_true)
    counts = np.bincount(truth)
    return 1.0 / (counts[truth] * np.count_nonzero(counts))


def expected_calibration_error(
    y_true: Sequence[int],
    probabilities: np.ndarray,
    bins: int = 15,
    weights: np.ndarray | None = None,
) -> float:
    """ECE over ``bins`` equal-width confidence bins: the mean |accuracy - confidence| gap,
    weighted by how many answers fall in each bin.

    ``weights`` (e.g. ``balanced_weights``) count some faces more: the ECE of a photo set in
    which every group is equally common, measured on one that is not.
    """
    truth = np.asarray(y_true)
    w = np.full(len(truth), 1.0 / len(truth)) if weights is None else weights / weights.sum()
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == truth
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():  # the bin's share times |accuracy - confidence| in it
            gap += abs((w[mask] * (correct[mask] - confidence[mask])).sum())
    return float(gap)


def bias_table(metrics: dict[str, Any], min_faces: int = 30) -> str:
    """The age bias per race and gender as a markdown table (estimated minus true age, in
    years, per band of true ages); a cell of fewer than ``min_faces`` faces shows its count."""
    bands = [band for band, _, _ in AGE_BIAS_BANDS]
    lines = ["| | " + " | ".join(bands) + " |", "|---" * (len(bands) + 1) + "|"]
    for labelling in ("race", "gender"):
        for value, entry in metrics["by_group"].get(labelling, {}).items():
            if value == "unknown" or "age_bias_years" not in entry:
                continue
            cells = []
            for band in bands:
                cell = entry["age_bias_years"][band]
                enough = cell["n"] >= min_faces and cell["years"] is not None
                cells.append(f"{cell['years']:+.1f}" if enough else f"({cell['n']} faces)")
            lines.append(f"| {value} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
