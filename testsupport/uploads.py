"""Upload bodies built by hand: encoded images, multipart forms, crafted files, and posting them.

Bodies are built here rather than by a test client, which would spool big ones to a temporary
file and could not send malformed parts.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

from PIL import Image

BOUNDARY = "----agegroup-test-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def image_bytes(image: Image.Image, fmt: str = "JPEG", **save_args: Any) -> bytes:
    """``image`` encoded as ``fmt`` (Pillow's ``save`` arguments pass through)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def multipart(*parts: tuple[str, str | None, str, bytes]) -> bytes:
    """``(field, filename, content type, bytes)`` parts as one multipart/form-data body."""
    out = io.BytesIO()
    for field, filename, ctype, data in parts:
        out.write(f"--{BOUNDARY}\r\n".encode())
        disposition = f'form-data; name="{field}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out.write(f"Content-Disposition: {disposition}\r\n".encode())
        out.write(f"Content-Type: {ctype}\r\n\r\n".encode())
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue()


def image_form(data: bytes, filename: str = "photo.jpg") -> bytes:
    """The upload form as a browser sends it: ``data`` in the field ``image``."""
    return multipart(("image", filename, "image/jpeg", data))


def post_body(client: Any, path: str, body: bytes, ctype: str | None = None, **kw: Any) -> Any:
    """POST a raw body through Flask's test client (multipart with ``BOUNDARY`` by default);
    ``kw`` goes to ``client.post`` (``follow_redirects=True``)."""
    return client.post(path, data=body, content_type=ctype or MULTIPART, **kw)


def post(
    client: Any,
    data: bytes | None,
    path: str = "/api/predict",
    filename: str = "photo.jpg",
    **kw: Any,
) -> Any:
    """Upload ``data`` as the form's image through Flask's test client (no file if ``None``)."""
    body = multipart() if data is None else image_form(data, filename)
    return post_body(client, path, body, **kw)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int, color_type: int = 2) -> bytes:
    """A PNG of a few dozen bytes whose header claims ``width`` x ``height`` pixels (8-bit, of
    PNG colour type ``color_type``: 2 is RGB), then one tiny compressed row: a bomb when the
    claim is large."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 1024, 9))
        + png_chunk(b"IEND", b"")
    )


def avif_claiming(width: int, height: int) -> bytes:
    """A real 64 x 48 AVIF whose image size box (ispe) claims ``width`` x ``height`` pixels."""
    data = bytearray(image_bytes(Image.new("RGB", (64, 48), (90, 60, 40)), "AVIF"))
    at = data.index(b"ispe") + 8  # after the box type, its version and flags
    data[at : at + 8] = struct.pack(">II", width, height)
    return bytes(data)


def heic_start(major: bytes = b"heic", compatible: bytes = b"mif1heicmiaf") -> bytes:
    """The first boxes of an iPhone's HEIC photo (ftyp with its brands, then meta), and filler:
    enough to be recognised, not decoded (no HEVC decoder is installed)."""
    ftyp = major + b"\0\0\0\0" + compatible
    handler = b"\0" * 8 + b"pict" + b"\0" * 13
    hdlr = struct.pack(">I", 8 + len(handler)) + b"hdlr" + handler
    meta = struct.pack(">I", 12 + len(hdlr)) + b"meta\0\0\0\0" + hdlr
    return struct.pack(">I", 8 + len(ftyp)) + b"ftyp" + ftyp + meta + b"\0" * 512
