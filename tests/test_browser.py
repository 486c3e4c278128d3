"""End to end in a real headless Chromium: every way in (choose, drop, paste, example, webcam,
plain form), the result in place under its own link, Back, phone size, dark mode, axe-core.

The app is the real one (``create_app`` with the tiny exported learner and the real face
detector) served on a loopback port. Chromium is Debian's (never downloaded): the tests skip
when it is missing, and fail instead when ``REQUIRE_BROWSER=1`` (as ``.ci/run`` sets), so CI
cannot pass without them. axe-core comes from npm (``node_modules/axe-core``, installed by
``.ci/run``); its checks skip without it, and fail under ``REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from agegroup.buckets import BUCKETS
from agegroup.config import Settings
from agegroup.factory import create_app
from testsupport.browser import FAKE_CAMERA_ARGS, axe_violations, chromium_or_skip, serving
from testsupport.uploads import heic_start, image_bytes

VIEWPORT = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "static" / "examples"
# Reports Content-Security-Policy violations to Python; it survives navigations.
CSP_WATCH = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.reportCspViolation(`${event.violatedDirective} blocked ${event.blockedURI || "inline"}`);
});
"""
# Builds a DataTransfer holding one JPEG, drops it on <main> (outside the drop zone: the whole
# page accepts drops) and says whether the page's script claimed each event.
DROP_FILE = """
([b64, name, type, copies]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  for (let i = 0; i < (copies || 1); i++) {
    transfer.items.add(new File([bytes], i ? i + name : name, { type: type || "image/jpeg" }));
  }
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


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright, shared by the tests of this module."""
    with chromium_or_skip(FAKE_CAMERA_ARGS) as chromium:
        yield chromium


# Pastes one PNG as the clipboard would (a ClipboardEvent carrying a file, no text).
PASTE_FILE = """
(b64) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], "image.png", { type: "image/png" }));
  const event = new ClipboardEvent(
    "paste", { clipboardData: transfer, bubbles: true, cancelable: true });
  document.body.dispatchEvent(event);
  return event.defaultPrevented;
}
"""


@pytest.fixture(scope="module")
def live_url(chromium_browser: Any, settings: Settings) -> Iterator[str]:
    """The real app, model loaded at startup, served by Werkzeug on a free loopback port."""
    with serving(create_app(settings)) as url:
        yield url


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
    # A preview replaced or cleared while it still loads cancels its blob: read: not a failure.
    page.on(
        "requestfailed",
        lambda r: (
            (r.url.startswith("blob:") and "ERR_ABORTED" in (r.failure or ""))
            or log.failed_requests.append(f"{r.url} {r.failure}")
        ),
    )
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
    """Grace Hopper's public-domain portrait (the bundled example), 240 px wide, darkened by
    ``tint`` percent, saved as a JPEG at ``path``: a face the real detector finds."""
    with Image.open(EXAMPLES / "grace-hopper.jpg") as grace:
        image = ImageEnhance.Brightness(grace.convert("RGB").resize((240, 281))).enhance(
            1 - tint / 100
        )
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


RESULT_URL = re.compile(r"/result\?r=[A-Za-z0-9_.-]+$")  # signed: payload.signature


def submit(page: Any) -> None:
    """Press the button; the result arrives under its own link, with scripts or without."""
    before = page.url
    page.click("#submit-button")
    page.wait_for_url(lambda url: url != before and RESULT_URL.search(url) is not None)
    page.wait_for_selector("#result-title")
    page.wait_for_load_state("load")


def wait_for_photo(page: Any) -> None:
    """The result's photo, its thumbnails and the PNG download are made in the browser."""
    page.wait_for_function(
        "() => { const img = document.getElementById('photo');"
        " return img && img.complete && img.naturalWidth > 0"
        " && !document.getElementById('photo-figure').hidden; }"
    )
    page.wait_for_selector("#download-png:not([hidden])", state="attached")


def read_result(page: Any) -> dict[str, Any]:
    """The first face's predicted group and bars as rendered, including each bar's drawn width."""
    from playwright.sync_api import expect

    first_face = page.locator('li.face[data-face="1"]')
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
    return {"predicted": page.locator("#predicted-bucket-1").inner_text().strip(), "bars": bars}


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


# Records each image the script hands to XMLHttpRequest: name, type, size and first bytes.
SENT_IMAGE = """
window.sentImages = [];
const originalSend = XMLHttpRequest.prototype.send;
XMLHttpRequest.prototype.send = function (body) {
  const image = body instanceof FormData ? body.get("image") : null;
  if (!image) return originalSend.call(this, body);
  image.slice(0, 3).arrayBuffer().then((head) => {
    const head3 = [...new Uint8Array(head)];
    window.sentImages.push({ name: image.name, type: image.type, size: image.size, head: head3 });
    originalSend.call(this, body);
  });
};
"""


