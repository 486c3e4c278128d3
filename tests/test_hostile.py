"""Crafted and broken uploads through the HTTP layer: a fitting answer, no leak, no file written."""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator

import numpy as np
import pytest
from flask import Flask, Request
from PIL import Image

from agegroup.buckets import BUCKETS
from testsupport.images import face_jpeg, synthetic_faces
from testsupport.uploads import (
    avif_claiming,
    heic_start,
    image_bytes,
    multipart,
    png_claiming,
    post,
    post_body,
)

# --- watching the disk ---------------------------------------------------------------------
# An audit hook sees every file opened for writing and every temporary file, whichever library
# asks; Python cannot remove one, so it only records while ``_WATCH`` is switched on.
_WATCH: list[list[str]] = []
_WRITE_FLAGS = 0o1 | 0o2 | 0o100  # O_WRONLY | O_RDWR | O_CREAT


def _audit(event: str, args: tuple) -> None:
    if not _WATCH:
        return
    if event in ("tempfile.mkstemp", "tempfile.mkdtemp"):
        _WATCH[-1].append(f"{event} {args}")
    elif event == "open" and len(args) == 3:
        path, mode, flags = args
        writes = any(c in str(mode or "") for c in "wax+") or bool((flags or 0) & _WRITE_FLAGS)
        if writes and not isinstance(path, int):
            _WATCH[-1].append(f"open {path} {mode}")


sys.addaudithook(_audit)


@pytest.fixture()
def disk_writes() -> Iterator[list[str]]:
    """The list of files written while the test runs."""
    seen: list[str] = []
    _WATCH.append(seen)
    yield seen
    _WATCH.remove(seen)


# --- crafted files -----------------------------------------------------------------------------
def gif_with_frames(count: int) -> bytes:
    frames = [Image.new("P", (8, 8), i % 200) for i in range(count)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=1)
    return out.getvalue()


def multi_page_tiff() -> bytes:
    pages = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(5)]
    out = io.BytesIO()
    pages[0].save(out, "TIFF", save_all=True, append_images=pages[1:])
    return out.getvalue()


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><circle r="9"/></svg>'
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
HTML = b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>"

CRAFTED = {
    # name: (bytes, filename, expected status, expected error code or None for a prediction)
    "decompression bomb": (png_claiming(100_000, 100_000), "bomb.png", 413, "too_large"),
    "avif claiming 9000 x 9000": (avif_claiming(9000, 9000), "bomb.avif", 413, "too_large"),
    "avif claiming 60000 x 60000": (avif_claiming(60000, 60000), "huge.avif", 422, "corrupt_image"),
    "iphone heic": (heic_start(), "IMG_0003.HEIC", 415, "unsupported_type"),
    "gif with 3000 frames": (gif_with_frames(3000), "many.gif", 200, None),
    "multi-page tiff": (multi_page_tiff(), "pages.tiff", 415, "unsupported_type"),
    "svg": (SVG, "drawing.svg", 415, "unsupported_type"),
    "pdf": (PDF, "document.pdf", 415, "unsupported_type"),
    "html renamed jpg": (HTML, "photo.jpg", 415, "unsupported_type"),
    "jpeg with a zip appended": (
        face_jpeg() + b"PK\x03\x04\x14\x00" + b"\0" * 500,
        "polyglot.jpg",
        200,
        None,
    ),
    "path traversal, non-ascii name": (
        face_jpeg(),
        "../../etc/pässwd/фото 😀.jpg",
        200,
        None,
    ),
    "script in the file name": (face_jpeg(), '"><script>alert(1)</script>.jpg', 200, None),
    "truncated jpeg": (face_jpeg()[:400], "cut.jpg", 422, "corrupt_image"),
    "empty file": (b"", "empty.jpg", 400, "no_image"),
    "over the size limit": (
        b"\xff\xd8\xff" + b"\0" * (1024 * 1024 + 10),
        "big.jpg",
        413,
        "too_large",
    ),
}

# Things a response must never show: tracebacks, server paths, library names and versions.
LEAKS = re.compile(
    r"Traceback|File \"|/work/|/home/|/usr/|site-packages|\.py\b|Werkzeug|werkzeug|Pillow|PIL\b"
    r"|fastai|torch|gunicorn/|Python/\d|flask",
    re.IGNORECASE,
)


