"""The seven age groups, shared by training, evaluation and serving.

Keeping the bucket edges in one place guarantees that the labels a model is trained on are
exactly the labels the web app shows.
"""

from __future__ import annotations

BUCKETS: tuple[str, ...] = ("0-10", "11-20", "21-30", "31-40", "41-50", "51-60", "61+")

# Inclusive upper age of every bucket but the last, which is open-ended.
_UPPER_AGES: tuple[int, ...] = (10, 20, 30, 40, 50, 60)


def bucket_index(age: int) -> int:
    """Return the position in ``BUCKETS`` of the group an age (in whole years) belongs to."""
    if age < 0:
        raise ValueError(f"age must be >= 0, got {age}")
    for index, upper in enumerate(_UPPER_AGES):
        if age <= upper:
            return index
    return len(BUCKETS) - 1


def bucket_for_age(age: int) -> str:
    """Return the label of the group an age belongs to, e.g. ``bucket_for_age(11) == "11-20"``."""
    return BUCKETS[bucket_index(age)]
