"""Training crops made the way the app crops uploads (agegroup/training/served_crops.py)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image

from agegroup.crops import CROP_SIZE
from agegroup.training.data import Sample
from agegroup.training.learner import CachedImages
from agegroup.training.served_crops import placed_photo, served_crop, served_training_rows


def grey_small(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image.convert("L").resize((32, 32)), dtype=np.float64)
    return (pixels - pixels.mean()) / pixels.std()


@pytest.mark.parametrize("name", ["1_0_0_a.jpg", "35_1_2_b.jpg", "80_0_3_c.jpg"])
def test_the_app_finds_and_crops_the_placed_face_like_the_original(grace_crop, name) -> None:
    photo, (cx, cy, side) = placed_photo(grace_crop, name)
    assert photo.width > side and 64 <= side <= 200
    crop = served_crop(grace_crop, name)
    assert crop is not None and crop.size == (CROP_SIZE, CROP_SIZE)
    # Same framing, upright again: the crops agree pixel for pixel (correlation of 32 px greys).
    assert float(np.mean(grey_small(crop) * grey_small(grace_crop))) > 0.8
    assert np.array_equal(np.asarray(crop), np.asarray(served_crop(grace_crop, name)))  # fixed


def test_a_photo_without_the_face_gives_no_crop(grace_crop) -> None:
    blank = Image.new("RGB", grace_crop.size, (128, 128, 128))
    assert served_crop(blank, "40_0_0_x.jpg") is None


def sample(name: str) -> Sample:
    return Sample(name, 30, 0, 0, name, False)


def test_training_rows_take_served_crops_only_where_found_and_outside_validation(tmp_path):
    names = [f"{i}_0_0_x.jpg" for i in range(6)]
    served_file = tmp_path / "served.npz"
    served = np.full((6, 4, 4, 3), 200, np.uint8)
    found = np.array([True, True, False, True, True, True])
    np.savez(served_file, images=served, names=np.array(names), found=found)
    # The training split holds five of them, in another order.
    order = [5, 0, 2, 3, 1]
    images = np.zeros((5, 4, 4, 3), np.uint8)
    rows = served_training_rows(served_file, [sample(names[i]) for i in order], images, [3])
    from_served = [bool(rows[i].min() == 200) for i in range(5)]
    assert from_served == [True, True, False, False, True]  # row 2 missed, row 3 validation

    with pytest.raises(ValueError, match="lacks 1 training images"):
        served_training_rows(served_file, [sample("99_0_0_y.jpg")], images[:1], [])
    with pytest.raises(ValueError, match="holds"):
        served_training_rows(served_file, [sample(names[0])], np.zeros((1, 8, 8, 3), np.uint8), [])


def test_the_getter_draws_its_share_from_the_served_crops() -> None:
    images = np.zeros((3, 4, 4, 3), np.uint8)
    served = np.full((3, 4, 4, 3), 255, np.uint8)
    getter = CachedImages(images, served, served_share=0.3)
    draws = [np.asarray(getter(1)).max() == 255 for _ in range(2000)]
    assert 0.25 < np.mean(draws) < 0.35
    assert all(np.asarray(CachedImages(images, served, 0.0)(1)).max() == 0 for _ in range(50))
    restored = pickle.loads(pickle.dumps(getter))
    assert restored.images is None and restored.served is None
