"""Synthetic photos for the detection tests and ``tools.detection_bench``, made with fixed seeds.

Faces (UTKFace crops, or any face crop) are pasted at known places into cluttered scenes
(``face_photos``), or cut tight (``tight_photo``); faceless photos (textures, scenes, terrain
maps, text, charts, matplotlib's sample pictures) count false faces (``faceless_photos``). A
test that names "faceless photo 61" means ``faceless_photos``' photo made from seed 20,061.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from agegroup.training.degrade import jpeg_round_trip

# Pasted faces' sides (of the 200 x 200 crop), their conditions and the photos' sizes.
SIZES = (32, 48, 80, 160, 320)
CONDITIONS = ("plain", "grey", "blur", "dark", "covered")
PHOTO_SIZES = ((640, 480), (800, 600), (1024, 768), (1280, 960), (960, 1280))


@dataclass(frozen=True)
class Face:
    """A pasted face: centre and side in photo pixels, its turn and condition."""

    cx: float
    cy: float
    side: int
    degrees: float
    condition: str


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """matplotlib's DejaVu Sans (always installed with it), else Pillow's built-in font."""
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return ImageFont.truetype(str(path), size)
    except (ImportError, OSError):
        return ImageFont.load_default(size)


def clutter(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Smooth colour noise with shapes, lines and words: clutter without faces."""
    w, h = size
    cell = int(rng.integers(8, 40))
    coarse = rng.integers(0, 255, (h // cell + 2, w // cell + 2, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((w + 2 * cell, h + 2 * cell), Image.Resampling.BICUBIC)
    image = image.crop((cell, cell, cell + w, cell + h))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(8, 30))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(5, w // 3)), y0 + int(rng.integers(5, h // 3))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        kind = rng.integers(0, 4)
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif kind == 2:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 8)))
        else:
            words = "".join(rng.choice(list(string.ascii_letters + "  "), 12))
            draw.text((x0, y0), words, fill=colour, font=font(int(rng.integers(10, 60))))
    return image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 2))))


def with_condition(face: Image.Image, condition: str, rng: np.random.Generator) -> Image.Image:
    """The face crop (at its pasted size) grey, blurred, darkened or partly covered."""
    if condition == "grey":
        return face.convert("L").convert("RGB")
    if condition == "blur":
        return face.filter(ImageFilter.GaussianBlur(face.width * 0.015))
    if condition == "dark":
        dark = np.asarray(face, dtype=np.float32) * 0.3 + rng.normal(
            0, 3, (face.height, face.width, 3)
        )
        return Image.fromarray(np.clip(dark, 0, 255).astype(np.uint8))
    if condition == "covered":
        face = face.copy()
        s = face.width
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        box = ((0, int(0.68 * s), s, s), (0, 0, int(0.3 * s), s), (int(0.7 * s), 0, s, s))
        ImageDraw.Draw(face).rectangle(box[int(rng.integers(0, 3))], fill=colour)
        return face
    return face


def place(photo: Image.Image, crop: Image.Image, face: Face, rng: np.random.Generator) -> None:
    """Paste ``crop`` at ``face``: resized, conditioned, then turned about its centre."""
    square = with_condition(
        crop.resize((face.side, face.side), Image.Resampling.BILINEAR), face.condition, rng
    )
    rgba = square.convert("RGBA").rotate(
        face.degrees, Image.Resampling.BILINEAR, expand=True, fillcolor=(0, 0, 0, 0)
    )
    photo.paste(rgba, (round(face.cx - rgba.width / 2), round(face.cy - rgba.height / 2)), rgba)


def as_jpeg(photo: Image.Image, quality: int = 88) -> Image.Image:
    """The photo after a JPEG round trip, as an upload would be."""
    return jpeg_round_trip(photo, quality)


