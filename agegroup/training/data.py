"""UTKFace: file-name labels, a fixed duplicate-aware split, and a decoded image cache.

Split rule (written into the model card): files that show the same photo (byte-identical or
listed together in ``near_duplicate_groups.json``) form one group; the group's key is its
alphabetically first file name; a group belongs to the **test** split when the first 8 hex
digits of ``sha256(key)``, read as an integer, modulo 1000 are below 200 (about 20%).
The rule depends on nothing but file names, so it is the same on every machine and run.

Conflicting ages inside a group (the same picture labelled with different ages upstream):
every member gets the group's median age, and the test split keeps one file per group so a
duplicated photo is never counted twice.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from agegroup.buckets import bucket_index
from agegroup.config import UTKFACE_DIR
from agegroup.preprocess import to_model_input

DEFAULT_DATA_DIR = UTKFACE_DIR
TEST_FRACTION_PER_MILLE = 200
GENDERS = ("male", "female")
RACES = ("White", "Black", "Asian", "Indian", "Others")

# AGE_GENDER_RACE_DATETIME.jpg.chip.jpg, where gender and/or race may be missing and the
# date may carry stray characters (a space, a missing dot, extra digits) upstream.
_NAME = re.compile(r"^(?P<age>\d+)_(?P<rest>.*)$")


@dataclass(frozen=True)
class FaceLabel:
    """What a UTKFace file name says about its face; ``None`` where the name omits it."""

    age: int
    gender: int | None
    race: int | None


def parse_utkface_name(name: str) -> FaceLabel:
    """Parse ``AGE_GENDER_RACE_DATETIME.jpg.chip.jpg``, tolerating the malformed names upstream.

    Raises ``ValueError`` when the name does not start with an age, so that no file is
    silently dropped.
    """
    match = _NAME.match(Path(name).name)
    if match is None:
        raise ValueError(f"not a UTKFace file name (no leading age): {name!r}")
    fields = match["rest"].split("_")
    # The last field is the date; single-digit fields before it are gender then race.
    codes = [int(field) for field in fields[:-1] if field.isdigit() and len(field) == 1]
    gender = codes[0] if len(codes) >= 1 and codes[0] in (0, 1) else None
    race = codes[1] if len(codes) >= 2 and codes[1] in range(len(RACES)) else None
    return FaceLabel(age=int(match["age"]), gender=gender, race=race)


@dataclass(frozen=True)
class Sample:
    """One image of the dataset with its (group-consistent) label and split."""

    name: str
    age: int
    gender: int | None
    race: int | None
    group: str
    is_test: bool

    @property
    def bucket(self) -> int:
        return bucket_index(self.age)


def per_mille(key: str) -> int:
    """A fixed number in 0-999 for ``key``: the first 8 hex digits of its sha256, modulo 1000."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % 1000


def is_test_group(group_key: str) -> bool:
    """The fixed split rule: hash the group's key, about 20% of groups go to test."""
    return per_mille(group_key) < TEST_FRACTION_PER_MILLE


def _duplicate_groups(data_dir: Path) -> list[list[str]]:
    """Groups of file names that show the same picture (near-duplicates and identical bytes)."""
    groups: list[list[str]] = []
    near = data_dir / "near_duplicate_groups.json"
    if near.exists():
        groups.extend(json.loads(near.read_text()))
    md5s = data_dir / "md5sums.txt"
    if md5s.exists():
        by_hash: dict[str, list[str]] = {}
        for line in md5s.read_text().splitlines():
            digest, _, name = line.partition("  ")
            if name:
                by_hash.setdefault(digest, []).append(name)
        groups.extend(names for names in by_hash.values() if len(names) > 1)
    return groups


def group_keys(names: list[str], duplicate_groups: list[list[str]]) -> dict[str, str]:
    """Map every name to its group key (union of overlapping duplicate groups)."""
    parent = {name: name for name in names}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for group in duplicate_groups:
        members = [name for name in group if name in parent]
        for other in members[1:]:
            a, b = find(members[0]), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {name: find(name) for name in names}


def list_samples(data_dir: Path = DEFAULT_DATA_DIR, dedupe_test: bool = True) -> list[Sample]:
    """List every UTKFace image with its label and split, sorted by name."""
    image_dir = data_dir / "UTKFace" if (data_dir / "UTKFace").is_dir() else data_dir
    names = sorted(p.name for p in image_dir.iterdir() if p.name.endswith(".jpg"))
    keys = group_keys(names, _duplicate_groups(data_dir))
    labels = {name: parse_utkface_name(name) for name in names}
    members: dict[str, list[str]] = {}
    for name in names:
        members.setdefault(keys[name], []).append(name)
    samples = []
    for key, group in members.items():
        age = int(statistics.median_low(labels[n].age for n in group))
        test = is_test_group(key)
        for name in group[:1] if (test and dedupe_test) else group:
            label = labels[name]
            samples.append(Sample(name, age, label.gender, label.race, key, test))
    return sorted(samples, key=lambda s: s.name)


def image_dir_of(data_dir: Path) -> Path:
    return data_dir / "UTKFace" if (data_dir / "UTKFace").is_dir() else data_dir


def spread_test_crops(count: int, data_dir: Path = DEFAULT_DATA_DIR) -> list[Image.Image]:
    """``count`` test-split crops spread evenly over the split (a fixed choice), as RGB.

    Raises ``FileNotFoundError`` naming the folder when UTKFace is not there.
    """
    image_dir = image_dir_of(data_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(
            f"UTKFace is not at {data_dir} (need {image_dir}; set AGE_UTKFACE_DIR or --data)"
        )
    tests = [s for s in list_samples(data_dir) if s.is_test]
    step = max(1, len(tests) // max(1, count))
    return [Image.open(image_dir / s.name).convert("RGB") for s in tests[::step][:count]]


def load_face(path: Path, size: int) -> np.ndarray:
    """Decode one face crop into the model's input picture (uint8, HxWx3)."""
    with Image.open(path) as image:
        return np.asarray(to_model_input(image, size))


def build_cache(data_dir: Path, size: int, cache_dir: Path) -> Path:
    """Decode every image once into ``cache_dir/utkface_<size>.npz`` (images, names) and return it.

    Decoding and resizing 23k JPEGs each epoch would cost more CPU time than the model itself
    at small resolutions.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"utkface_{size}.npz"
    if target.exists():
        return target
    image_dir = image_dir_of(data_dir)
    names = sorted(p.name for p in image_dir.iterdir() if p.name.endswith(".jpg"))
    images = np.stack([load_face(image_dir / name, size) for name in names])
    tmp = target.with_suffix(".tmp.npz")
    np.savez(tmp, images=images, names=np.array(names))
    tmp.replace(target)
    return target


def load_cache(path: Path) -> tuple[np.ndarray, list[str]]:
    with np.load(path) as data:
        return data["images"], [str(n) for n in data["names"]]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Decode UTKFace once into a uint8 cache.")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--cache", type=Path, default=Path("data-cache"))
    args = parser.parse_args()
    print(build_cache(args.data, args.size, args.cache))
