"""age-v1's answers on every UTKFace image, as a teacher to distil.

    python -m agegroup.training.agev1 --out runs/agev1/ages.npz

Writes age-v1's age distribution (``agegroup.agev1``: 81 classes, 0.25, 1, ..., 80 years) for
every UTKFace image, and its seven groups' log-probabilities for ``train --teacher``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from agegroup.ages import GROUP_OF_AGE
from agegroup.agev1 import AgeV1, to_age_grid
from agegroup.training import data as utk


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
