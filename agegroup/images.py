"""Decode and validate an uploaded photo: bytes in, an upright RGB image out.

Every check that can be made from the header (type, pixel count) is made before a single
pixel is decoded, so a small file that claims a huge image costs nothing. Only the decoders of
the accepted formats are ever tried, which keeps Pillow's many other parsers (TIFF, EPS, PSD,
...) away from uploads.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from agegroup.errors import CorruptImage, NoImage, UnsupportedImage, UploadTooLarge

# Raster formats a browser can upload as a photo (MPO: the JPEG variant some cameras write).
# Anything else (TIFF, SVG, PDF, HTML, ...) is 415.
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP"})
# The decoders Pillow may try, in order; the JPEG decoder also recognises MPO files.
_OPEN_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")

_UNSUPPORTED = "This file type is not supported. Please upload a JPEG, PNG, WebP, GIF or BMP photo."

# Decoded pixels above this many bytes count as a big decode; only one runs at a time per
# process, so a few concurrent 50-megapixel PNGs cannot add up past a 512 MB memory budget.
BIG_DECODE_BYTES = 64 * 1024 * 1024
_big_decode = threading.Lock()


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


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except Image.DecompressionBombError as exc:
        raise UploadTooLarge("The image has too many pixels to process.") from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedImage(_UNSUPPORTED) from exc
    except Exception as exc:  # Pillow raises many kinds of errors on crafted headers.
        raise CorruptImage("The image file is damaged and cannot be read.") from exc


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


def _decoded_bytes(image: Image.Image) -> int:
    """Memory the decoded pixels will take (after any JPEG draft reduction)."""
    width, height = image.size
    depth = 4 if image.mode in ("I", "F") else 2 if "16" in image.mode else 1
    return width * height * max(1, len(image.getbands())) * depth


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


def decode_upload(data: bytes, max_pixels: int, work_size: int) -> DecodedImage:
    """Decode an upload into an upright RGB image whose longest side is at most ``work_size``.

    Raises ``NoImage`` (empty), ``UnsupportedImage`` (not a raster image), ``UploadTooLarge``
    (too many pixels) or ``CorruptImage`` (truncated or damaged).
    """
    if not data:
        raise NoImage("The uploaded file is empty.")
    image = _open(data)
    if image.format not in ALLOWED_FORMATS:
        raise UnsupportedImage(_UNSUPPORTED)
    width, height = image.size
    if width < 1 or height < 1:
        raise CorruptImage("The image has no pixels.")
    if width * height > max_pixels:
        raise UploadTooLarge(
            f"The image is {width} x {height} pixels; at most {max_pixels // 1_000_000} megapixels "
            "are accepted."
        )
    try:
        # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: big phone photos load fast.
        if image.format in ("JPEG", "MPO"):
            image.draft("RGB", (work_size, work_size))
        if _decoded_bytes(image) > BIG_DECODE_BYTES:
            with _big_decode:
                rgb = _pixels(image, work_size)
        else:
            rgb = _pixels(image, work_size)
    except Exception as exc:
        raise CorruptImage("The image file is damaged or truncated and cannot be read.") from exc
    if _orientation(image) >= 5:  # stored sideways: rotated by 90 or 270 degrees
        width, height = height, width
    return DecodedImage(image=rgb, width=width, height=height, format=image.format or "")
