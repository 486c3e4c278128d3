"""End to end in a real headless Chromium: choose or drop a photo, submit, read the result page.

The app is the real one (``create_app`` with the tiny exported learner) served on a loopback
port. Chromium is Debian's (never downloaded): the tests skip when it is missing, and fail
instead when ``REQUIRE_BROWSER=1`` (as ``.ci/run`` sets), so CI cannot pass without them.
"""

from __future__ import annotations

import base64
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw
from werkzeug.serving import make_server

from agegroup import create_app
from agegroup.buckets import BUCKETS
from agegroup.config import Settings

from conftest import image_bytes

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
VIEWPORT = {"width": 1000, "height": 900}
# Reports Content-Security-Policy violations to Python; it survives navigations.
CSP_WATCH = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.reportCspViolation(`${event.violatedDirective} blocked ${event.blockedURI || "inline"}`);
});
"""
# Builds a DataTransfer holding one JPEG, drops it on <main> (outside the drop zone: the whole
# page accepts drops) and says whether the page's script claimed each event.
DROP_FILE = """
([b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
  const target = document.querySelector("main");
  const fire = (type) => {
    const event = new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: transfer });
    target.dispatchEvent(event);
    return event.defaultPrevented;
  };
  const claimed = { dragenter: fire("dragenter"), dragover: fire("dragover") };
  claimed.draggingShown = document.getElementById("drop-zone").classList.contains("dragging");
  claimed.drop = fire("drop");
  return claimed;
}
"""

# True once the preview shows a decoded image of the expected width (it loads asynchronously).
PREVIEW_DECODED = """
(width) => {
  const img = document.getElementById("preview");
  return !img.hidden && img.complete && img.naturalWidth === width;
}
"""


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright, shared by the tests of this module."""
    executable = os.environ.get("CHROMIUM_PATH") or "/usr/bin/chromium"
    if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
        _skip_or_fail(f"no Chromium at {executable} (apt-get install chromium, or CHROMIUM_PATH)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("the playwright package is not installed")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def live_url(chromium_browser: Any, settings: Settings) -> Iterator[str]:
    """The real app, model loaded at startup, served by Werkzeug on a free loopback port."""
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="browser-test-server", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


@dataclass
class PageLog:
    """Everything that went wrong in the browser while a test ran."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return self.console_errors + self.page_errors + self.csp_violations + self.failed_requests


def _watch(page: Any) -> PageLog:
    log = PageLog()
    page.on(
        "console",
        lambda m: m.type == "error" and log.console_errors.append(f"{m.text} at {m.location}"),
    )
    page.on("pageerror", lambda error: log.page_errors.append(str(error)))
    page.on("requestfailed", lambda r: log.failed_requests.append(f"{r.url} {r.failure}"))
    page.on(
        "response",
        lambda r: r.status >= 400 and log.failed_requests.append(f"{r.status} {r.url}"),
    )
    page.expose_function("reportCspViolation", lambda text: log.csp_violations.append(text))
    page.add_init_script(CSP_WATCH)
    return log


@pytest.fixture()
def watched_page(chromium_browser: Any) -> Iterator[tuple[Any, PageLog]]:
    context = chromium_browser.new_context(viewport=VIEWPORT)
    tab = context.new_page()
    log = _watch(tab)
    yield tab, log
    context.close()


def face_photo(path: Path, tint: int = 0) -> Path:
    """A face-like drawing (head, hair, eyes, mouth) saved as a JPEG at ``path``."""
    image = Image.new("RGB", (240, 300), (190 + tint % 40, 210, 230))
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 30, 200, 250), fill=(90, 60, 40))  # hair
    draw.ellipse((55, 60, 185, 270), fill=(236, 196, 164))  # face
    for x in (90, 150):
        draw.ellipse((x - 12, 130, x + 12, 145), fill=(255, 255, 255))
        draw.ellipse((x - 5, 132, x + 5, 143), fill=(60, 40, 30))
    draw.polygon([(120, 150), (110, 190), (130, 190)], fill=(215, 170, 140))  # nose
    draw.arc((90, 195, 150, 235), 20, 160, fill=(170, 60, 60), width=5)  # mouth
    path.write_bytes(image_bytes(image, "JPEG", quality=90))
    return path


def api_prediction(page: Any, live_url: str, photo: Path) -> dict[str, Any]:
    """What the JSON API of the same server says about the same bytes."""
    response = page.request.post(
        f"{live_url}/api/predict",
        multipart={
            "image": {"name": photo.name, "mimeType": "image/jpeg", "buffer": photo.read_bytes()}
        },
    )
    assert response.status == 200, response.text()
    return response.json()["faces"][0]


def submit(page: Any) -> None:
    page.click("#submit-button")
    page.wait_for_url(re.compile(r"/predict$"))
    page.wait_for_load_state("load")


def read_result(page: Any) -> dict[str, Any]:
    """The first face's predicted group and bars as rendered, including each bar's drawn width."""
    from playwright.sync_api import expect

    first_face = page.locator('article.face[data-face="1"]')
    expect(first_face.locator(".bar")).to_have_count(len(BUCKETS))
    bars = []
    for bar in first_face.locator(".bar").all():
        expect(bar).to_be_visible()
        fill = bar.locator(".bar-fill").bounding_box()
        track = bar.locator(".bar-track").bounding_box()
        bars.append(
            {
                "bucket": bar.get_attribute("data-bucket"),
                "label": bar.locator(".bar-label").inner_text().strip(),
                "percent": float(bar.locator(".bar-value").inner_text().strip().rstrip("%")),
                "winner": "winner" in (bar.get_attribute("class") or "").split(),
                "drawn": fill["width"] / track["width"] if fill else 0.0,
            }
        )
    photo_ok = page.eval_on_selector("#photo", "img => img.complete && img.naturalWidth > 0")
    return {
        "predicted": page.locator("#predicted-bucket-1").inner_text().strip(),
        "bars": bars,
        "photo_shown": photo_ok,
    }


def check_result(result: dict[str, Any], api_face: dict[str, Any]) -> None:
    """The page shows the 7 groups in age order, the model's numbers, and one highlighted winner."""
    bars = result["bars"]
    assert [bar["bucket"] for bar in bars] == list(BUCKETS)
    assert [bar["label"] for bar in bars] == list(BUCKETS)
    percents = [bar["percent"] for bar in bars]
    # Each value is rounded to 0.1, so seven of them sum to 100 within 0.35.
    assert sum(percents) == pytest.approx(100, abs=0.4)
    winners = [bar["bucket"] for bar in bars if bar["winner"]]
    assert winners == [result["predicted"]]
    assert max(percents) == percents[BUCKETS.index(result["predicted"])]
    assert result["predicted"] == api_face["bucket"]
    for bar in bars:
        expected = api_face["probabilities"][bar["bucket"]] * 100
        assert bar["percent"] == pytest.approx(expected, abs=0.051), bar
        # The drawn bar is as long as its percentage says.
        assert bar["drawn"] == pytest.approx(expected / 100, abs=0.01), bar
    assert result["photo_shown"], "the uploaded photo is not displayed on the result page"


def test_choose_a_photo_see_preview_submit_and_read_every_group(watched_page, live_url, tmp_path):
    from playwright.sync_api import expect

    tab, log = watched_page
    first, second = face_photo(tmp_path / "face.jpg"), face_photo(tmp_path / "other.jpg", 25)
    tab.goto(f"{live_url}/")
    preview = tab.locator("#preview")
    expect(preview).to_be_hidden()

    tab.set_input_files("#image-input", str(first))
    expect(preview).to_be_visible()
    tab.wait_for_function(PREVIEW_DECODED, arg=240)
    submit(tab)
    check_result(read_result(tab), api_prediction(tab, live_url, first))

    # The result page offers another try with the same form, preview included.
    tab.set_input_files("#image-input", str(second))
    expect(tab.locator("#preview")).to_be_visible()
    submit(tab)
    check_result(read_result(tab), api_prediction(tab, live_url, second))
    assert log.problems() == []


def test_drop_a_photo_anywhere_on_the_page(watched_page, live_url, tmp_path):
    from playwright.sync_api import expect

    tab, log = watched_page
    photo = face_photo(tmp_path / "dropped.jpg", 10)
    tab.goto(f"{live_url}/")
    encoded = base64.b64encode(photo.read_bytes()).decode("ascii")
    claimed = tab.evaluate(DROP_FILE, [encoded, photo.name])
    # The script claims the drag (so the browser does not open the file itself) and shows it.
    assert claimed == {"dragenter": True, "dragover": True, "draggingShown": True, "drop": True}
    expect(tab.locator("#drop-zone")).not_to_have_class(re.compile(r"\bdragging\b"))
    expect(tab.locator("#preview")).to_be_visible()
    tab.wait_for_function(PREVIEW_DECODED, arg=240)
    assert tab.eval_on_selector("#image-input", "i => [...i.files].map(f => f.name)") == [
        photo.name
    ]
    submit(tab)
    check_result(read_result(tab), api_prediction(tab, live_url, photo))
    assert log.problems() == []


def test_the_form_works_without_javascript(chromium_browser, live_url, tmp_path):
    context = chromium_browser.new_context(viewport=VIEWPORT, java_script_enabled=False)
    try:
        tab = context.new_page()
        log = _watch(tab)
        photo = face_photo(tmp_path / "plain.jpg", 30)
        tab.goto(f"{live_url}/")
        tab.set_input_files("#image-input", str(photo))
        submit(tab)
        check_result(read_result(tab), api_prediction(tab, live_url, photo))
        assert log.problems() == []
    finally:
        context.close()
