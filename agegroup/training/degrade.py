"""Corruptions like those of real uploads, for training and for the degraded test set.

Real photos are not UTKFace's clean, well-lit 200 px crops: they are grey or sepia scans,
blurred, compressed, small faces enlarged, noisy, with colour casts and poor exposure. The
same ``degrade`` makes the training augmentation (``Degrade``, on a random half of the
training images) and the fixed degraded test set (``degraded_copy``: every test face, one
seeded mix per file), so what the model learns to withstand is what it is measured on.

Sizes are fractions of the image side, so a 96 px training image and a 200 px test crop
are corrupted alike.
"""

from __future__ import annotations

import io
import random
import zlib

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from agegroup.crops import region_with_edges
from agegroup.preprocess import RESAMPLE

# The degraded test set's seed: one fixed mix of corruptions per file name.
TEST_SEED = 2026
# The tight test set's seed: one fixed framing per file name (``tight_copy``).
TIGHT_SEED = 2027
SEPIA = ((0.393, 0.769, 0.189), (0.349, 0.686, 0.168), (0.272, 0.534, 0.131))


def _grey(image: Image.Image, rng: random.Random) -> Image.Image:
    return ImageOps.grayscale(image).convert("RGB")


def _sepia(image: Image.Image, rng: random.Random) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32) @ np.asarray(SEPIA, dtype=np.float32).T
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _colour_cast(image: Image.Image, rng: random.Random) -> Image.Image:
    gains = np.array([rng.uniform(0.8, 1.2) for _ in range(3)], dtype=np.float32)
    return Image.fromarray(np.clip(np.asarray(image) * gains, 0, 255).astype(np.uint8))


def _contrast(image: Image.Image, rng: random.Random) -> Image.Image:
    return ImageEnhance.Contrast(image).enhance(rng.uniform(0.5, 1.4))


def _exposure(image: Image.Image, rng: random.Random) -> Image.Image:
    gamma = rng.uniform(0.5, 2.0)
    table = [round(255 * (i / 255) ** gamma) for i in range(256)] * 3
    return image.point(table)


def _small_face(image: Image.Image, rng: random.Random) -> Image.Image:
    """A face of 30-60 px in the photo, enlarged to the crop (the crop is ~1.1 face sides)."""
    side = max(8, round(rng.uniform(33, 67) * image.width / 200))
    return image.resize((side, side), RESAMPLE).resize(image.size, RESAMPLE)


def _blur(image: Image.Image, rng: random.Random) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.6) * image.width / 96))


def _noise(image: Image.Image, rng: random.Random) -> Image.Image:
    """Colour noise or luminance grain (one value per pixel for all three channels)."""
    sigma = rng.uniform(3, 14)
    channels = 3 if rng.random() < 0.5 else 1
    shape = (image.height, image.width, channels)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, sigma, shape)
    return Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))


def jpeg_round_trip(image: Image.Image, quality: int) -> Image.Image:
    """``image`` saved as a JPEG of this quality and decoded again, as an upload would be."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _jpeg(image: Image.Image, rng: random.Random) -> Image.Image:
    return jpeg_round_trip(image, rng.randint(15, 50))


# (corruption, probability), applied in this order: colour first, resolution, then the
# sensor and the compression, as a photo is taken, scanned and uploaded.
CORRUPTIONS = (
    (_grey, 0.2),
    (_sepia, 0.07),
    (_colour_cast, 0.2),
    (_contrast, 0.25),
    (_exposure, 0.25),
    (_small_face, 0.3),
    (_blur, 0.2),
    (_noise, 0.2),
    (_jpeg, 0.35),
)


def degrade(image: Image.Image, rng: random.Random) -> Image.Image:
    """A random mix of at least one corruption of ``image`` (RGB, same size)."""
    image = image.convert("RGB")
    chosen = [fn for fn, p in CORRUPTIONS if rng.random() < p]
    if not chosen:
        chosen = [rng.choice([fn for fn, _ in CORRUPTIONS])]
    if _grey in chosen and _sepia in chosen:
        chosen.remove(_sepia)
    for corruption in chosen:
        image = corruption(image, rng)
    return image


def tight_framing(image: Image.Image, rng: random.Random) -> Image.Image:
    """The crop the app makes of a face whose photo ends close around it (a portrait, or a face
    already cut out, as age datasets cut them): only the middle 50-90% of the crop's side (its
    centre moved by up to 4% of the side) is photo, and past it the crop repeats the photo's
    edges, as ``agegroup.crops.region_with_edges`` makes it at serving time."""
    image = image.convert("RGB")
    side = image.width
    inner = max(2, round(side * rng.uniform(0.5, 0.9)))
    reach = round(0.04 * side)
    left, top = (
        min(max((side - inner) // 2 + rng.randint(-reach, reach), 0), side - inner)
        for _ in range(2)
    )
    photo = image.crop((left, top, left + inner, top + inner))
    return region_with_edges(photo, (-left, -top, side - left, side - top))


def rng_for(name: str, seed: int) -> random.Random:
    """A generator fixed by a file's name and a seed: the same on every run and machine."""
    return random.Random(seed * 1_000_003 + zlib.crc32(name.encode()))


def degraded_copy(image: Image.Image, name: str) -> Image.Image:
    """The degraded test set's version of one test file: the same for every run and machine."""
    return degrade(image, rng_for(name, TEST_SEED))


def tight_copy(image: Image.Image, name: str) -> Image.Image:
    """The tight test set's version of one test file (``tight_framing``, fixed per file)."""
    return tight_framing(image, rng_for(name, TIGHT_SEED))
