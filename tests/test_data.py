"""UTKFace labels from file names, and the fixed duplicate-aware split."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from agegroup.training.data import (
    DEFAULT_DATA_DIR,
    FaceLabel,
    group_keys,
    is_test_group,
    list_samples,
    parse_utkface_name,
)


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("100_0_0_20170112213500903.jpg.chip.jpg", FaceLabel(100, 0, 0)),
        ("1_1_4_20161221193016140.jpg.chip.jpg", FaceLabel(1, 1, 4)),
        # race missing
        ("39_1_20170116174525125.jpg.chip.jpg", FaceLabel(39, 1, None)),
        ("61_1_20170109142408075.jpg.chip.jpg", FaceLabel(61, 1, None)),
        # dot missing before "jpg"
        ("55_0_0_20170116232725357jpg.chip.jpg", FaceLabel(55, 0, 0)),
        # a space before the extension
        ("24_0_1_20170116220224657 .jpg.chip.jpg", FaceLabel(24, 0, 1)),
        # too few / too many date digits
        ("14_0_0_2017011022340900.jpg.chip.jpg", FaceLabel(14, 0, 0)),
        ("28_1_2_201701161846515488.jpg.chip.jpg", FaceLabel(28, 1, 2)),
        # a full path is fine too
        ("/data/UTKFace/7_0_3_20170110215648859.jpg.chip.jpg", FaceLabel(7, 0, 3)),
    ],
)
def test_every_name_pattern_upstream_parses_to_its_age_gender_and_race(name, label):
    assert parse_utkface_name(name) == label


@pytest.mark.parametrize("name", ["", "abc.jpg", "_1_0_2017.jpg.chip.jpg", "x39_1_0_2017.jpg"])
def test_names_without_a_leading_age_are_errors_not_silently_dropped(name):
    with pytest.raises(ValueError):
        parse_utkface_name(name)


def test_split_rule_gives_the_pinned_side_for_known_keys():
    """The values every trained model's test split was made with: a changed hash (or one
    salted per process, like Python's own) would move faces between training and test."""
    keys = [f"{age}_0_0_2017011{age:06d}.jpg.chip.jpg" for age in range(2000)]
    sides = [is_test_group(k) for k in keys]
    assert [i for i, test in enumerate(sides[:12]) if test] == [0, 6]
    assert sum(sides) == 380  # about 20% test


def test_duplicates_are_grouped_transitively():
    keys = group_keys(["a", "b", "c", "d"], [["b", "c"], ["c", "d"]])
    assert keys == {"a": "a", "b": "b", "c": "b", "d": "b"}


def _fake_dataset(folder: Path) -> Path:
    images = folder / "UTKFace"
    images.mkdir()
    names = [f"{age}_{age % 2}_{age % 5}_20170101{age:09d}.jpg.chip.jpg" for age in range(1, 90)]
    for name in names:
        Image.new("RGB", (8, 8)).save(images / name, "JPEG")
    # Two copies of one photo, labelled 30 and 40 upstream: one group, median age.
    (folder / "near_duplicate_groups.json").write_text(f'[["{names[29]}", "{names[39]}"]]')
    return folder


def test_groups_stay_on_one_side_and_conflicting_ages_use_the_median(tmp_path):
    samples = list_samples(_fake_dataset(tmp_path), dedupe_test=False)
    by_name = {s.name: s for s in samples}
    a = by_name["30_0_0_20170101000000030.jpg.chip.jpg"]
    b = by_name["40_0_0_20170101000000040.jpg.chip.jpg"]
    assert a.group == b.group and a.is_test == b.is_test
    assert a.age == b.age == 30  # median_low of (30, 40)
    assert len(samples) == 89  # nothing dropped


@pytest.mark.skipif(not DEFAULT_DATA_DIR.is_dir(), reason="UTKFace is not beside the checkout")
def test_real_split_is_disjoint_and_the_pinned_fifth():
    samples = list_samples(DEFAULT_DATA_DIR, dedupe_test=False)
    assert len(samples) == 23_707
    groups_by_side: dict[bool, set[str]] = {True: set(), False: set()}
    for sample in samples:
        groups_by_side[sample.is_test].add(sample.group)
    assert not groups_by_side[True] & groups_by_side[False]
    assert sum(s.is_test for s in samples) == 4_740  # the split every model was tested on
    assert [(s.name, s.is_test) for s in samples[:2]] == [
        ("100_0_0_20170112213500903.jpg.chip.jpg", True),
        ("100_0_0_20170112215240346.jpg.chip.jpg", False),
    ]
