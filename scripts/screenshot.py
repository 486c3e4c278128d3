"""Make the README screenshot: the result page for a photo, 1000 px wide, in headless Chromium.

    python scripts/screenshot.py                     # the installed model (model/export.pkl)
    python scripts/screenshot.py --tiny              # the tests' tiny learner, before one exists
    python scripts/screenshot.py --photo me.jpg      # your own photo instead of the drawing

Use a photo you may publish: UTKFace images are for non-commercial research only, so they
never go into the README. Chromium is Debian's (``CHROMIUM_PATH`` or ``/usr/bin/chromium``).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agegroup import create_app  # noqa: E402
from agegroup.config import Settings  # noqa: E402

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDTH = 1000
MAX_PNG_BYTES = 300 * 1024


def drawn_face() -> bytes:
    """A soft, face-like drawing as JPEG bytes: something to show that is nobody's photo."""
    image = Image.new("RGB", (480, 600), (205, 222, 236))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 470, 480, 600), fill=(70, 100, 150))  # shoulders
    draw.ellipse((110, 40, 370, 330), fill=(92, 62, 44))  # hair
    draw.rectangle((205, 380, 275, 480), fill=(224, 184, 152))  # neck
    draw.ellipse((125, 90, 355, 440), fill=(236, 198, 166))  # face
    for x in (190, 290):
        draw.ellipse((x - 26, 225, x + 26, 255), fill=(250, 250, 250))
        draw.ellipse((x - 11, 228, x + 11, 252), fill=(70, 48, 34))
        draw.arc((x - 32, 195, x + 32, 225), 200, 340, fill=(80, 55, 40), width=6)  # brows
    draw.polygon([(240, 255), (222, 320), (258, 320)], fill=(218, 176, 146))  # nose
    draw.arc((195, 320, 285, 385), 20, 160, fill=(170, 70, 70), width=8)  # mouth
    image = image.filter(ImageFilter.GaussianBlur(2))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """The real app on a free loopback port for as long as the block runs."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def tiny_settings(folder: Path) -> Settings:
    """Export the tests' tiny learner (random weights) so the page can be shown without a model."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import export_tiny_learner

    path = export_tiny_learner(folder / "export.pkl")
    return Settings(model_path=path, model_dir=folder)


def capture(base_url: str, photo: Path, out: Path) -> None:
    """Upload ``photo`` through the form and save the whole result page as a PNG."""
    from playwright.sync_api import sync_playwright

    executable = os.environ.get("CHROMIUM_PATH") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": WIDTH, "height": 800})
        page.goto(f"{base_url}/")
        page.set_input_files("#image-input", str(photo))
        page.click("#submit-button")
        page.wait_for_selector(".bar.winner")
        page.wait_for_load_state("load")
        png = page.screenshot(full_page=True, animations="disabled")
        browser.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(shrink(png))


def shrink(png: bytes) -> bytes:
    """The PNG as is when small enough, else reduced to 256 colours (a flat UI loses little)."""
    if len(png) <= MAX_PNG_BYTES:
        return png
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(256)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", type=Path, help="image to upload (default: a drawn face)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("--tiny", action="store_true", help="use the tests' tiny learner")
    args = parser.parse_args(argv)
    if not args.tiny and not Settings.from_env().model_path.is_file():
        parser.error(f"no model at {Settings.from_env().model_path}: train one, or pass --tiny")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        photo = args.photo
        if photo is None:
            photo = folder / "face.jpg"
            photo.write_bytes(drawn_face())
        settings = tiny_settings(folder) if args.tiny else Settings.from_env()
        with serving(settings) as base_url:
            capture(base_url, photo, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
