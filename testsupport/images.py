"""Synthetic pictures for tests and tools (numpy and Pillow only: no torch)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from testsupport.uploads import image_bytes


def synthetic_faces(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Coloured blobs on noise: enough for a learner to fit one batch, no real data needed."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, size=(count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        images[i, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = (i * 37) % 255
    return images


def face_jpeg(size: int = 120, seed: int = 3) -> bytes:
    """One synthetic face as a JPEG: what the tests upload when any valid photo will do."""
    return image_bytes(Image.fromarray(synthetic_faces(1, size, seed=seed)[0]))
