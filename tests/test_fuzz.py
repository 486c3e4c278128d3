"""Fuzz the upload path with mutated JPEG, PNG, WebP, AVIF and GIF files: never a 500, never a leak.

Mutations: truncation, flipped and overwritten bytes, inserted junk, a wrong magic number and
absurd dimensions written into the header (with a valid checksum, so the parsers believe it).
"""

from __future__ import annotations

import io
import json
import re
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as fuzz_settings
from hypothesis import strategies as st
from PIL import Image

from agegroup.buckets import BUCKETS
from agegroup.factory import create_app
from agegroup.predictor import ModelInfo
from testsupport.uploads import post

EXAMPLES = 2000
# Through the real tiny learner too: fastai's per-call overhead (~0.1 s) limits how many.
REAL_MODEL_EXAMPLES = 150
# A clear answer: a prediction, or an error the user can act on.
EXPECTED = {
    200: None,
    400: "no_image",
    413: "too_large",
    415: "unsupported_type",
    422: "corrupt_image",
}
LEAK = re.compile(r"Traceback|File \"|site-packages|/work/|\.py\b|PIL|Pillow|Werkzeug", re.I)
ABSURD = [0, 1, 2, 255, 256, 16383, 16384, 65535, 65536, 2**24 - 1, 2**31 - 1, 2**32 - 1]


def _seed_files() -> dict[str, bytes]:
    """Small but real photos of every accepted kind (noise, so every decoder path is used)."""
    rng = np.random.default_rng(7)
    photo = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    out: dict[str, bytes] = {}
    for name, fmt, args in [
        ("jpeg", "JPEG", {"quality": 80}),
        ("progressive-jpeg", "JPEG", {"progressive": True}),
        ("png", "PNG", {}),
        ("png-palette", "PNG", {"optimize": True}),
        ("webp", "WEBP", {"quality": 70}),
        ("webp-lossless", "WEBP", {"lossless": True}),
        ("avif", "AVIF", {"quality": 60}),
        ("gif", "GIF", {}),
    ]:
        image = photo.quantize(16) if name == "png-palette" else photo
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **args)
        out[name] = buffer.getvalue()
    frames = [photo.rotate(90 * i) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=20)
    out["animated-gif"] = buffer.getvalue()
    return out


SEEDS = _seed_files()
MAGICS = [
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"RIFF\0\0\0\0WEBPVP8 ",
    b"\0\0\0\x1cftypavif",
    b"\0\0\0\x1cftypheic",
    b"GIF89a",
    b"BM",
    b"II*\0",
]


def _png_fix_crcs(data: bytearray) -> None:
    """Recompute every chunk checksum that lies inside the data."""
    pos = 8
    while pos + 12 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        end = pos + 8 + length
        if end + 4 > len(data):
            return
        data[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(data[pos + 4 : end])))
        pos = end + 4


