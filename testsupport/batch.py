"""Folders of photos for the batch tests (command, Ray, the page's several photos) and the
throughput benchmark, made from the bundled public-domain examples with fixed choices.

Photo ``i`` is Grace Hopper's portrait (``static/examples/grace-hopper.jpg``) at a width,
brightness and side chosen by ``i``, as JPEG, PNG or WebP; every ``GROUP_EVERY``-th photo is
the group of five instead, every ``FACELESS_EVERY``-th the photo without a face. The two
unreadable files are a text file named like a photo and a JPEG cut short.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

from agegroup.config import PROJECT_ROOT
from testsupport.uploads import image_bytes

EXAMPLES = PROJECT_ROOT / "static" / "examples"
GROUP_EVERY = 7
FACELESS_EVERY = 9
WIDTHS = (200, 240, 300, 360)
FORMATS = (("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"))
NOT_A_PHOTO = b"Shopping list: milk, eggs. This is not a photo.\n"


def _example(name: str) -> Image.Image:
    with Image.open(EXAMPLES / name) as image:
        return image.convert("RGB")


def portrait(index: int) -> Image.Image:
    """Grace Hopper's portrait, its width, brightness and side chosen by ``index``."""
    grace = _example("grace-hopper.jpg")
    width = WIDTHS[index % len(WIDTHS)]
    image = grace.resize((width, round(width * grace.height / grace.width)))
    image = ImageEnhance.Brightness(image).enhance(1 - 0.06 * (index % 5))
    return ImageOps.mirror(image) if index % 2 else image


def photo(index: int) -> tuple[str, bytes]:
    """Photo ``index`` of a folder (numbered from 1): its file name and bytes."""
    if index % FACELESS_EVERY == 0:
        return f"{index:02d}-no-face.jpg", (EXAMPLES / "no-face.jpg").read_bytes()
    if index % GROUP_EVERY == 0:
        return f"{index:02d}-group.jpg", (EXAMPLES / "group.jpg").read_bytes()
    suffix, fmt = FORMATS[index % len(FORMATS)]
    return f"{index:02d}-portrait.{suffix}", image_bytes(portrait(index), fmt)


def unreadable_files() -> list[tuple[str, bytes]]:
    """A text file named like a photo (415's unsupported_type) and a JPEG cut short (422's
    corrupt_image)."""
    cut = (EXAMPLES / "group.jpg").read_bytes()[:4000]
    return [("notes.jpg", NOT_A_PHOTO), ("cut-short.jpg", cut)]


def photo_folder(folder: Path, photos: int, unreadable: bool = True) -> list[Path]:
    """``photos`` photos (and the two unreadable files) written into ``folder``; returns the
    files in name order."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [photo(i) for i in range(1, photos + 1)]
    files += unreadable_files() if unreadable else []
    for name, data in files:
        (folder / name).write_bytes(data)
    return sorted(folder / name for name, _ in files)


def predict_command(*args: object) -> list[str]:
    """``agegroup predict ARGS...`` as a user runs it, with this Python."""
    return [sys.executable, "-m", "agegroup", "predict", *(str(a) for a in args)]


def run_command(
    args: list[str], env: dict[str, str] | None = None, cwd: Path = PROJECT_ROOT
) -> subprocess.CompletedProcess[str]:
    """Run a command to its end with ``env`` added to this environment; output as text."""
    return subprocess.run(
        args, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True
    )