def uploads(page: Any) -> list[str]:
    """Collects every request that carries a photo to the server."""
    seen: list[str] = []
    page.on(
        "request",
        lambda r: r.method == "POST" and r.url.endswith("predict") and seen.append(r.url),
    )
    return seen


def encoded(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def try_example(page: Any, name: str) -> None:
    page.click(f'button.example[value="{name}"]')
    page.wait_for_url(RESULT_URL)
    page.wait_for_selector("#result-title")


# --- choosing, dropping, pasting ------------------------------------------------------------


def test_choose_submit_result_in_place_then_back_forward_and_reload(
    watched_page, live_url, tmp_path
):
    from playwright.sync_api import expect

    tab, log = watched_page
    first, second = face_photo(tmp_path / "face.jpg"), face_photo(tmp_path / "other.jpg", 25)
    tab.goto(f"{live_url}/")
    preview = tab.locator("#preview")
    expect(preview).to_be_hidden()
    tab.set_input_files("#image-input", str(first))
    expect(preview).to_be_visible()
    tab.wait_for_function(PREVIEW_DECODED, arg=240)
    navigations: list[str] = []  # page loads (pushState is not one)
    tab.on("request", lambda r: r.resource_type == "document" and navigations.append(r.url))
    sent = uploads(tab)
    submit(tab)
    # Rendered in place: one fetch to the API, no page load, focus on the result's heading.
    assert navigations == [] and len(sent) == 1 and sent[0].endswith("/api/predict")
    assert tab.evaluate("document.activeElement.id") == "result-title"
    wait_for_photo(tab)
    check_result(read_result(tab), api_prediction(tab, live_url, first))
    result_url = tab.url

    # Back returns to the start page without asking to resubmit; Forward and reload keep the
    # result, photo included (it lives in this tab's history entry, not on the server).
    tab.go_back()
    tab.wait_for_url(f"{live_url}/")
    expect(tab.locator("h1")).to_have_text("Which age group is this?")
    tab.go_forward()
    tab.wait_for_url(result_url)
    wait_for_photo(tab)
    tab.reload()
    wait_for_photo(tab)
    check_result(read_result(tab), api_prediction(tab, live_url, first))
    assert len(sent) == 1  # neither Back, Forward nor reload sent the photo again

    # The result page offers another try with the same form.
    tab.set_input_files("#image-input", str(second))
    expect(tab.locator("#preview")).to_be_visible()
    submit(tab)
    check_result(read_result(tab), api_prediction(tab, live_url, second))
    tab.go_back()
    tab.wait_for_url(result_url)
    expect(tab.locator("#result-title")).to_be_visible()
    assert log.problems() == []


def test_drop_a_photo_anywhere_then_a_wrong_file_then_two_files(watched_page, live_url, tmp_path):
    from playwright.sync_api import expect

    tab, log = watched_page
    photo = face_photo(tmp_path / "dropped.jpg", 10)
    tab.goto(f"{live_url}/")
    claimed = tab.evaluate(DROP_FILE, [encoded(photo), photo.name])
    # The script claims the drag (so the browser does not open the file itself) and shows it.
    assert claimed == {"dragenter": True, "dragover": True, "draggingShown": True, "drop": True}
    expect(tab.locator("#drop-zone")).not_to_have_class(re.compile(r"\bdragging\b"))
    expect(tab.locator("#preview")).to_be_visible()
    tab.wait_for_function(PREVIEW_DECODED, arg=240)
    files = "i => [...i.files].map(f => f.name)"
    assert tab.eval_on_selector("#image-input", files) == [photo.name]

    # A text file dropped after the photo: refused, and neither preview nor form keeps the photo.
    note = tmp_path / "notes.txt"
    note.write_text("not a photo")
    tab.evaluate(DROP_FILE, [encoded(note), note.name, "text/plain"])
    expect(tab.locator("#form-error")).to_contain_text("not supported")
    expect(tab.locator("#form-error")).to_contain_text("BMP")
    expect(tab.locator("#preview")).to_be_hidden()
    assert tab.eval_on_selector("#image-input", files) == []

    # An iPhone's HEIC photo, which Chromium cannot decode either: the server's advice, here.
    heic = tmp_path / "IMG_0001.HEIC"
    heic.write_bytes(heic_start())
    tab.evaluate(DROP_FILE, [encoded(heic), heic.name, "image/heic"])
    expect(tab.locator("#form-error")).to_contain_text("Most Compatible")
    expect(tab.locator("#preview")).to_be_hidden()
    assert tab.eval_on_selector("#image-input", files) == []

    # Two photos at once: the first is used and the page says so.
    tab.evaluate(DROP_FILE, [encoded(photo), photo.name, "image/jpeg", 2])
    expect(tab.locator("#upload-status")).to_contain_text("2 files dropped; only the first")
    expect(tab.locator("#form-error")).to_be_hidden()
    assert tab.eval_on_selector("#image-input", files) == [photo.name]
    submit(tab)
    check_result(read_result(tab), api_prediction(tab, live_url, photo))
    assert log.problems() == []


def test_paste_an_image_from_the_clipboard(watched_page, live_url, tmp_path):
    from playwright.sync_api import expect

    tab, log = watched_page
    photo = tmp_path / "pasted.png"
    photo.write_bytes(image_bytes(Image.open(face_photo(tmp_path / "f.jpg", 5)), "PNG"))
    tab.goto(f"{live_url}/")
    expect(tab.locator(".paste-hint")).to_be_visible()
    assert tab.evaluate(PASTE_FILE, encoded(photo)) is True
    expect(tab.locator("#preview")).to_be_visible()
    tab.wait_for_function(PREVIEW_DECODED, arg=240)
    submit(tab)
    wait_for_photo(tab)
    read_result(tab)
    assert log.problems() == []


def test_a_too_large_file_is_refused_before_upload(watched_page, live_url, tmp_path):
    """The test server's limit is 1 MB; a 1,200 px noise PNG is over it and is not shrunk."""
    from playwright.sync_api import expect

    tab, log = watched_page
    noise = np.random.default_rng(0).integers(0, 255, (1200, 1200, 3), dtype=np.uint8)
    big = tmp_path / "noise.png"
    big.write_bytes(image_bytes(Image.fromarray(noise), "PNG"))
    assert big.stat().st_size > 1024 * 1024
    sent = uploads(tab)
    tab.goto(f"{live_url}/")
    tab.set_input_files("#image-input", str(big))
    expect(tab.locator("#form-error")).to_contain_text("larger than the limit of 1 MB")
    expect(tab.locator("#preview")).to_be_hidden()
    tab.click("#submit-button")  # the emptied, required file field stops the form
    tab.wait_for_timeout(300)
    assert sent == []
    assert tab.eval_on_selector("#image-input", "i => i.files.length") == 0
    assert log.problems() == []


def test_a_large_photo_is_shrunk_upright_in_the_browser_before_upload(
    watched_page, live_url, tmp_path
):
    """A 4000 x 3000 photo stored sideways (EXIF 6) goes up as an upright 1200 x 1600 JPEG."""
    tab, log = watched_page
    face = Image.open(face_photo(tmp_path / "f.jpg", 15)).resize((1800, 2250))
    upright = Image.new("RGB", (3000, 4000), (120, 140, 160))
    upright.paste(face, (600, 900))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = tmp_path / "phone.jpg"
    stored.write_bytes(
        image_bytes(upright.transpose(Image.Transpose.ROTATE_90), quality=70, exif=exif)
    )
    tab.add_init_script(SENT_IMAGE)
    tab.goto(f"{live_url}/")
    tab.set_input_files("#image-input", str(stored))
    submit(tab)
    data = json.loads(tab.get_attribute("#result", "data-result"))
    assert data["image"] == {"width": 1200, "height": 1600}
    (sent,) = tab.evaluate("window.sentImages")
    assert (sent["name"], sent["type"]) == ("phone.jpg", "image/jpeg")
    assert sent["size"] < stored.stat().st_size
    assert log.problems() == []


def test_an_heic_photo_the_browser_can_read_goes_up_as_a_jpeg(watched_page, live_url, tmp_path):
    """As in Safari, which decodes HEIC: the server, which cannot, gets a JPEG copy. (Chromium
    decodes by content, so a PNG named and typed as HEIC stands in for one.)"""
    tab, log = watched_page
    photo = image_bytes(Image.open(face_photo(tmp_path / "f.jpg", 5)), "PNG")
    # The request's multipart body is not visible to the test; the form data handed to it is.
    tab.add_init_script(SENT_IMAGE)
    tab.goto(f"{live_url}/")
    heic = {"name": "IMG_0002.HEIC", "mimeType": "image/heic", "buffer": photo}
    tab.set_input_files("#image-input", files=[heic])
    submit(tab)
    read_result(tab)
    sent = tab.evaluate("window.sentImages")
    assert [(s["name"], s["type"], s["head"]) for s in sent] == [
        ("IMG_0002.jpg", "image/jpeg", [0xFF, 0xD8, 0xFF])
    ]
    assert log.problems() == []


# --- examples, faces, phone -----------------------------------------------------------------


def test_group_example_at_phone_size_reads_on_one_screen(chromium_browser, live_url):
    from playwright.sync_api import expect

    context = chromium_browser.new_context(viewport=PHONE, has_touch=True, is_mobile=True)
    try:
        tab = context.new_page()
        log = _watch(tab)
        tab.goto(f"{live_url}/")
        try_example(tab, "group")
        wait_for_photo(tab)
        expect(tab.locator("#result-title")).to_have_text(re.compile(r"^5 faces: "))
        groups = [tab.inner_text(f"#predicted-bucket-{i}") for i in range(1, 6)]
        assert tab.inner_text("#result-title") == "5 faces: " + ", ".join(groups)
        assert tab.title().startswith("5 faces: ")
        # Every box carries "number · group", at least 12 px high on the phone's screen.
        labels = tab.locator(".face-box .label")
        assert labels.all_text_contents() == [f"{i} · {g}" for i, g in enumerate(groups, start=1)]
        for label in labels.all():
            assert label.bounding_box()["height"] >= 12
        # Each card shows its face's thumbnail; the five cards fit on one phone screen.
        for i in range(1, 6):
            card = tab.locator(f"#face-{i}")
            expect(card.locator("img.thumb")).to_be_visible()
            assert card.locator("img.thumb").evaluate("img => img.naturalWidth") == 112
        top = tab.locator("#face-1").bounding_box()["y"]
        last = tab.locator("#face-5").bounding_box()
        assert last["y"] + last["height"] - top <= PHONE["height"] * 0.75
        # No line break inside a group's name, no sideways scrolling.
        for i in range(1, 6):
            assert tab.locator(f"#predicted-bucket-{i}").bounding_box()["height"] < 40
        assert tab.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        # Tapping a box highlights its card; tapping a card highlights its box.
        tab.locator('.face-box[data-face="3"]').tap()
        expect(tab.locator("#face-3")).to_have_class(re.compile(r"\bactive\b"))
        tab.locator("#face-2 .face-main").tap()
        expect(tab.locator('.face-box[data-face="2"]')).to_have_class(re.compile(r"\bactive\b"))
        expect(tab.locator("#face-3")).not_to_have_class(re.compile(r"\bactive\b"))
        assert re.search(RESULT_URL, tab.url)  # tapping added no #fragment to the history
        assert log.problems() == []
    finally:
        context.close()


def test_hovering_a_box_highlights_its_card_and_downloads_are_offered(watched_page, live_url):
    from playwright.sync_api import expect

    tab, log = watched_page
    tab.goto(f"{live_url}/")
    try_example(tab, "group")
    wait_for_photo(tab)
    tab.hover('.face-box[data-face="4"] .box')
    expect(tab.locator("#face-4")).to_have_class(re.compile(r"\bactive\b"))
    tab.hover("#face-1")
    expect(tab.locator('.face-box[data-face="1"]')).to_have_class(re.compile(r"\bactive\b"))
    with tab.expect_download() as png:
        tab.click("#download-png")
    image = Image.open(png.value.path())
    assert image.format == "PNG" and image.size == (1200, 800)
    with tab.expect_download() as answer:
        tab.click("#download-json")
    body = json.loads(Path(answer.value.path()).read_text())
    assert len(body["faces"]) == 5 and body["model"]["name"] == "tiny-test-model"
    assert log.problems() == []


def test_no_face_example_leads_with_no_face_found(watched_page, live_url):
    from playwright.sync_api import expect

    tab, log = watched_page
    tab.goto(f"{live_url}/")
    try_example(tab, "no-face")
    expect(tab.locator("h1")).to_have_text("No face found")
    assert tab.title().startswith("No face found")
    expect(tab.locator("#no-face-advice")).to_contain_text("closer")
    # The whole-photo guess is folded away, labelled unreliable, and never orange.
    expect(tab.locator("#fallback-guess .bucket")).to_be_hidden()
    expect(tab.locator("#fallback-guess > summary")).to_contain_text("unreliable")
    tab.click("#fallback-guess > summary")
    bucket = tab.locator("#fallback-guess .bucket")
    expect(bucket).to_be_visible()
    assert bucket.evaluate("e => getComputedStyle(e).fontSize") < "30px"
    assert log.problems() == []


# --- the camera -----------------------------------------------------------------------------


def test_webcam_asks_first_then_sends_one_still_frame(watched_page, live_url):
    from playwright.sync_api import expect

    tab, log = watched_page
    tab.context.grant_permissions(["camera"], origin=live_url)
    tab.goto(f"{live_url}/")
    sent = uploads(tab)
    tab.click("#webcam-button")
    expect(tab.locator("#webcam")).to_contain_text("only when you press")
    assert tab.evaluate("document.getElementById('webcam-video').srcObject") is None
    tab.click("#webcam-start")
    tab.wait_for_function("() => document.getElementById('webcam-video').videoWidth > 0")
    tab.click("#webcam-snap")
    tab.wait_for_url(RESULT_URL)
    tab.wait_for_selector("#result-title")
    assert len(sent) == 1
    # The camera is off again: no live track is left.
    assert tab.evaluate(
        "document.getElementById('webcam-video') === null || "
        "document.getElementById('webcam-video').srcObject === null"
    )
    assert log.problems() == []


# --- without scripts, errors, dark mode, accessibility ----------------------------------------


def test_the_form_works_without_javascript_and_back_never_resubmits(
    chromium_browser, live_url, tmp_path
):
    context = chromium_browser.new_context(viewport=VIEWPORT, java_script_enabled=False)
    try:
        tab = context.new_page()
        log = _watch(tab)
        photo = face_photo(tmp_path / "plain.jpg", 30)
        tab.goto(f"{live_url}/")
        tab.set_input_files("#image-input", str(photo))
        methods: list[str] = []
        tab.on("request", lambda r: r.resource_type == "document" and methods.append(r.method))
        submit(tab)
        check_result(read_result(tab), api_prediction(tab, live_url, photo))
        result_url = tab.url
        tab.go_back()
        tab.wait_for_url(f"{live_url}/")
        tab.go_forward()
        tab.wait_for_url(result_url)
        tab.reload()
        check_result(read_result(tab), api_prediction(tab, live_url, photo))
        assert methods.count("POST") == 1  # one post; Back, Forward and reload are GETs
        # An example needs no file either.
        tab.goto(f"{live_url}/")
        try_example(tab, "grace-hopper")
        assert tab.inner_text("#result-title").startswith("1 face: ")
        assert log.problems() == []
    finally:
        context.close()


def test_error_page_carries_the_form(chromium_browser, live_url, tmp_path):
    from playwright.sync_api import expect

    context = chromium_browser.new_context(viewport=VIEWPORT, java_script_enabled=False)
    try:
        tab = context.new_page()
        note = tmp_path / "photo.jpg"
        note.write_text("this is text, not a photo")
        tab.goto(f"{live_url}/")
        tab.set_input_files("#image-input", str(note))
        tab.click("#submit-button")
        expect(tab.locator("h1")).to_have_text("Sorry, that did not work")
        expect(tab.locator("#error-message")).to_contain_text("BMP")
        tab.set_input_files("#image-input", str(face_photo(tmp_path / "f.jpg")))
        submit(tab)
    finally:
        context.close()


def test_dark_mode_follows_the_system(chromium_browser, live_url):
    context = chromium_browser.new_context(viewport=VIEWPORT, color_scheme="dark")
    try:
        tab = context.new_page()
        log = _watch(tab)
        tab.goto(f"{live_url}/")
        background = tab.evaluate("getComputedStyle(document.documentElement).backgroundColor")
        red, green, blue = (int(v) for v in re.findall(r"\d+", background)[:3])
        assert red + green + blue < 150, background
        assert axe_violations(tab) == []
        try_example(tab, "group")
        wait_for_photo(tab)
        assert axe_violations(tab) == []
        assert log.problems() == []
    finally:
        context.close()


@pytest.mark.slow
def test_axe_finds_nothing_serious_on_start_result_no_face_and_error_pages(
    chromium_browser, live_url, tmp_path
):
    for viewport in (VIEWPORT, PHONE):
        context = chromium_browser.new_context(viewport=viewport)
        try:
            tab = context.new_page()
            tab.goto(f"{live_url}/")
            assert axe_violations(tab) == [], "start page"
            try_example(tab, "group")
            wait_for_photo(tab)
            assert axe_violations(tab) == [], "result page"
            tab.goto(f"{live_url}/")
            try_example(tab, "no-face")
            assert axe_violations(tab) == [], "no-face page"
            tab.click("#fallback-guess > summary")
            assert axe_violations(tab) == [], "no-face page, guess shown"
            tab.goto(f"{live_url}/result?r=damaged")
            assert tab.locator("h1").inner_text() == "Sorry, that did not work"
            assert axe_violations(tab) == [], "error page"
            tab.goto(f"{live_url}/api")
            assert axe_violations(tab) == [], "API page"
        finally:
            context.close()
