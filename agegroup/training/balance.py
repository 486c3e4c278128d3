"""Sampling weights that give every group of people the same age mix.

UTKFace's races and genders have very different age mixes: a third of its Asian faces are
children, and it has ten White faces aged 41-60 for every Asian one. A network trained on it
learns that mix as a cue ("this looks like an Asian face, so probably young"), which shows up
as an age bias per race. Importance weights ``p(group) / p(group | cell)``, where a cell is a
race (or a race and a gender), make every cell's age-group mix the overall one; they are
clipped so that a rare combination does not dominate an epoch.

    python -m agegroup.training.train --balance race-gender ...
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from agegroup.training.data import Sample

BALANCE_CHOICES = ("none", "race", "race-gender")
WEIGHT_RANGE = (0.25, 4.0)


def cell_of(sample: Sample, balance: str) -> tuple[int | None, ...] | None:
    """The cell ``sample`` belongs to, or ``None`` where its name omits a needed label."""
    if balance == "race":
        return None if sample.race is None else (sample.race,)
    if balance == "race-gender":
        if sample.race is None or sample.gender is None:
            return None
        return (sample.race, sample.gender)
    raise ValueError(f"balance must be one of {BALANCE_CHOICES[1:]}, not {balance!r}")


def balancing_weights(
    samples: Sequence[Sample], balance: str, clip: tuple[float, float] = WEIGHT_RANGE
) -> np.ndarray:
    """One sampling weight per sample (mean 1): ``p(group) / p(group | cell)``, clipped.

    Samples without the labels a cell needs keep weight 1 before normalisation.
    """
    groups = [s.bucket for s in samples]
    cells = [cell_of(s, balance) for s in samples]
    overall = Counter(groups)
    per_cell = Counter(zip(cells, groups, strict=True))
    cell_sizes = Counter(cells)
    weights = np.ones(len(samples))
    for i, (cell, group) in enumerate(zip(cells, groups, strict=True)):
        if cell is None:
            continue
        p_group = overall[group] / len(samples)
        p_group_in_cell = per_cell[(cell, group)] / cell_sizes[cell]
        weights[i] = np.clip(p_group / p_group_in_cell, *clip)
    return weights / weights.mean()