def face_photos(
    crops: list[Image.Image], count: int, seed: int
) -> list[tuple[Image.Image, list[Face]]]:
    """``count`` photos of 1-4 faces; sizes and conditions cycle, so each is equally common."""
    photos = []
    j = 0
    for i in range(count):
        rng = np.random.default_rng(seed + i)
        size = PHOTO_SIZES[int(rng.integers(0, len(PHOTO_SIZES)))]
        photo = clutter(size, rng)
        faces: list[Face] = []
        for _ in range(int(rng.integers(1, 5))):
            side = SIZES[j % len(SIZES)]
            condition = CONDITIONS[(j // len(SIZES)) % len(CONDITIONS)]
            degrees = float(rng.uniform(-30, 30))
            reach = (
                side
                * (abs(math.cos(math.radians(degrees))) + abs(math.sin(math.radians(degrees))))
                / 2
            )
            for _ in range(100):
                cx = float(rng.uniform(reach, size[0] - reach))
                cy = float(rng.uniform(reach, size[1] - reach))
                if all(math.hypot(cx - f.cx, cy - f.cy) > reach + f.side * 0.71 for f in faces):
                    break
            else:
                continue
            face = Face(cx, cy, side, degrees, condition)
            place(photo, crops[j % len(crops)], face, rng)
            faces.append(face)
            j += 1
        photos.append((as_jpeg(photo), faces))
    return photos


def _terrain(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    import matplotlib
    from matplotlib import cbook

    name, key = (("jacksboro_fault_dem.npz", "elevation"), ("topobathy.npz", "topo"))[
        int(rng.integers(0, 2))
    ]
    z = np.asarray(cbook.get_sample_data(name)[key], dtype=np.float32)
    z = (z - z.min()) / max(1e-6, float(z.max() - z.min()))
    cmap = matplotlib.colormaps[str(rng.choice(["terrain", "gist_earth", "viridis", "copper"]))]
    rgb = (cmap(z)[..., :3] * 255).astype(np.uint8)
    return Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC)


def _chart(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] / 100, size[1] / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.linspace(0, 10, 200)
    for k in range(int(rng.integers(1, 5))):
        ax.plot(x, np.sin(x * rng.uniform(0.3, 3)) * rng.uniform(0.5, 3) + k, lw=2)
    ax.scatter(rng.uniform(0, 10, 40), rng.uniform(-2, 5, 40), s=rng.uniform(5, 200, 40))
    ax.set_title("".join(rng.choice(list(string.ascii_letters), 10)))
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3]).resize(size)


def _sample_photo(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    from matplotlib import cbook

    name = ("Minduka_Present_Blue_Pack.png", "logo2.png")[int(rng.integers(0, 2))]
    with Image.open(cbook.get_sample_data(name)) as image:
        base = image.convert("RGB")
    canvas = clutter(size, rng)
    scale = float(rng.uniform(0.3, 1.0)) * min(size[0] / base.width, size[1] / base.height)
    small = base.resize((max(1, int(base.width * scale)), max(1, int(base.height * scale))))
    canvas.paste(
        small,
        (
            int(rng.integers(0, size[0] - small.width + 1)),
            int(rng.integers(0, size[1] - small.height + 1)),
        ),
    )
    return canvas


def _texture(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = int(rng.integers(0, 3))
    if kind == 0:  # stripes / waves
        f = rng.uniform(0.01, 0.2, 2)
        v = np.sin(x * f[0] + np.sin(y * f[1]) * rng.uniform(0, 5))
    elif kind == 1:  # checkerboard
        c = int(rng.integers(4, 64))
        v = ((x // c + y // c) % 2) * 2 - 1.0
    else:  # fine noise
        v = rng.normal(0, 1, (h, w))
    colours = rng.integers(0, 255, (2, 3))
    t = ((v + 1) / 2)[..., None].clip(0, 1)
    return Image.fromarray((colours[0] * t + colours[1] * (1 - t)).astype(np.uint8))


def _text(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(150, 255, 3)))
    draw = ImageDraw.Draw(image)
    y = 0
    while y < size[1]:
        line_font = int(rng.integers(12, 90))
        words = " ".join(
            "".join(
                rng.choice(list(string.ascii_letters + "0123456789@&"), int(rng.integers(1, 9)))
            )
            for _ in range(12)
        )
        draw.text(
            (int(rng.integers(-20, 20)), y),
            words,
            fill=tuple(int(c) for c in rng.integers(0, 120, 3)),
            font=font(line_font),
        )
        y += int(line_font * 1.3)
    return image


FACELESS_KINDS = {
    "texture": _texture,
    "scene": lambda rng, size: clutter(size, rng),
    "terrain": _terrain,
    "text": _text,
    "chart": _chart,
    "sample_photo": _sample_photo,
}


def faceless_photos(count: int, seed: int) -> list[tuple[str, Image.Image]]:
    kinds = list(FACELESS_KINDS)
    photos = []
    for i in range(count):
        rng = np.random.default_rng(seed + i)
        size = PHOTO_SIZES[int(rng.integers(0, len(PHOTO_SIZES)))]
        kind = kinds[i % len(kinds)]
        photos.append((kind, as_jpeg(FACELESS_KINDS[kind](rng, size))))
    return photos


def grey_copy(photo: Image.Image) -> Image.Image:
    """The photo as a black-and-white scan of it would arrive: grey, saved as JPEG."""
    return as_jpeg(photo.convert("L").convert("RGB"))


def tight_photo(crop: Image.Image, keep: float, side: int) -> Image.Image:
    """Only the middle ``keep`` of a UTKFace crop, at ``side`` px, as JPEG: a photo that is the
    face alone, its outline cut off: a tight photo, as age datasets cut faces out of larger
    pictures."""
    margin = crop.width * (1 - keep) / 2
    box = (margin, margin, crop.width - margin, crop.height - margin)
    return as_jpeg(crop.resize((side, side), Image.Resampling.BICUBIC, box=box))
