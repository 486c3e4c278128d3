"""Pack the training part of UTKFace small enough to travel to a remote GPU machine.

    python -m agegroup.training.pack --size 112 --quality 80 --out gpu-pack

A remote GPU machine that receives the working tree and at most 64 MiB of other files,
and reaches nothing else, can train from it. This writes ``OUT/utkface/``, laid out like UTKFace
itself (the same file names, which carry the labels, plus ``md5sums.txt`` and
``near_duplicate_groups.json`` limited to those files), so that ``list_samples`` and the
training command read it unchanged. Only the train split travels (test groups are left out
whole, so every remaining group keeps its key, its age and its validation membership; this is
checked before anything is written), each face resized once to the training size and stored
as JPEG. With ``--teacher`` the teacher's targets for those files are packed too (float16).

UTKFace is licensed for non-commercial research only: the pack is for a training run and is
never committed (``gpu-pack/`` is ignored by git).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from agegroup.training import data as utk
from agegroup.training.distill import load_teacher_targets

MIB = 2**20


def packed_face(path: Path, size: int, quality: int) -> bytes:
    """One UTKFace crop, resized as training resizes it, as JPEG bytes."""
    picture = Image.fromarray(utk.load_face(path, size))
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=quality)
    return out.getvalue()


def pack(data_dir: Path, out: Path, size: int, quality: int, teacher: Path | None) -> int:
    """Write the pack; returns its size in bytes. Raises if the split would not survive."""
    samples = utk.list_samples(data_dir)
    kept = [s for s in samples if not s.is_test]
    names = {s.name for s in kept}
    target = out / "utkface"
    image_dir = target / "UTKFace"
    image_dir.mkdir(parents=True, exist_ok=True)
    source = utk.image_dir_of(data_dir)
    for sample in kept:
        (image_dir / sample.name).write_bytes(packed_face(source / sample.name, size, quality))
    md5s = data_dir / "md5sums.txt"
    if md5s.exists():
        lines = [ln for ln in md5s.read_text().splitlines() if ln.partition("  ")[2] in names]
        (target / "md5sums.txt").write_text("\n".join(lines) + "\n")
    near = data_dir / "near_duplicate_groups.json"
    if near.exists():
        groups = [[n for n in g if n in names] for g in json.loads(near.read_text())]
        (target / "near_duplicate_groups.json").write_text(json.dumps([g for g in groups if g]))
    (target / "README.md").write_text(
        f"UTKFace training split, {size} px JPEG (quality {quality}), packed by "
        "agegroup.training.pack.\nLicense: non-commercial research use only. Never commit.\n"
    )
    repacked = utk.list_samples(target)
    if repacked != kept:
        raise RuntimeError("the packed folder lists other samples than the train split")
    if teacher is not None:
        kept_names = [s.name for s in kept]
        np.savez_compressed(
            out / "teacher.npz",
            names=np.array(kept_names),
            log_probs=load_teacher_targets(teacher, kept_names).astype(np.float16),
        )
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=utk.DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path, default=Path("gpu-pack"))
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--quality", type=int, default=80)
    parser.add_argument("--teacher", type=Path, help="e.g. runs/agev1/ages.npz")
    parser.add_argument("--budget-mib", type=float, default=56.0, help="fail above this size")
    args = parser.parse_args(argv)
    total = pack(args.data, args.out, args.size, args.quality, args.teacher)
    print(f"wrote {args.out}: {total / MIB:.1f} MiB")
    if total > args.budget_mib * MIB:
        raise SystemExit(f"{args.out} is {total / MIB:.1f} MiB, over {args.budget_mib} MiB")


if __name__ == "__main__":
    main()
