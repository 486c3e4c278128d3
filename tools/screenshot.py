"""Make the README screenshot: the result for a bundled example photo, 1000 px wide, in headless
Chromium, the way a visitor gets it (example clicked, result rendered in place by the script).

    python -m tools.screenshot                     # the installed model, the group example
    python -m tools.screenshot --example grace-hopper
    python -m tools.screenshot --tiny              # the tests' tiny learner, before one exists
    python -m tools.screenshot --photo me.jpg      # your own photo instead of an example

Use a photo you may publish: UTKFace images are for non-commercial research only, so they
never go into the README; the examples are public domain (static/examples/LICENSE.md).
Chromium is Debian's (``CHROMIUM_PATH`` or ``/usr/bin/chromium``).
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

from PIL import Image

from agegroup.config import PROJECT_ROOT as ROOT
from agegroup.config import Settings
from agegroup.factory import create_app
from testsupport.browser import launch_chromium, serving

WIDTH = 1000
MAX_PNG_BYTES = 300 * 1024


def tiny_settings(folder: Path) -> Settings:
    """Export the tests' tiny learner (random weights) so the page can be shown without a model."""
    from testsupport.learner import export_tiny_learner

    path = export_tiny_learner(folder / "export.pkl")
    return Settings(model_path=path, model_dir=folder)


def capture(base_url: str, example: str, photo: Path | None, out: Path) -> None:
    """Try ``example`` (or upload ``photo``) and save the result section as a PNG."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": WIDTH, "height": 800})
        page.goto(f"{base_url}/")
        if photo is None:
            page.click(f'button.example[value="{example}"]')
        else:
            page.set_input_files("#image-input", str(photo))
            page.click("#submit-button")
        page.wait_for_selector("#result-title")
        if page.locator("#photo-figure").count():
            page.wait_for_selector("#download-png:not([hidden])", state="attached")
        page.mouse.move(0, 0)  # no hover highlight in the picture
        page.evaluate("document.activeElement.blur()")
        png = page.locator("#result").screenshot(animations="disabled")
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
    parser.add_argument("--example", default="group", help="bundled example to try")
    parser.add_argument("--photo", type=Path, help="image to upload instead of an example")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("--tiny", action="store_true", help="use the tests' tiny learner")
    args = parser.parse_args(argv)
    if not args.tiny and not Settings.from_env().model_path.is_file():
        parser.error(f"no model at {Settings.from_env().model_path}: train one, or pass --tiny")
    with tempfile.TemporaryDirectory() as scratch:
        settings = tiny_settings(Path(scratch)) if args.tiny else Settings.from_env()
        with serving(create_app(settings)) as base_url:
            capture(base_url, args.example, args.photo, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