def set_dimensions(data: bytearray, width: int, height: int) -> None:
    """Write ``width`` x ``height`` into the header field of whatever format the data is."""
    if data.startswith(b"\x89PNG") and len(data) >= 24:
        data[16:24] = struct.pack(">II", width, height)
        _png_fix_crcs(data)
    elif data.startswith(b"GIF") and len(data) >= 10:
        data[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
        descriptor = data.find(b"\x2c", 13)
        if 0 < descriptor and descriptor + 9 <= len(data):
            data[descriptor + 5 : descriptor + 9] = struct.pack(
                "<HH", width & 0xFFFF, height & 0xFFFF
            )
    elif data.startswith(b"RIFF") and len(data) >= 30:
        kind = bytes(data[12:16])
        if kind == b"VP8 ":
            data[26:30] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
        elif kind == b"VP8L":
            bits = ((width - 1) & 0x3FFF) | (((height - 1) & 0x3FFF) << 14)
            data[21:25] = struct.pack(
                "<I", bits | (struct.unpack("<I", data[21:25])[0] & ~0xFFFFFFF)
            )
        elif kind == b"VP8X":
            data[24:30] = ((width - 1) & 0xFFFFFF).to_bytes(3, "little") + (
                (height - 1) & 0xFFFFFF
            ).to_bytes(3, "little")
    elif data.startswith(b"\xff\xd8"):
        for marker in (b"\xff\xc0", b"\xff\xc2"):
            sof = data.find(marker)
            if sof > 0 and sof + 9 <= len(data):
                data[sof + 5 : sof + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
                return


@st.composite
def mutated_files(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "magic", "dims"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            junk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(junk)] = junk
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "magic":
            magic = draw(st.sampled_from(MAGICS))
            data[: len(magic)] = magic
        else:
            set_dimensions(data, draw(st.sampled_from(ABSURD)), draw(st.sampled_from(ABSURD)))
    return name, bytes(data)


class CheckingPredictor:
    """Stands in for the model in the 2,000-case run, and checks what decoding hands it.

    The real learner adds ~0.1 s per decodable case and nothing to what is fuzzed here (the
    upload and decoding path); ``test_mutated_uploads_through_the_real_learner`` and the soak
    run mutated files through it as well.
    """

    info = ModelInfo(name="checking", version="0", input_size=32)

    def __init__(self, work_size: int) -> None:
        self.work_size = work_size

    def predict(self, faces) -> np.ndarray:
        for face in faces:
            assert isinstance(face, Image.Image) and face.mode == "RGB"
            assert 1 <= min(face.size) and max(face.size) <= self.work_size
            face.load()
        return np.full((len(faces), len(BUCKETS)), 1 / len(BUCKETS))


@pytest.fixture(scope="module")
def fuzz_client(settings):
    app = create_app(settings, predictor=CheckingPredictor(settings.work_size))
    return app.test_client()


def post_and_check(client, data: bytes) -> None:
    response = post(client, data, filename="fuzz.jpg")
    assert response.status_code in EXPECTED, response.get_data(as_text=True)[:300]
    body = response.get_json()
    if response.status_code == 200:
        probabilities = body["faces"][0]["probabilities"]
        assert (
            abs(sum(probabilities.values()) - 1) <= 0.00035 + 1e-9
        )  # 7 values rounded to 4 places
    else:
        assert body["error"]["code"] == EXPECTED[response.status_code]
        assert body["error"]["message"]
    # The signed result link is random base64 and may spell anything; the rest may not leak.
    shown = {key: value for key, value in body.items() if key != "result_link"}
    assert not LEAK.search(json.dumps(shown))


def test_the_seed_files_are_accepted(client) -> None:
    for name, data in SEEDS.items():
        assert post(client, data, filename="fuzz.jpg").status_code == 200, name


def test_dimension_rewrite_reaches_the_header() -> None:
    """The mutation that matters most really changes what Pillow reads (not just a checksum)."""
    for name in ("png", "gif", "webp", "webp-lossless", "jpeg"):
        data = bytearray(SEEDS[name])
        set_dimensions(data, 300, 200)
        assert Image.open(io.BytesIO(bytes(data))).size == (300, 200), name


FUZZ_SETTINGS = {
    "deadline": None,
    "database": None,
    # The test clients keep no state between requests, so sharing them across inputs is safe.
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
}


@pytest.mark.slow
@fuzz_settings(max_examples=EXAMPLES, **FUZZ_SETTINGS)
@given(case=mutated_files())
def test_mutated_uploads_never_break_the_server(fuzz_client, case: tuple[str, bytes]) -> None:
    post_and_check(fuzz_client, case[1])


@fuzz_settings(max_examples=REAL_MODEL_EXAMPLES, **FUZZ_SETTINGS)
@given(case=mutated_files())
def test_mutated_uploads_through_the_real_learner(client, case: tuple[str, bytes]) -> None:
    post_and_check(client, case[1])
