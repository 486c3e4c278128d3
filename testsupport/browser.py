"""Chromium for Playwright, and the app served on a free loopback port for it to visit."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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
