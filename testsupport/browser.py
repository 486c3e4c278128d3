"""Chromium for Playwright, and the app served on a free loopback port for it to visit."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
# A fake camera (a test pattern) that is allowed without a prompt: for the webcam test.
FAKE_CAMERA_ARGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


def chromium_path() -> str:
    """Debian's Chromium, or the one ``CHROMIUM_PATH`` names."""
    return os.environ.get("CHROMIUM_PATH") or "/usr/bin/chromium"


def launch_chromium(playwright: Any, extra_args: list[str] | None = None) -> Any:
    """A headless Chromium under ``playwright`` (``sync_playwright()``'s object)."""
    return playwright.chromium.launch(
        executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS + (extra_args or [])
    )


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` served by Werkzeug on a free loopback port for as long as the block runs."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


AXE = Path(__file__).resolve().parent.parent / "node_modules" / "axe-core" / "axe.min.js"


def skip_or_fail(reason: str) -> None:
    """Skip a browser test that cannot run here; fail it instead under ``REQUIRE_BROWSER=1``."""
    import pytest

    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@contextmanager
def chromium_or_skip(extra_args: list[str] | None = None) -> Iterator[Any]:
    """Debian's Chromium under Playwright for as long as the block runs (see ``skip_or_fail``)."""
    executable = chromium_path()
    if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
        skip_or_fail(f"no Chromium at {executable} (apt-get install chromium, or CHROMIUM_PATH)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("the playwright package is not installed")
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, extra_args)
        try:
            yield browser
        finally:
            browser.close()


def axe_violations(page: Any, impacts: tuple[str, ...] = ("serious", "critical")) -> list[str]:
    """axe-core's violations of these impacts on the page as it is now."""
    if not AXE.is_file():
        skip_or_fail(f"axe-core is not installed ({AXE}): npm install axe-core")
    # Evaluated through DevTools, so the page's CSP (no inline scripts) does not block it.
    page.evaluate(AXE.read_text())
    found = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' '))}))"
    )
    return [f"{v['id']} ({v['impact']}): {v['nodes'][:3]}" for v in found if v["impact"] in impacts]
