"""decode_upload: every kind of upload becomes an upright RGB image or a typed error."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from agegroup.config import PROJECT_ROOT
from agegroup.errors import CorruptImage, NoImage, UnsupportedImage, UploadTooLarge
from agegroup.images import decode_upload
from testsupport.uploads import heic_start, image_bytes, png_claiming

MAX_PIXELS = 50_000_000
WORK = 256


def gradient(width: int = 60, height: int = 40) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=2), "RGB")


def decode(data: bytes, max_pixels: int = MAX_PIXELS, work: int = WORK):
    return decode_upload(data, max_pixels, work)


@pytest.mark.parametrize(
    ("fmt", "mode", "save_args"),
    [
        ("JPEG", "RGB", {}),
        ("JPEG", "L", {}),
        ("JPEG", "CMYK", {}),
        ("PNG", "RGB", {}),
        ("PNG", "RGBA", {}),
        ("PNG", "LA", {}),
        ("PNG", "P", {}),
        ("PNG", "I;16", {}),
        ("PNG", "1", {}),
        ("WEBP", "RGB", {"lossless": True}),
        ("WEBP", "RGBA", {}),
        ("AVIF", "RGB", {}),
        ("AVIF", "RGBA", {}),
        ("GIF", "P", {}),
        ("BMP", "RGB", {}),
    ],
)
def test_every_accepted_format_and_mode_becomes_rgb(fmt: str, mode: str, save_args: dict) -> None:
    source = gradient().convert(mode) if mode != "I;16" else gradient().convert("I;16")
    decoded = decode(image_bytes(source, fmt, **save_args))
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (60, 40)
    assert (decoded.width, decoded.height) == (60, 40)
    assert decoded.format == fmt


def test_transparent_pixels_become_white() -> None:
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    decoded = decode(image_bytes(image, "PNG"))
    assert decoded.image.getpixel((5, 5)) == (255, 255, 255)


def test_sixteen_bit_greys_are_scaled_not_clipped() -> None:
    grey = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    decoded = decode(image_bytes(grey, "PNG"))
    assert 120 <= decoded.image.getpixel((0, 0))[0] <= 135


@pytest.mark.parametrize("fmt", ["JPEG", "AVIF"])
def test_exif_orientation_turns_the_photo_upright(fmt: str) -> None:
    """JPEG keeps the tag in EXIF; AVIF stores it as the container's rotation (irot)."""
    image = gradient(60, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    decoded = decode(image_bytes(image, fmt, exif=exif.tobytes()))
    assert decoded.image.size == (40, 60)
    assert (decoded.width, decoded.height) == (40, 60)
    # Turned clockwise: the stored image's left column (red 0, blue 255) is now the top row.
    top_left = decoded.image.getpixel((0, 0))
    assert top_left[0] < 60 and top_left[2] > 190


def test_damaged_exif_leaves_the_image_as_it_is() -> None:
    decoded = decode(image_bytes(gradient(), "JPEG", exif=b"Exif\x00\x00MM\x00*garbage"))
    assert decoded.image.size == (60, 40)


def test_big_photos_are_shrunk_and_keep_their_original_size() -> None:
    decoded = decode(image_bytes(gradient(1200, 600), "PNG"))
    assert decoded.image.size == (256, 128)
    assert (decoded.width, decoded.height) == (1200, 600)
    assert decoded.scale == pytest.approx(1200 / 256)


def test_big_jpeg_is_drafted_and_shrunk() -> None:
    decoded = decode(image_bytes(gradient(2048, 1024), "JPEG"))
    assert max(decoded.image.size) == WORK
    assert (decoded.width, decoded.height) == (2048, 1024)


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), (i * 20, 0, 0)) for i in range(12)]
    data = image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10)
    decoded = decode(data)
    assert decoded.image.size == (16, 16)
    assert decoded.image.getpixel((0, 0))[0] < 10


def test_empty_upload_is_no_image() -> None:
    with pytest.raises(NoImage):
        decode(b"")


@pytest.mark.parametrize(
    "data",
    [
        b"<svg xmlns='http://www.w3.org/2000/svg'></svg>",
        b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
        b"<!doctype html><script>alert(1)</script>",
        b"PK\x03\x04" + b"\0" * 40,
        b"\0" * 100,
    ],
    ids=["svg", "pdf", "html", "zip", "zeros"],
)
def test_non_images_are_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedImage):
        decode(data)


@pytest.mark.parametrize("fmt", ["TIFF", "ICO", "PPM", "TGA", "PCX"])
def test_other_raster_formats_are_unsupported(fmt: str) -> None:
    """Pillow can read these, but their decoders are never exposed to uploads."""
    with pytest.raises(UnsupportedImage):
        decode(image_bytes(gradient(32, 32), fmt))


@pytest.mark.parametrize(
    ("major", "compatible"),
    [(b"heic", b"mif1heicmiaf"), (b"mif1", b"mif1heic"), (b"heix", b"mif1heix")],
    ids=["iphone", "mif1-major", "10-bit"],
)
def test_heic_is_unsupported_with_a_way_out(major: bytes, compatible: bytes) -> None:
    with pytest.raises(UnsupportedImage, match="HEIC photo .* Most Compatible"):
        decode(heic_start(major, compatible))


def test_an_avif_that_libavif_cannot_parse_is_damaged() -> None:
    with pytest.raises(CorruptImage, match="damaged"):
        decode(heic_start(b"avif", b"mif1avifmiaf"))


def test_decompression_bomb_is_refused_before_decoding() -> None:
    with pytest.raises(UploadTooLarge):
        decode(png_claiming(100_000, 100_000))


def test_pixel_limit_is_the_configured_one() -> None:
    with pytest.raises(UploadTooLarge, match="3000 x 3000"):
        decode(png_claiming(3000, 3000), max_pixels=1_000_000)


def test_a_header_with_no_pixels_is_refused_as_unsupported() -> None:
    with pytest.raises(UnsupportedImage):
        decode(png_claiming(0, 10))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "AVIF", "GIF"])
def test_truncated_files_are_corrupt(fmt: str) -> None:
    data = image_bytes(Image.effect_noise((64, 64), 60).convert("RGB"), fmt)
    with pytest.raises(CorruptImage, match="damaged"):
        decode(data[: len(data) // 2])


def test_jpeg_with_a_zip_appended_decodes_as_the_jpeg() -> None:
    decoded = decode(image_bytes(gradient(), "JPEG") + b"PK\x03\x04" + b"\0" * 200)
    assert decoded.image.size == (60, 40)


def test_big_rgba_png_peak_memory_stays_near_one_copy() -> None:
    """A huge RGBA PNG is shrunk before it is converted, so the decode holds about one
    full-size copy of its pixels, not several."""
    script = textwrap.dedent(
        """
        import resource, struct, zlib
        from agegroup.images import decode_upload

        side = 4000
        row = b"\\0" + b"\\x80\\x40\\x20\\x90" * side
        ihdr = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)
        def chunk(kind, body):
            return struct.pack(">I", len(body)) + kind + body + struct.pack(
                ">I", zlib.crc32(kind + body))
        packer = zlib.compressobj(1)  # row by row: the raw pixels never exist here
        idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
        data = (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", ihdr)
                + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        decoded = decode_upload(data, 50_000_000, 256)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert decoded.image.size == (256, 256) and decoded.image.mode == "RGB"
        print((after - before) * 1024)  # ru_maxrss is in KiB on Linux
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True
    )
    grown = int(done.stdout.split()[-1])
    raw = 4000 * 4000 * 4
    assert grown < 1.6 * raw, f"decoding grew the process by {grown / raw:.1f} full-size copies"
