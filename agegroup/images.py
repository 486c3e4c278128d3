"""Decode and validate an uploaded photo: bytes in, an upright RGB image out.

Every check that can be made from the header (type, pixel count) is made before a single
pixel is decoded, so a small file that claims a huge image costs nothing.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from agegroup.errors import CorruptImage, NoImage, UnsupportedImage, UploadTooLarge

# Raster formats a browser can upload as a photo. Anything else (SVG, PDF, HTML, ...) is 415.
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})


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
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadTooLarge("The image has too many pixels to process.") from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedImage(
            "This file is not an image we can read. Please upload a JPEG, PNG, WebP or GIF photo."
        ) from exc
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


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a damaged EXIF block leaves the image as it is."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


def decode_upload(data: bytes, max_pixels: int, work_size: int) -> DecodedImage:
    """Decode an upload into an upright RGB image whose longest side is at most ``work_size``.

    Raises ``NoImage`` (empty), ``UnsupportedImage`` (not a raster image), ``UploadTooLarge``
    (too many pixels) or ``CorruptImage`` (truncated or damaged).
    """
    if not data:
        raise NoImage("The uploaded file is empty.")
    image = _open(data)
    if image.format not in ALLOWED_FORMATS:
        raise UnsupportedImage(
            "This file type is not supported. Please upload a JPEG, PNG, WebP or GIF photo."
        )
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
        image.load()
        upright = _upright(image)
        rgb = _to_rgb(upright)
    except Exception as exc:
        raise CorruptImage("The image file is damaged or truncated and cannot be read.") from exc
    if upright.size != image.size:  # rotated by 90 or 270 degrees
        width, height = height, width
    if max(rgb.size) > work_size:
        rgb = rgb.copy()
        rgb.thumbnail((work_size, work_size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return DecodedImage(image=rgb, width=width, height=height, format=image.format or "")
