"""Decode an upload within the memory budget: bytes in, an upright RGB image out.

The header is read and checked first (``agegroup.image_formats``: type, pixel count, the
decode's estimated memory); the pixels are decoded only while the estimate fits the process's
``MemoryBudget`` (``agegroup.memory_budget``), shrunk to the work size as early as the decoder
allows (JPEG's draft scales, libvips' shrink-on-load), turned upright and converted to RGB.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image

from agegroup import image_formats
from agegroup.errors import CorruptImage, NoImage, UnsupportedImage, UploadTooLarge
from agegroup.image_formats import ALLOWED_FORMATS, UNSUPPORTED, decode_cost, open_image
from agegroup.memory_budget import MB, TRIM_AFTER_BYTES, MemoryBudget, release_memory

log = logging.getLogger(__name__)

_DAMAGED_PIXELS = "The image file is damaged or truncated and cannot be read."


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB photo, possibly shrunk; ``width``/``height`` are the upright originals."""

    image: Image.Image
    width: int
    height: int
    format: str

    @property
    def scale(self) -> float:
        """Factor from ``image`` pixels back to original pixels."""
        return self.width / self.image.width


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha on white, 16-bit and float scaled, CMYK converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = pixels.max() if pixels.size else 0.0
        scale = 255.0 / 65535.0 if top > 255 else 1.0
        image = Image.fromarray(np.clip(pixels * scale, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


# EXIF orientation -> the transpose that shows the photo upright (5 to 8 swap width and height).
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag; a missing or damaged EXIF block counts as upright (1)."""
    try:
        value = image.getexif().get(0x0112, 1)
        return int(value) if int(value) in _ORIENTATIONS else 1
    except Exception:
        return 1


def _fit(size: tuple[int, int], longest: int) -> tuple[int, int]:
    ratio = longest / max(size)
    return max(1, round(size[0] * ratio)), max(1, round(size[1] * ratio))


def _shrunk(image: Image.Image, work_size: int) -> Image.Image:
    """Shrink so the longest side is ``work_size``, before any mode conversion copies pixels.

    Pillow premultiplies alpha on a full-size copy before a smooth resize, so a huge image
    with alpha is first sampled down to twice the work size, which copies nothing big.
    """
    if max(image.size) <= work_size:
        return image
    if image.mode in ("RGBA", "LA") and max(image.size) > 2 * work_size:
        image = image.resize(_fit(image.size, 2 * work_size), Image.Resampling.NEAREST)
    return image.resize(_fit(image.size, work_size), Image.Resampling.BILINEAR, reducing_gap=2.0)


def _pixels(image: Image.Image, work_size: int) -> Image.Image:
    """Decode, shrink, turn upright and convert, in the order that copies the fewest pixels."""
    # Load first: PNG's getexif() loads the image itself, and a second load() after a
    # failed one would silently return the half-decoded pixels.
    image.load()
    orientation = _orientation(image)
    small = _shrunk(image, work_size)
    if orientation in _ORIENTATIONS:
        small = small.transpose(_ORIENTATIONS[orientation])
    return _to_rgb(small)


_VIPS_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def _vips_pixels(data: bytes, work_size: int) -> tuple[Image.Image, int]:
    """Shrink-on-load with libvips: the image is read row by row, never whole.

    Returns the shrunk image (upright and RGB as on Pillow's path) and its EXIF orientation.
    """
    thumb = image_formats.pyvips.Image.thumbnail_buffer(
        data,
        work_size,
        height=work_size,
        size="down",
        no_rotate=True,
        option_string="fail_on=error",
    )
    if thumb.format != "uchar":  # 16-bit: keep the high byte, as Pillow does for RGB
        thumb = (thumb / 257).cast("uchar")
    if thumb.bands not in _VIPS_MODES:
        raise ValueError(f"{thumb.bands} bands")
    orientation = thumb.get("orientation") if thumb.get_typeof("orientation") else 1
    orientation = orientation if orientation in _ORIENTATIONS else 1
    shape = (thumb.height, thumb.width, thumb.bands)
    pixels = np.ndarray(shape, np.uint8, thumb.write_to_memory())
    small = Image.fromarray(
        pixels[:, :, 0] if thumb.bands == 1 else pixels, _VIPS_MODES[thumb.bands]
    )
    if orientation in _ORIENTATIONS:
        small = small.transpose(_ORIENTATIONS[orientation])
    return _to_rgb(small), orientation


def _too_many_pixels(width: int, height: int, limit: int) -> UploadTooLarge:
    return UploadTooLarge(
        f"The image is {width} x {height} pixels; at most {max(1, limit // 1_000_000)} "
        "megapixels are accepted."
    )


def decode_upload(
    data: bytes, max_pixels: int, work_size: int, budget: MemoryBudget | None = None
) -> DecodedImage:
    """Decode an upload into an upright RGB image whose longest side is at most ``work_size``.

    With a ``budget``, the decode runs only while its estimated memory fits (see
    ``MemoryBudget``). Raises ``NoImage`` (empty), ``UnsupportedImage`` (not a raster image),
    ``UploadTooLarge`` (too many pixels for the limit or the budget), ``ServerBusy`` (no room
    now) or ``CorruptImage`` (truncated or damaged).
    """
    if not data:
        raise NoImage("The uploaded file is empty.")
    image = open_image(data)
    if image.format not in ALLOWED_FORMATS:
        raise UnsupportedImage(UNSUPPORTED)
    width, height = image.size
    if width < 1 or height < 1:
        raise CorruptImage("The image has no pixels.")
    if width * height > max_pixels:
        raise _too_many_pixels(width, height, max_pixels)
    try:
        # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: big phone photos load fast.
        if image.format in ("JPEG", "MPO"):
            image._size_before_draft = image.size  # type: ignore[attr-defined]
            image.draft("RGB", (work_size, work_size))
    except Exception as exc:
        raise CorruptImage(_DAMAGED_PIXELS) from exc
    cost = decode_cost(image, len(data), work_size)
    if budget is not None and cost.bytes > budget.largest:
        raise _too_many_pixels(width, height, min(max_pixels, cost.pixel_limit(budget.largest)))
    started = time.perf_counter()
    try:
        with budget.reserve(cost.bytes) if budget is not None else _nothing():
            try:
                if cost.vips:
                    rgb, orientation = _vips_pixels(data, work_size)
                else:
                    rgb = _pixels(image, work_size)
                    orientation = _orientation(image)
            except Exception as exc:
                raise CorruptImage(_DAMAGED_PIXELS) from exc
    finally:
        if budget is None and cost.bytes > TRIM_AFTER_BYTES:
            release_memory()  # (the budget does it when the reservation ends)
    log.debug(
        "decoded %s %dx%d (estimated %.0f MB) in %.0f ms",
        image.format,
        width,
        height,
        cost.bytes / MB,
        (time.perf_counter() - started) * 1000,
    )
    if orientation >= 5:  # stored sideways: rotated by 90 or 270 degrees
        width, height = height, width
    return DecodedImage(image=rgb, width=width, height=height, format=image.format or "")


@contextmanager
def _nothing() -> Iterator[None]:
    yield
