"""Write the example photos the start page offers (static/examples/), from public-domain sources.

    python -m tools.make_examples

- grace-hopper.jpg: Grace Hopper's official U.S. Navy portrait (public domain, a work of the
  U.S. federal government), as matplotlib ships it in its sample data.
- group.jpg: five copies of her face, cropped, some mirrored, of different sizes, on a drawn
  background: a "group photo" whose every face the detector finds.
- no-face.jpg: a drawn landscape with no face in it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import cbook
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "static" / "examples"
# (x, y, side, mirrored, grey): where each face goes on the 1200 x 800 group photo.
GROUP = [(60, 420, 150, False, False), (300, 80, 120, True, True), (520, 380, 180, False, False),
         (800, 120, 100, True, False), (960, 450, 160, False, True)]  # fmt: skip


def grace() -> Image.Image:
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as image:
        return image.convert("RGB")


def soft_wall(width: int, height: int, seed: int) -> Image.Image:
    """A soft, muted wall: a stand-in for a room, with no face in it."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(150, 215, (height // 100, width // 100, 3), np.uint8)
    coarse[..., 2] = np.minimum(255, coarse[..., 2] + 25)  # a cool tint
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    return image.filter(ImageFilter.GaussianBlur(20))


def soft_mask(side: int) -> Image.Image:
    """An ellipse with a feathered edge, so a pasted face blends into the background."""
    mask = Image.new("L", (side, side), 0)
    inset = side // 12
    ImageDraw.Draw(mask).ellipse((inset, inset // 2, side - inset, side - inset // 2), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(side / 20))


def group(face_source: Image.Image) -> Image.Image:
    from agegroup.crops import crop_face
    from agegroup.faces import get_detector

    [box] = get_detector().detect(face_source)
    face = crop_face(face_source, box)
    photo = soft_wall(1200, 800, seed=2)
    for x, y, side, mirrored, grey in GROUP:
        one = face.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirrored else face
        if grey:
            one = one.convert("L").convert("RGB")
        photo.paste(one.resize((side, side), Image.Resampling.LANCZOS), (x, y), soft_mask(side))
    return photo


def landscape() -> Image.Image:
    """Sky, sun, hills and a lake: plenty to see, nobody to judge."""
    image = Image.new("RGB", (900, 600))
    draw = ImageDraw.Draw(image)
    for y in range(600):
        t = y / 600
        draw.line(
            [(0, y), (900, y)], fill=(int(250 - 120 * t), int(180 - 60 * t), int(120 + 100 * t))
        )
    draw.ellipse((620, 90, 740, 210), fill=(255, 236, 170))
    draw.polygon(
        [(0, 420), (200, 260), (420, 400), (640, 240), (900, 410), (900, 600), (0, 600)],
        fill=(70, 110, 90),
    )
    draw.rectangle((0, 480, 900, 600), fill=(60, 100, 150))
    return image.filter(ImageFilter.GaussianBlur(1.5))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    source = grace()
    source.save(OUT / "grace-hopper.jpg", quality=85)
    group(source).save(OUT / "group.jpg", quality=85)
    landscape().save(OUT / "no-face.jpg", quality=85)
    for path in sorted(OUT.glob("*.jpg")):
        print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