def assert_no_leak(response) -> None:
    text = response.get_data(as_text=True)
    assert not LEAKS.search(text), LEAKS.search(text)
    server = response.headers.get("Server", "")
    assert not re.search(r"\d", server), f"Server header shows a version: {server}"


@pytest.mark.parametrize("path", ["/api/predict", "/predict"])
@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_upload_gets_a_fitting_answer(client, disk_writes, path: str, name: str) -> None:
    data, filename, status, code = CRAFTED[name]
    response = post(client, data, path, filename)
    if path == "/predict" and status == 200:  # post/redirect/get: the result is at the link
        assert response.status_code == 303
        response = client.get(response.headers["Location"])
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert_no_leak(response)
    assert "script>alert" not in response.get_data(as_text=True)
    assert "passwd" not in response.get_data(as_text=True)
    if path == "/api/predict":
        body = response.get_json()
        if code is None:
            assert body["faces"] and set(body["faces"][0]["probabilities"]) == set(BUCKETS)
        else:
            assert body["error"]["code"] == code and body["error"]["message"]
    else:
        assert response.mimetype == "text/html"
        if code is not None:
            assert f'data-code="{code}"' in response.get_data(as_text=True)
    assert disk_writes == []


def test_several_image_fields_are_refused(client, disk_writes) -> None:
    photo = face_jpeg()
    body = multipart(
        ("image", "a.jpg", "image/jpeg", photo), ("image", "b.jpg", "image/jpeg", photo)
    )
    response = post_body(client, "/api/predict", body)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "bad_request"
    assert disk_writes == []


def test_a_file_in_another_field_is_no_image(client) -> None:
    body = multipart(("photo", "a.jpg", "image/jpeg", face_jpeg()))
    response = post_body(client, "/api/predict", body)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "no_image"


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"", None),
        (b"", "application/octet-stream"),
        (b'{"image": "aGVsbG8="}', "application/json"),
        (b"image=hello", "application/x-www-form-urlencoded"),
        (b"this is not multipart", "multipart/form-data; boundary=nothing-matches"),
        (b'--x\r\nContent-Disposition: form-data; name="image"\r\n\r\nabc', "multipart/form-data"),
    ],
    ids=["empty", "octet-stream", "json", "urlencoded", "wrong boundary", "no boundary"],
)
def test_a_request_without_a_multipart_upload_is_a_clear_400(client, body, ctype) -> None:
    response = post_body(client, "/api/predict", body, ctype or "multipart/form-data; boundary=x")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "no_image"
    assert_no_leak(response)


def test_thousands_of_form_parts_are_refused_as_too_large(client) -> None:
    parts = [("f", None, "text/plain", b"x")] * 1500
    response = post_body(client, "/api/predict", multipart(*parts))
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "too_large"
    assert_no_leak(response)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/predict"),
        ("GET", "/api/predict"),
        ("PUT", "/api/predict"),
        ("DELETE", "/"),
        ("POST", "/healthz"),
        ("PATCH", "/predict"),
    ],
)
def test_a_wrong_method_is_405(client, method: str, path: str) -> None:
    response = client.open(path, method=method)
    assert response.status_code == 405
    assert_no_leak(response)


def test_big_upload_is_kept_in_memory(client, disk_writes) -> None:
    """Werkzeug spools files over 500 KB to a temporary file unless told otherwise."""
    photo = image_bytes(Image.effect_noise((700, 700), 90).convert("RGB"), quality=98)
    assert 500 * 1024 < len(photo) < 1024 * 1024
    response = post(client, photo, "/api/predict")
    assert response.status_code == 200
    assert disk_writes == []


