"""Which uploads are photos, how they are opened, and what decoding one will cost in memory.

Every check that can be made from the header (type, pixel count) is made before a single pixel
is decoded, so a small file that claims a huge image costs nothing. Only the decoders of the
accepted formats are ever tried, which keeps Pillow's many other parsers (TIFF, EPS, PSD, ...)
away from uploads. A decode's peak memory is estimated from the header (``decode_cost``) so
that ``agegroup.memory_budget`` can admit or refuse it: a few KB can claim an image that takes
hundreds of MB to decode (docs/robustness.md#what-a-decode-costs). Large still PNG and WebP
images are decoded by libvips (``pyvips``, when installed) with shrink-on-load, in a fraction
of Pillow's memory.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import AvifImagePlugin, Image, UnidentifiedImageError

from agegroup.errors import CorruptImage, UnsupportedImage, UploadTooLarge
from agegroup.memory_budget import MB

# AVIF (Pillow's own plugin, libavif with dav1d): one decoder thread, as for libvips below; the
# budget counts one decode's memory, and the host has a fraction of one CPU.
if not AvifImagePlugin.SUPPORTED:
    raise ImportError("This Pillow cannot read AVIF: install Pillow 11.3 or later from its wheels.")
AvifImagePlugin.DEFAULT_MAX_THREADS = 1

try:  # libvips decodes big PNG/WebP in bounded memory; without it Pillow does (and costs more).
    import pyvips

    pyvips.cache_set_max(0)  # nothing from one upload is kept for the next
    pyvips.concurrency_set(1)  # one libvips thread per decode: the budget counts one pipeline
except (ImportError, OSError):  # not installed, or its shared library is missing
    pyvips = None

# Raster formats a browser can upload as a photo (MPO: the JPEG variant some cameras write).
# Anything else (TIFF, SVG, PDF, HTML, HEIC, ...) is 415.
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "AVIF", "GIF", "BMP"})
# The decoders Pillow may try, in order; the JPEG decoder also recognises MPO files.
_OPEN_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP")
# How pages, messages and the API description name them.
FORMAT_NAMES = "JPEG, PNG, WebP, AVIF, GIF or BMP"
# Their media types, as browsers label a chosen file: the page script checks a file against
# them before uploading it.
MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp", "image/avif", "image/gif", "image/bmp")

UNSUPPORTED = f"This file type is not supported. Please upload a {FORMAT_NAMES} photo."
_DAMAGED_HEADER = "The image file is damaged and cannot be read."
# iPhones save HEIC unless set to "Most Compatible"; its decoders (libheif, libde265) are not
# exposed to uploads, and a 12-24 megapixel HEIC cannot be shrunk while decoding.
HEIC_MESSAGE = (
    "This is an HEIC photo (the iPhone's format), which is not supported. Please upload it as "
    f"a {FORMAT_NAMES} photo: most photo apps can export a JPEG copy, and an iPhone saves JPEG "
    "when Settings > Camera > Formats is set to Most Compatible."
)
# ISO base media file brands (the ftyp box at the start) of HEIF images with HEVC pictures,
# and of AVIF images.
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})

# Still PNG/WebP images above this many pixels go through libvips when it is installed
# (smaller ones cost little either way, and Pillow's path is the reference).
VIPS_MIN_PIXELS = 4_000_000
# libvips streams a PNG/WebP only when rows are read in order and the shrink is about the same
# both ways: interlaced PNGs, animations and panoramas are decoded whole, so they keep
# Pillow's path and its cost. docs/robustness.md#what-a-decode-costs
VIPS_MAX_ASPECT = 3.0


def open_image(data: bytes) -> Image.Image:
    """The upload opened by one of the accepted formats' decoders (its header only read).

    Raises ``UnsupportedImage`` (another format; an HEIC photo gets its own message),
    ``UploadTooLarge`` (Pillow's decompression-bomb limit) or ``CorruptImage``.
    """
    try:
        return Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except Image.DecompressionBombError as exc:
        raise UploadTooLarge("The image has too many pixels to process.") from exc
    except UnidentifiedImageError as exc:
        brands = ftyp_brands(data)
        if brands & _HEIC_BRANDS:
            raise UnsupportedImage(HEIC_MESSAGE) from exc
        if brands & _AVIF_BRANDS:  # libavif could not parse it: cut short or damaged
            raise CorruptImage(_DAMAGED_HEADER) from exc
        raise UnsupportedImage(UNSUPPORTED) from exc
    except Exception as exc:  # Pillow raises many kinds of errors on crafted headers.
        raise CorruptImage(_DAMAGED_HEADER) from exc


def ftyp_brands(data: bytes) -> frozenset[bytes]:
    """The major and compatible brands of an ISO base media file (HEIF, AVIF, MP4), if it is one."""
    if data[4:8] != b"ftyp":
        return frozenset()
    box_size = int.from_bytes(data[:4], "big")
    brands = data[8:12] + data[16 : min(max(box_size, 16), 64)]
    return frozenset(brands[i : i + 4] for i in range(0, len(brands) - 3, 4))


def _stored_bytes(mode: str) -> int:
    """Bytes per pixel in Pillow's memory: 8-bit single bands take 1, the rest 4; 16-bit greys
    take 2, and 4 more when resizing turns them into 32-bit integers."""
    if mode in ("1", "L", "P"):
        return 1
    return 6 if mode.startswith("I;16") else 4


def _bands(image: Image.Image) -> int:
    """Bands libvips decodes: a palette becomes RGB or RGBA (counted as 4)."""
    return 4 if image.mode == "P" else max(1, len(image.getbands()))


@dataclass(frozen=True)
class DecodeCost:
    """Estimated peak memory of one decode: ``per_pixel`` x pixels + ``fixed`` bytes.

    The factors were measured with ``tools/stress.py --calibrate`` (peak RSS growth of a fresh
    process decoding the worst file of each kind); tests/test_memory.py checks that every
    estimate stays above what the decode really takes.
    """

    per_pixel: float
    fixed: int
    pixels: int
    vips: bool

    @property
    def bytes(self) -> int:
        return int(self.per_pixel * self.pixels) + self.fixed

    def pixel_limit(self, budget: int) -> int:
        """The most pixels an image of this kind may have for its decode to fit ``budget``."""
        return max(0, int((budget - self.fixed) / self.per_pixel))


def _use_vips(image: Image.Image) -> bool:
    width, height = image.size
    return (
        pyvips is not None
        and image.format in ("PNG", "WEBP")
        and width * height >= VIPS_MIN_PIXELS
        and max(width, height) <= VIPS_MAX_ASPECT * min(width, height)
        and not image.info.get("interlace")
        and not getattr(image, "is_animated", False)
    )


def decode_cost(image: Image.Image, data_size: int, work_size: int) -> DecodeCost:
    """Memory the decode of an opened (header-only, JPEG already drafted) image will take.

    Pillow: the full-size pixels, a reduced copy of at most a quarter (with a margin: 1.35
    copies in all), and the work-size copies of shrinking, turning and converting. WebP adds
    libwebp's two canvases and a bytes copy (4 bytes each per pixel), AVIF libavif's planes and
    frame (the header does not give their bit depth, so the deepest is counted), a progressive
    JPEG its coefficient buffers (2 bytes per sample, whatever the draft scale), a run-length
    BMP Pillow's Python decoder's two copies. libvips streams the
    rows: a fraction of a byte per pixel. The upload itself is held twice meanwhile (the
    form's copy and ``data``).
    """
    width, height = image.size
    pixels = width * height
    work_pixels = min(pixels, work_size * work_size)
    alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    # Shrunk, turned and converted copies at the work size; alpha adds a white background.
    fixed = work_pixels * 4 * (4 if alpha else 3) + 2 * data_size
    if _use_vips(image):
        depth = 2 if image.mode.startswith("I;16") else 1
        return DecodeCost(_bands(image) * depth / 4, 32 * MB + fixed, pixels, True)
    original = getattr(image, "_size_before_draft", image.size)
    original_pixels = original[0] * original[1]
    per_pixel = _stored_bytes(image.mode) * 1.35 * pixels / original_pixels
    if image.mode in ("RGBA", "LA", "PA") and max(image.size) > 2 * work_size:
        fixed += 4 * 4 * work_size * work_size  # sampled down to twice the work size first
    elif image.mode in ("RGBA", "LA", "PA") and max(image.size) > work_size:
        per_pixel += 4  # a smooth resize premultiplies alpha on a full-size copy
    if image.mode.startswith("I") or image.mode == "F":
        fixed += work_pixels * 9  # the float64 scaling of 16-bit greys
    if image.format == "WEBP":
        per_pixel += 12
    if image.format == "AVIF":
        # libavif's planes (up to 12 bits, 4:4:4) and its RGB(A) frame as bytes; dav1d's state.
        per_pixel += 10
        fixed += 16 * MB
    if image.tile and image.tile[0][0] == "bmp_rle":
        per_pixel += 3  # Pillow's run-length decoder is Python: a bytearray and a bytes copy
    if image.format in ("JPEG", "MPO") and image.info.get("progressive"):
        per_pixel += 2 * _sample_ratio(image)
    return DecodeCost(per_pixel, fixed, original_pixels, False)


def _sample_ratio(image: Image.Image) -> float:
    """Samples per pixel of a JPEG: 3 for 4:4:4 colour, 1.5 for 4:2:0, 1 for grey."""
    layers = getattr(image, "layer", None) or [("Y", 1, 1, 0)] * max(1, len(image.getbands()))
    # A damaged header can say 0 (the decoder rejects such a file later); counted as 1, the
    # estimate stays within the real bound of one sample per component and pixel.
    factors = [(max(1, h), max(1, v)) for _, h, v, _ in layers]
    top = max(h for h, _ in factors) * max(v for _, v in factors)
    return sum(h * v for h, v in factors) / top
