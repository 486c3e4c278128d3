"""Decode and validate an uploaded photo: bytes in, an upright RGB image out.

Every check that can be made from the header (type, pixel count) is made before a single
pixel is decoded, so a small file that claims a huge image costs nothing. Only the decoders of
the accepted formats are ever tried, which keeps Pillow's many other parsers (TIFF, EPS, PSD,
...) away from uploads.

Memory is bounded by design. A 188 KB PNG of 7000 x 7000 stripes made Pillow hold 266 MB, a
2 KB WebP of the same size 752 MB (libwebp's canvases, a bytes copy and Pillow's image), so
each upload's decode cost is estimated from its header (``decode_cost``) and admitted by a
process-wide ``MemoryBudget`` (``AGE_DECODE_BUDGET_MB``): an image that could never fit is
refused with 413 and its format's limit in megapixels, one that does not fit *now* waits a
moment and is then refused with 503 + Retry-After. Large still PNG and WebP images are decoded
by libvips (``pyvips``, when installed) with shrink-on-load: the same 49-megapixel files take
55 and 35 MB there. After a large decode the freed memory is handed back to the system
(``malloc_trim``), so the worker returns to its resting size. Numbers and commands: README
"Robustness" and ``tools/stress.py``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import AvifImagePlugin, Image, UnidentifiedImageError

from agegroup.errors import CorruptImage, NoImage, ServerBusy, UnsupportedImage, UploadTooLarge

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

log = logging.getLogger(__name__)

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

_UNSUPPORTED = f"This file type is not supported. Please upload a {FORMAT_NAMES} photo."
_DAMAGED_HEADER = "The image file is damaged and cannot be read."
_DAMAGED_PIXELS = "The image file is damaged or truncated and cannot be read."
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

MB = 1024 * 1024
# Still PNG/WebP images above this many pixels go through libvips when it is installed
# (smaller ones cost little either way, and Pillow's path is the reference).
VIPS_MIN_PIXELS = 4_000_000
# libvips streams a PNG/WebP only when rows are read in order and the shrink is about the same
# both ways: interlaced PNGs, animations and panoramas (a 50000 x 1000 PNG held 187 MB) are
# decoded whole, so they keep Pillow's path and its cost.
VIPS_MAX_ASPECT = 3.0
# Memory that analysing a decoded image takes (detection pyramid, crops, the answer), per pixel
# of the work-size image: about 40 MB for 1600 x 1600 in the 16-client stress run.
ANALYSIS_BYTES_PER_PIXEL = 16
# After a decode estimated above this, freed memory is handed back to the system at once.
TRIM_AFTER_BYTES = 32 * MB


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
        brands = ftyp_brands(data)
        if brands & _HEIC_BRANDS:
            raise UnsupportedImage(HEIC_MESSAGE) from exc
        if brands & _AVIF_BRANDS:  # libavif could not parse it: cut short or damaged
            raise CorruptImage(_DAMAGED_HEADER) from exc
        raise UnsupportedImage(_UNSUPPORTED) from exc
    except Exception as exc:  # Pillow raises many kinds of errors on crafted headers.
        raise CorruptImage(_DAMAGED_HEADER) from exc


def ftyp_brands(data: bytes) -> frozenset[bytes]:
    """The major and compatible brands of an ISO base media file (HEIF, AVIF, MP4), if it is one."""
    if data[4:8] != b"ftyp":
        return frozenset()
    box_size = int.from_bytes(data[:4], "big")
    brands = data[8:12] + data[16 : min(max(box_size, 16), 64)]
    return frozenset(brands[i : i + 4] for i in range(0, len(brands) - 3, 4))


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


class MemoryBudget:
    """Decode memory in flight in one process: a decode starts only while the total fits.

    A large decode (over a quarter of the budget) may only use three quarters, so everyday
    photos always find room beside one. A decode that does not fit waits up to ``wait_s`` for
    others to finish, then is refused with ``ServerBusy`` (503 + Retry-After): a burst of huge
    images costs their senders a retry, never the instance its memory.
    """

    def __init__(self, limit: int, wait_s: float = 1.0, retry_after_s: int = 2) -> None:
        self.limit = limit
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self.used = 0
        self.peak = 0
        self._changed = threading.Condition()

    @property
    def largest(self) -> int:
        """The most one decode may ever take; larger ones are refused as too big (413)."""
        return self.limit * 3 // 4

    def _room_for(self, cost: int) -> bool:
        ceiling = self.largest if cost > self.limit // 4 else self.limit
        return self.used + cost <= ceiling

    @contextmanager
    def reserve(self, cost: int) -> Iterator[None]:
        """Hold ``cost`` bytes of the budget while the block runs; a large hold hands the freed
        memory back to the system when it ends."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._room_for(cost), self.wait_s):
                raise ServerBusy(
                    "The server is busy with other large images. Please try again in a few "
                    "seconds.",
                    retry_after_s=self.retry_after_s,
                )
            self.used += cost
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._changed:
                self.used -= cost
                self._changed.notify_all()
            if cost > TRIM_AFTER_BYTES:
                release_memory()


_budgets: dict[tuple[int, float], MemoryBudget] = {}
_budgets_lock = threading.Lock()


def shared_budget(limit: int, wait_s: float) -> MemoryBudget:
    """The process-wide budget for these settings (every request thread shares it)."""
    with _budgets_lock:
        return _budgets.setdefault((limit, wait_s), MemoryBudget(limit, wait_s))


def _find_malloc_trim() -> object | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_malloc_trim = _find_malloc_trim()


def release_memory() -> None:
    """Hand freed heap memory back to the system: glibc otherwise keeps it for reuse, and a
    burst of big decodes left the worker 270 MB larger for good."""
    if _malloc_trim is not None:
        _malloc_trim(0)  # type: ignore[operator]


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
    thumb = pyvips.Image.thumbnail_buffer(
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
    image = _open(data)
    if image.format not in ALLOWED_FORMATS:
        raise UnsupportedImage(_UNSUPPORTED)
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
