"""Ages in years: the model's output grid, and how it becomes groups and an age estimate.

An age model predicts a distribution over whole ages 0..``MAX_AGE`` (UTKFace's labels are
ages, not groups). Everything the app shows is read off that one distribution, so the
estimate, its interval and the seven group probabilities always agree: a group's
probability is the sum over its ages.

A model whose classes are the seven groups themselves (the earlier models) is still
accepted; it has no age estimate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agegroup.buckets import BUCKETS, bucket_index

# Ages above this are counted as MAX_AGE (UTKFace has a handful up to 116).
MAX_AGE = 100
AGE_CLASSES: tuple[str, ...] = tuple(str(age) for age in range(MAX_AGE + 1))
# The served interval holds this much of the probability: from its 10th to its 90th percentile.
INTERVAL_MASS = 0.8


def clamp_age(age: int) -> int:
    return min(max(int(age), 0), MAX_AGE)


def _group_of_age() -> np.ndarray:
    """``(MAX_AGE + 1, 7)``: row ``a`` is the one-hot group of age ``a``."""
    matrix = np.zeros((MAX_AGE + 1, len(BUCKETS)))
    for age in range(MAX_AGE + 1):
        matrix[age, bucket_index(age)] = 1.0
    return matrix


GROUP_OF_AGE = _group_of_age()


def is_age_model(classes: Sequence[str]) -> bool:
    """Whether a model's classes are ages (else they must be the seven groups)."""
    return tuple(str(c) for c in classes) == AGE_CLASSES


def group_matrix(classes: Sequence[str]) -> np.ndarray:
    """``(classes, 7)``: the group of each class (of each age, or the groups themselves)."""
    return GROUP_OF_AGE if is_age_model(classes) else np.eye(len(BUCKETS))


def to_groups(probabilities: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """``(n, 7)`` group probabilities from a model's class probabilities."""
    return np.asarray(probabilities, dtype=np.float64) @ group_matrix(classes)


@dataclass(frozen=True)
class AgeEstimate:
    """The expected age in years and the interval holding ``INTERVAL_MASS`` of the mass."""

    estimate: float
    low: int
    high: int

    def to_json(self) -> dict[str, object]:
        return {"estimate": round(self.estimate, 1), "interval": [self.low, self.high]}


def estimate_age(distribution: np.ndarray) -> AgeEstimate:
    """Expected age and the central ``INTERVAL_MASS`` interval of one age distribution."""
    p = np.asarray(distribution, dtype=np.float64)
    p = p / p.sum()
    cumulative = np.cumsum(p)
    tail = (1 - INTERVAL_MASS) / 2
    # The 10th and 90th percentiles (the small slack absorbs float rounding of the sums).
    low = int(np.searchsorted(cumulative, tail - 1e-9, side="left"))
    high = int(np.searchsorted(cumulative, 1 - tail - 1e-9, side="left"))
    ages = np.arange(len(p))
    return AgeEstimate(float(ages @ p), low, min(high, len(p) - 1))


def estimate_ages(probabilities: np.ndarray, classes: Sequence[str]) -> list[AgeEstimate] | None:
    """One estimate per row for an age model; ``None`` for a group model."""
    if not is_age_model(classes):
        return None
    return [estimate_age(row) for row in np.asarray(probabilities)]
