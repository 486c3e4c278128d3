"""Memory bounded by design: decode estimates, the budget, 503 + Retry-After, libvips, stress."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from PIL import Image

from agegroup import image_formats
from agegroup.config import PROJECT_ROOT, Settings
from agegroup.errors import CorruptImage, ServerBusy, UploadTooLarge
from agegroup.images import decode_upload
from agegroup.memory_budget import MB, MemoryBudget, shared_budget
from testsupport.server import GunicornServer, render_env, settings_for
from testsupport.uploads import image_bytes, post
from tools import stress

needs_vips = pytest.mark.skipif(image_formats.pyvips is None, reason="pyvips is not installed")


# --- the budget ---------------------------------------------------------------------------------
def test_a_large_decode_leaves_a_quarter_for_everyday_photos() -> None:
    budget = MemoryBudget(100 * MB, wait_s=0)
    with budget.reserve(70 * MB):
        with pytest.raises(ServerBusy):
            with budget.reserve(26 * MB):  # large (over a quarter): only 75 MB for those
                pass
        with budget.reserve(20 * MB):  # an everyday photo still fits beside it
            assert budget.used == 90 * MB
    assert budget.used == 0 and budget.peak == 90 * MB


def test_a_full_budget_refuses_quickly_with_retry_after() -> None:
    budget = MemoryBudget(100 * MB, wait_s=0.2, retry_after_s=3)
    with budget.reserve(75 * MB):
        started = time.monotonic()
        with pytest.raises(ServerBusy) as refused:
            with budget.reserve(50 * MB):
                pass
        assert 0.15 < time.monotonic() - started < 2
    assert refused.value.status == 503 and refused.value.retry_after_s == 3


def test_a_waiting_decode_starts_as_soon_as_room_is_freed() -> None:
    budget = MemoryBudget(100 * MB, wait_s=5)
    admitted = threading.Event()
    with budget.reserve(75 * MB):

        def waiter() -> None:
            with budget.reserve(50 * MB):
                admitted.set()

        thread = threading.Thread(target=waiter)
        thread.start()
        assert not admitted.wait(0.3)
    assert admitted.wait(2)
    thread.join()
    assert budget.used == 0


# --- estimates against what decoding really takes -----------------------------------------------
@pytest.mark.parametrize(
    ("decoder", "files"),
    [
        pytest.param("vips", {"png_rgba": 4000, "webp_lossless": 4000}, marks=needs_vips),
        ("pillow", {"png_rgba": 3000, "png_interlaced": 2500, "webp_lossless": 2500}),
        ("pillow", {"gif": 4000, "bmp_rle8": 6000, "jpeg_progressive": 3000}),
        ("pillow", {"avif_deep": 1600}),
    ],
)
def test_every_estimate_covers_the_real_peak(decoder: str, files: dict[str, int]) -> None:
    """Each worst kind of file, decoded in a fresh process: the estimate is above the peak RSS
    growth, and not wildly above it (else the limits would refuse good photos)."""
    for name, (grown, estimate) in stress.decode_peaks(decoder, files).items():
        assert grown <= estimate, f"{name}: grew {grown / MB:.0f} MB, estimated {estimate / MB:.0f}"
        assert estimate <= 3 * grown + 48 * MB, f"{name}: {estimate / MB:.0f} MB is far too high"


def test_an_image_over_its_formats_limit_is_413_with_the_limit_in_megapixels() -> None:
    data = stress.jpeg_progressive(3000)  # 9 MP, but 2 bytes per sample kept whatever the draft
    with pytest.raises(UploadTooLarge, match=r"3000 x 3000 pixels; at most \d megapixels"):
        decode_upload(data, 50_000_000, 1600, MemoryBudget(96 * MB))


# --- libvips: same answers as Pillow, in a fraction of the memory ---------------------------------
@needs_vips
def test_libvips_path_keeps_orientation_alpha_and_size() -> None:
    pixels = np.zeros((2000, 2400, 4), np.uint8)
    pixels[..., 0] = 200  # red where opaque
    pixels[:, :1200, 3] = 255  # the right half is transparent
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways
    data = image_bytes(Image.fromarray(pixels, "RGBA"), "PNG", exif=exif.tobytes())
    cost = stress._cost(data, Settings())
    assert cost.vips
    decoded = decode_upload(data, 50_000_000, 600)
    assert (decoded.width, decoded.height) == (2000, 2400) and decoded.format == "PNG"
    assert decoded.image.size == (500, 600) and decoded.image.mode == "RGB"
    assert decoded.image.getpixel((250, 10)) == (200, 0, 0)  # top: the opaque half, turned
    assert decoded.image.getpixel((250, 590)) == (255, 255, 255)  # bottom: on white


@needs_vips
def test_a_truncated_big_png_is_still_corrupt() -> None:
    noise = Image.effect_noise((2100, 2000), 60).convert("RGB")
    data = image_bytes(noise, "PNG")
    assert stress._cost(data, Settings()).vips
    with pytest.raises(CorruptImage):
        decode_upload(data[: len(data) // 2], 50_000_000, 600)


# --- over HTTP -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/api/predict", "/predict"])
def test_a_busy_budget_answers_503_with_retry_after(client_with, path: str) -> None:
    client = client_with(decode_budget_mb=128, decode_wait_s=0.1)
    body = stress.png_rgba(2100)
    budget = shared_budget(128 * MB, 0.1)
    with budget.reserve(budget.largest):  # another large decode in flight
        response = post(client, body, path, "big.png")
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    text = response.get_data(as_text=True)
    assert "busy" in text and "Traceback" not in text
    if path == "/api/predict":
        assert response.get_json()["error"]["code"] == "busy"
    assert budget.used == 0
    again = post(client, body, path, "big.png")
    # The page answers with a redirect to its result (post/redirect/get), the API with 200.
    assert again.status_code == (200 if path == "/api/predict" else 303)
    assert budget.used == 0  # the hold ends with the response


def test_render_yaml_env_is_what_the_stress_run_uses() -> None:
    env = render_env()
    assert env["AGE_RUNTIME"] == "onnx" and env["MALLOC_ARENA_MAX"] == "2"
    assert env["WEB_CONCURRENCY"] == "1" and "GUNICORN_THREADS" in env
    assert "AGE_DECODE_BUDGET_MB" in env


# --- the short stress run -------------------------------------------------------------------
@pytest.mark.skipif(
    not (PROJECT_ROOT / "model" / "export.onnx").is_file(), reason="no ONNX model committed"
)
@pytest.mark.slow
def test_short_stress_in_the_deployed_configuration(tmp_path) -> None:
    """The server as render.yaml starts it, 8 clients at once sending the worst files."""
    env = render_env()
    settings = settings_for(env)
    model = PROJECT_ROOT / "model" / "export.pkl"
    with GunicornServer(model, tmp_path / "gunicorn.log", env) as server:
        report = stress.run_stress(server, settings, [8], per_client=2, photo_count=4)
    print(json.dumps(report))
    assert stress.failures(report, max_p95_s=30) == [], json.dumps(report, indent=1)
    burst = report["bursts"][0]
    assert burst["statuses"].get("200", 0) >= 8
