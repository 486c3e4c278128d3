"""Distillation: a teacher's soft targets, carried by every batch and mixed into the loss.

    python -m agegroup.training.train --teacher runs/teacher/targets.npz --distill-weight 0.5

The targets file (``names`` and ``log_probs`` over the seven groups) is written by
``agegroup.training.teacher`` or ``agegroup.training.agev1``. The served model distilled both:
age-v1 in ``recipes/resnet50_ages_96.sh``, the MobileNetV2 teacher in
``recipes/resnet50_ages_96_kd_mnv2.sh`` (model/MODEL.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agegroup.training.losses import DistillationLoss


class TeacherTargets:
    """fastai getter for the soft targets: a cache row's teacher log-probabilities."""

    def __init__(self, log_probs: np.ndarray) -> None:
        self.log_probs = log_probs

    def __call__(self, item: Any) -> torch.Tensor:
        return torch.from_numpy(self.log_probs[int(item)])


@dataclass(frozen=True)
class Distillation:
    """A teacher's log-probabilities (one row per cached image), how much its soft targets
    weigh in the loss, and the temperature they are softened at."""

    log_probs: np.ndarray
    weight: float = 0.5
    temperature: float = 2.0

    def getter(self) -> TeacherTargets:
        return TeacherTargets(self.log_probs.astype(np.float32))

    def loss(self, label_smoothing: float) -> DistillationLoss:
        return DistillationLoss(label_smoothing, self.weight, self.temperature)


def load_teacher_targets(path: Path, names: list[str]) -> np.ndarray:
    """The teacher's log-probabilities for ``names``, in that order (all must be present)."""
    with np.load(path) as saved:
        row_of = {str(n): i for i, n in enumerate(saved["names"])}
        missing = [n for n in names if n not in row_of]
        if missing:
            raise ValueError(f"{path} has no teacher targets for {len(missing)} images")
        return saved["log_probs"][[row_of[n] for n in names]]
