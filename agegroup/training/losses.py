"""The losses and metrics of training: label-distribution learning over ages with the seven
groups, the mean and variance losses, a teacher's distillation, and the metrics fastai shows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from fastai.losses import LabelSmoothingCrossEntropyFlat
from fastai.metrics import accuracy

from agegroup.ages import GROUP_OF_AGE, MAX_AGE


def bucket_accuracy(pred: torch.Tensor, target: torch.Tensor, *_: Any) -> torch.Tensor:
    """fastai's accuracy, ignoring the teacher's targets when the batch carries them."""
    return accuracy(pred, target)


def age_sigma(age: torch.Tensor) -> torch.Tensor:
    """The label distribution's width in years: apparent age varies more with age."""
    return 1.0 + 0.07 * age


class AgeLoss:
    """Label-distribution learning over ages, with the seven groups and an optional teacher.

    ``(1 - W) * (CE(Gaussian around the age, ages) + g * smoothed CE(group, groups)
    + m * mean loss + v * variance loss) + W * KL(teacher's groups || groups)``, where a
    group's log-probability is the log-sum-exp of its ages' log-probabilities. The mean and
    variance losses (Pan et al. 2018, in decades) pull the expected age onto the labelled one
    and keep the distribution from spreading toward the middle of the age range.
    """

    def __init__(
        self,
        group_weight: float = 1.0,
        label_smoothing: float = 0.1,
        distill_weight: float = 0.0,
        mean_weight: float = 0.0,
        variance_weight: float = 0.0,
    ) -> None:
        ages = torch.arange(MAX_AGE + 1, dtype=torch.float32)
        spread = age_sigma(ages)[:, None]
        table = torch.exp(-0.5 * ((ages[None, :] - ages[:, None]) / spread) ** 2)
        self.age_targets = table / table.sum(dim=1, keepdim=True)
        member = torch.from_numpy(GROUP_OF_AGE.T.astype(np.float32))  # (7, ages)
        self.group_mask = torch.where(member > 0, 0.0, float("-inf"))
        self.group_of_age = member.argmax(dim=0)
        self.group_weight = group_weight
        self.label_smoothing = label_smoothing
        self.distill_weight = distill_weight
        self.mean_weight = mean_weight
        self.variance_weight = variance_weight
        self.decades = ages / 10

    def _follow(self, device: torch.device) -> None:
        """Keep the constant tables on the predictions' device (CPU or GPU)."""
        if self.age_targets.device != device:
            self.age_targets = self.age_targets.to(device)
            self.group_mask = self.group_mask.to(device)
            self.group_of_age = self.group_of_age.to(device)
            self.decades = self.decades.to(device)

    def _log_probs(self, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ages' and the groups' log-probabilities of ``pred``."""
        self._follow(pred.device)
        log_probs = torch.log_softmax(pred.float(), dim=1)
        return log_probs, torch.logsumexp(log_probs[:, None, :] + self.group_mask, dim=2)

    def group_log_probs(self, pred: torch.Tensor) -> torch.Tensor:
        return self._log_probs(pred)[1]

    def __call__(
        self, pred: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor | None = None
    ) -> torch.Tensor:
        log_probs, groups = self._log_probs(pred)
        target = torch.as_tensor(target).long().view(-1)
        ldl = -(self.age_targets[target] * log_probs).sum(dim=1).mean()
        eps = self.label_smoothing
        true_group = groups.gather(1, self.group_of_age[target][:, None]).squeeze(1)
        group_ce = -((1 - eps) * true_group + eps * groups.mean(dim=1)).mean()
        hard = ldl + self.group_weight * group_ce
        if self.mean_weight or self.variance_weight:
            probs = log_probs.exp()
            mean = probs @ self.decades
            variance = (probs * (self.decades[None, :] - mean[:, None]) ** 2).sum(dim=1)
            mean_loss = 0.5 * ((mean - target.float() / 10) ** 2).mean()
            hard = hard + self.mean_weight * mean_loss + self.variance_weight * variance.mean()
        if teacher is None or self.distill_weight == 0:
            return hard
        teacher_log = teacher.float()
        kl = (teacher_log.exp() * (teacher_log - groups)).sum(dim=1).mean()
        return (1 - self.distill_weight) * hard + self.distill_weight * kl


def group_accuracy(pred: torch.Tensor, target: torch.Tensor, *_: Any) -> torch.Tensor:
    """Accuracy on the seven groups of an age model (groups are sums over ages)."""
    member = torch.from_numpy(GROUP_OF_AGE.astype(np.float32)).to(pred.device)
    predicted = (torch.softmax(pred.float(), dim=1) @ member).argmax(dim=1)
    truth = member.argmax(dim=1)[torch.as_tensor(target).long().view(-1)]
    return (predicted == truth).float().mean()


def age_mae(pred: torch.Tensor, target: torch.Tensor, *_: Any) -> torch.Tensor:
    """Mean absolute error in years of the expected age."""
    ages = torch.arange(MAX_AGE + 1, dtype=torch.float32, device=pred.device)
    expected = torch.softmax(pred.float(), dim=1) @ ages
    return (expected - torch.as_tensor(target).float().view(-1)).abs().mean()


class DistillationLoss:
    """Label-smoothed cross-entropy on the true group, mixed with the KL divergence to a
    teacher's tempered probabilities (Hinton et al. 2015) when the batch carries them."""

    def __init__(self, label_smoothing: float, weight: float, temperature: float) -> None:
        self.hard = LabelSmoothingCrossEntropyFlat(eps=label_smoothing)
        self.weight = weight
        self.temperature = temperature

    def __call__(
        self, pred: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor | None = None
    ) -> torch.Tensor:
        hard = self.hard(pred, target)
        if teacher is None or self.weight == 0:
            return hard
        t = self.temperature
        soft_teacher = torch.softmax(teacher.float() / t, dim=1)
        soft = torch.nn.functional.kl_div(
            torch.log_softmax(pred.float() / t, dim=1), soft_teacher, reduction="batchmean"
        )
        return (1 - self.weight) * hard + self.weight * t * t * soft
