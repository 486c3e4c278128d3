"""Bucket edges: the one age -> group function shared by training and serving."""

import pytest

from agegroup.buckets import BUCKETS, bucket_for_age, bucket_index


@pytest.mark.parametrize(
    ("age", "bucket"),
    [
        (0, "0-10"),
        (10, "0-10"),
        (11, "11-20"),
        (20, "11-20"),
        (21, "21-30"),
        (30, "21-30"),
        (31, "31-40"),
        (50, "41-50"),
        (51, "51-60"),
        (60, "51-60"),
        (61, "61+"),
        (116, "61+"),
    ],
)
def test_each_age_at_a_group_edge_falls_in_the_right_group(age, bucket):
    assert bucket_for_age(age) == bucket
    assert BUCKETS[bucket_index(age)] == bucket


def test_buckets_are_the_seven_groups_in_age_order():
    assert BUCKETS == ("0-10", "11-20", "21-30", "31-40", "41-50", "51-60", "61+")
    indices = [bucket_index(age) for age in range(0, 117)]
    assert indices == sorted(indices) and set(indices) == set(range(7))


def test_negative_age_is_an_error():
    with pytest.raises(ValueError):
        bucket_index(-1)
