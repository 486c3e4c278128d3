"""UTKFace faces cropped the way the app crops uploads: detector, landmarks and alignment.

Training on UTKFace's own crops teaches the model one framing; serving crops every face by
BlazeFace's box and dlib's landmarks (``agegroup.crops.crop_face``), which frames it a little
differently, more so for small or turned faces. Here every UTKFace image is pasted into a
larger photo (face side 64-200 px, turned up to 25 degrees, on a smooth background, one
JPEG round trip), found again by the app's own detector and cropped by ``crop_face``: the
crop the served model would see for that face. One fixed placement per file name, so the
test split's copy is a fixed test set too (``evaluate --served``).

    python -m agegroup.training.served_crops --size 96 --workers 2

writes ``data-cache/utkface_<size>_served.npz``: ``images`` and ``names`` in the order of
``utkface_<size>.npz``, and ``found`` (False where the detector missed the face; that row holds
the original crop, so a training run can use the array as it is).
"""

from __future__ import annotations

import argparse
import math
import random
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from agegroup.boxes import FaceBox
from agegroup.crops import CROP_SIZE, crop_face
from agegroup.faces import get_detector
from agegroup.preprocess import RESAMPLE, to_model_input
from agegroup.training import data as utk
from agegroup.training.degrade import jpeg_round_trip, rng_for

PLACEMENT_SEED = 4242
FACE_SIDES = (64, 200)  # pasted crop side, px
MAX_DEGREES = 25.0
MARGIN = (1.4, 2.2)  # photo side / pasted crop side (before the turn)
# A detection counts as the pasted face when its centre is this close (in pasted sides).
MATCH_DISTANCE = 0.35


def _background(side: int, rng: random.Random) -> Image.Image:
    """Smooth colour noise: a backdrop with no face in it."""
    cells = rng.randint(2, 6)
    coarse = np.array(
        [[[rng.randint(0, 255) for _ in range(3)] for _ in range(cells)] for _ in range(cells)],
        dtype=np.uint8,
    )
    return Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC)


def placed_photo(face: Image.Image, name: str) -> tuple[Image.Image, tuple[float, float, int]]:
    """The photo holding ``face`` for file ``name`` (fixed by the name), and where it went."""
    rng = rng_for(name, PLACEMENT_SEED)
    side = rng.randint(*FACE_SIDES)
    degrees = rng.uniform(-MAX_DEGREES, MAX_DEGREES)
    reach = side * (abs(math.cos(math.radians(degrees))) + abs(math.sin(math.radians(degrees))))
    photo_side = max(math.ceil(reach) + 2, round(side * rng.uniform(*MARGIN)))
    photo = _background(photo_side, rng)
    square = face.convert("RGB").resize((side, side), RESAMPLE).convert("RGBA")
    turned = square.rotate(degrees, Image.Resampling.BILINEAR, expand=True)
    left = rng.randint(0, photo_side - turned.width)
    top = rng.randint(0, photo_side - turned.height)
    photo.paste(turned, (left, top), turned)
    photo = jpeg_round_trip(photo, rng.randint(70, 95))
    return photo, (left + turned.width / 2, top + turned.height / 2, side)


def matching_face(boxes: list[FaceBox], where: tuple[float, float, int]) -> FaceBox | None:
    """The detection whose centre is nearest the pasted face's, if it is near enough."""
    cx, cy, side = where
    best, best_distance = None, MATCH_DISTANCE * side
    for box in boxes:
        distance = math.hypot(box.x + box.w / 2 - cx, box.y + box.h / 2 - cy)
        if distance <= best_distance:
            best, best_distance = box, distance
    return best


def served_crop(face: Image.Image, name: str) -> Image.Image | None:
    """The 200 px crop the app would make of this face in its placed photo (None: missed)."""
    photo, where = placed_photo(face, name)
    box = matching_face(get_detector().detect(photo), where)
    return None if box is None else crop_face(photo, box, CROP_SIZE)


def _one(job: tuple[Path, str, int]) -> tuple[np.ndarray, bool]:
    path, name, size = job
    with Image.open(path) as image:
        face = image.convert("RGB")
    crop = served_crop(face, name)
    return np.asarray(to_model_input(crop if crop is not None else face, size)), crop is not None


def build_served_cache(data_dir: Path, size: int, cache_dir: Path, workers: int) -> Path:
    """Write ``utkface_<size>_served.npz`` beside the plain cache (same names, same order)."""
    target = cache_dir / f"utkface_{size}_served.npz"
    if target.exists():
        return target
    _, names = utk.load_cache(utk.build_cache(data_dir, size, cache_dir))
    image_dir = utk.image_dir_of(data_dir)
    jobs = [(image_dir / name, name, size) for name in names]
    started = time.time()
    images, found = [], []
    with ProcessPoolExecutor(workers) as pool:
        for i, (pixels, hit) in enumerate(pool.map(_one, jobs, chunksize=64)):
            images.append(pixels)
            found.append(hit)
            if (i + 1) % 2000 == 0:
                rate = (i + 1) / (time.time() - started)
                print(f"{i + 1}/{len(jobs)}  {rate:.0f} img/s  found {np.mean(found):.3f}")
    tmp = target.with_suffix(".tmp.npz")
    np.savez(tmp, images=np.stack(images), names=np.array(names), found=np.array(found))
    tmp.replace(target)
    return target


def served_training_rows(
    path: Path, samples: list[utk.Sample], images: np.ndarray, valid_idx: list[int]
) -> np.ndarray:
    """The served crop for every row of ``images`` (the training split, ``samples`` order).

    Validation rows and faces the detector missed keep their original crop, so validation
    stays comparable with runs that use no served crops.
    """
    with np.load(path) as cached:
        served_images, found = cached["images"], cached["found"]
        row_of = {str(name): i for i, name in enumerate(cached["names"])}
    missing = [s.name for s in samples if s.name not in row_of]
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} training images, e.g. {missing[0]}")
    if served_images.shape[1:] != images.shape[1:]:
        raise ValueError(f"{path} holds {served_images.shape[1:]} images, not {images.shape[1:]}")
    rows = np.array([row_of[s.name] for s in samples])
    served = served_images[rows]
    keep_original = ~found[rows]
    keep_original[valid_idx] = True
    served[keep_original] = images[keep_original]
    return served


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=utk.DEFAULT_DATA_DIR)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--cache", type=Path, default=Path("data-cache"))
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    target = build_served_cache(args.data, args.size, args.cache, args.workers)
    with np.load(target) as cached:
        print(f"{target}: {len(cached['names'])} images, found {cached['found'].mean():.3f}")


if __name__ == "__main__":
    main()
