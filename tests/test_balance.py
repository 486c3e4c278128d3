"""Sampling weights that give every group of people the overall age mix, and the age loss's
mean and variance terms."""

import numpy as np
import torch

from agegroup.training.balance import balancing_weights
from agegroup.training.data import Sample
from agegroup.training.losses import AgeLoss


def sample(i, age, race, gender=0):
    return Sample(f"{i}.jpg", age, gender, race, f"g{i}", False)


def test_weighted_draws_give_every_race_the_overall_age_group_mix():
    # Race 0: mostly children; race 1: mostly adults of 31-40.
    samples = [sample(i, 5, 0) for i in range(30)] + [sample(30 + i, 35, 0) for i in range(10)]
    samples += [sample(40 + i, 5, 1) for i in range(10)] + [
        sample(50 + i, 35, 1) for i in range(30)
    ]
    weights = balancing_weights(samples, "race", clip=(0.01, 100))
    assert np.isclose(weights.mean(), 1.0)
    groups = np.array([s.bucket for s in samples])
    races = np.array([s.race for s in samples])
    overall_children = (groups == 0).mean()
    for race in (0, 1):
        mask = races == race
        children = weights[mask & (groups == 0)].sum() / weights[mask].sum()
        assert np.isclose(children, overall_children)  # 0.5 in both, from 0.75 and 0.25


def test_weights_are_clipped_and_faces_without_a_race_keep_an_even_share():
    samples = [sample(i, 5, 0) for i in range(99)] + [sample(99, 35, 0)]
    samples += [sample(100 + i, 35, 1) for i in range(100)] + [sample(200, 70, None)]
    weights = balancing_weights(samples, "race", clip=(0.25, 4.0))
    raw = weights * (1 / weights[-1])  # the unlabelled face had weight 1 before normalising
    assert raw.max() <= 4.0 + 1e-9 and raw.min() >= 0.25 - 1e-9
    assert np.isclose(raw[99], 4.0)  # the one adult of race 0 would weigh ~50 unclipped


def test_the_mean_and_variance_terms_punish_a_spread_distribution_centred_off_the_age():
    ages = torch.arange(101, dtype=torch.float32)
    target = torch.tensor([30])
    narrow = -(((ages - 30) / 2) ** 2)[None, :]  # centred on 30, narrow
    wide = -(((ages - 40) / 15) ** 2)[None, :]  # centred on 40, wide
    plain = AgeLoss()
    both = AgeLoss(mean_weight=1.0, variance_weight=1.0)
    added_narrow = both(narrow, target) - plain(narrow, target)
    added_wide = both(wide, target) - plain(wide, target)
    assert 0 < added_narrow < 0.1  # variance 0.02 decades² (std 1.4 years), mean on target
    assert added_wide > 1.0  # 1 decade off (0.5) and a variance of over a decade²