def noise_jpeg(seed: int, side: int) -> bytes:
    """A photo-sized JPEG of noise: every byte value occurs, like in a real photo."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return image_bytes(Image.fromarray(pixels), quality=90)


def test_photos_over_64_kib_are_not_refused_as_too_large(client) -> None:
    """Werkzeug's multipart buffer must hold one 64 KiB read plus a boundary's look-behind.

    With MAX_FORM_MEMORY_SIZE at 64 KiB, about a third of real photos over 64 KB got a 413.
    """
    statuses = []
    for seed in range(8):
        photo = noise_jpeg(seed, 300 + 20 * seed)
        assert 64 * 1024 < len(photo) < 1024 * 1024
        statuses.append(post(client, photo, "/api/predict").status_code)
    assert statuses == [200] * 8


def test_the_disk_watch_sees_a_spooled_upload(settings, disk_writes) -> None:
    """The watch itself works: Flask's own request class writes the same upload to disk."""
    plain = Flask(__name__)
    plain.request_class = Request

    @plain.post("/")
    def read() -> str:
        from flask import request

        return str(len(request.files["image"].read()))

    body = multipart(("image", "a.jpg", "image/jpeg", b"\0" * (600 * 1024)))
    response = post_body(plain.test_client(), "/", body)
    assert response.get_data(as_text=True) == str(600 * 1024)
    assert disk_writes, "a spooled upload went unnoticed"


PAGES = [
    ("GET", "/", None),
    ("GET", "/healthz", None),
    ("GET", "/static/style.css", None),
    ("GET", "/no-such-page", None),
    ("GET", "/predict", None),
    ("POST", "/predict", "photo"),
    ("POST", "/predict", "bad"),
    ("POST", "/api/predict", "photo"),
    ("POST", "/api/predict", "bad"),
]


@pytest.mark.parametrize(("method", "path", "payload"), PAGES)
def test_security_headers_on_every_page(client, method: str, path: str, payload) -> None:
    if payload is None:
        response = client.open(path, method=method)
    else:
        data = face_jpeg() if payload == "photo" else b"not an image"
        response = post(client, data, path)
    headers = response.headers
    csp = headers.get("Content-Security-Policy", "")
    directives = dict((d.strip().split(" ", 1) + [""])[:2] for d in csp.split(";") if d.strip())
    script_src = directives.get("script-src", directives.get("default-src", ""))
    assert script_src and "'unsafe-inline'" not in script_src and "*" not in script_src
    assert "'unsafe-eval'" not in script_src
    assert headers.get("X-Content-Type-Options") == "nosniff"
    assert headers.get("Referrer-Policy")
    assert headers.get("X-Frame-Options") == "DENY" or "frame-ancestors" in directives
    assert_no_leak(response)


@pytest.mark.parametrize(
    ("method", "path", "payload", "status"),
    [
        ("GET", "/", None, 200),
        ("GET", "/no-such-page", None, 404),
        ("GET", "/predict", None, 405),
        ("POST", "/predict", "bad", 415),
    ],
)
def test_the_home_page_and_every_html_error_page_have_no_inline_script(
    client, method: str, path: str, payload, status: int
) -> None:
    if payload is None:
        response = client.open(path, method=method)
    else:
        response = post(client, b"not an image", path)
    assert response.status_code == status and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert "<form" in html  # error pages carry the upload form too
    assert_no_inline_script(html)


def test_result_page_has_no_inline_script(client) -> None:
    redirect = post(client, face_jpeg(), "/predict")
    html = client.get(redirect.headers["Location"]).get_data(as_text=True)
    assert 'id="predicted-bucket-1"' in html
    assert_no_inline_script(html)


def assert_no_inline_script(html: str) -> None:
    """The CSP forbids inline code, so the pages must not rely on any."""
    for tag in re.findall(r"<script\b[^>]*>", html, re.IGNORECASE):
        assert "src=" in tag, f"inline script: {tag}"
    assert not re.search(r"\son[a-z]+\s*=", html, re.IGNORECASE), "inline event handler"
    assert "javascript:" not in html.lower()


def test_text_in_the_image_metadata_is_not_echoed(client) -> None:
    """PNG text chunks and EXIF are attacker-controlled: never shown, so never a vector."""
    from PIL import PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_text("Description", "<script>alert(1)</script>")
    photo = Image.fromarray(synthetic_faces(1, 64, seed=5)[0])
    data = image_bytes(photo, "PNG", pnginfo=meta)
    for path in ("/predict", "/api/predict"):
        text = post(client, data, path, "<b>x</b>.png").get_data(as_text=True)
        assert "<script>alert" not in text and "<b>x</b>" not in text
