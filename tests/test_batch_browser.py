"""Several photos at once, end to end in a real headless Chromium: 12 files dropped (one
without a face, one not an image) go up one after another with "n of 12" announced, a 503 in
the middle is waited out as Retry-After says, the table has 12 rows with the right flags and
error, its CSV holds the JSON API's answers as ``agegroup predict`` writes them, a row opens the
full result and Back returns to the table; choosing files works too; axe finds no violations;
without scripts the section stays hidden and the form takes one photo.

The app is the real one (the tiny exported learner, the real face detector) on a loopback
port; Chromium is Debian's (see ``testsupport.browser``: skipped without it, failed under
``REQUIRE_BROWSER=1``).
"""

from __future__ import annotations

import base64
import json
import math
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agegroup.config import Settings
from agegroup.factory import create_app
from agegroup.image_formats import UNSUPPORTED
from agegroup.rows import COLUMNS, error_row, face_rows, read_rows
from testsupport.batch import NOT_A_PHOTO, photo
from testsupport.browser import axe_violations, chromium_or_skip, serving
from testsupport.uploads import MULTIPART, image_form

VIEWPORT = {"width": 1280, "height": 900}
BUSY_AT = 5  # the 5th upload is answered 503 once

# Drops files on the several-photos area as a user's drag would: a DataTransfer of Files.
DROP_FILES = """
(files) => {
  const transfer = new DataTransfer();
  for (const [name, type, b64] of files) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    transfer.items.add(new File([bytes], name, { type: type }));
  }
  const zone = document.getElementById("batch-drop");
  const fire = (type) => {
    const event = new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: transfer });
    zone.dispatchEvent(event);
    return event.defaultPrevented;
  };
  return [fire("dragenter"), fire("dragover"), fire("drop")];
}
"""
# Every text the status line announces, in order.
RECORD_STATUS = """
document.addEventListener("DOMContentLoaded", () => {
  window.statuses = [];
  const status = document.getElementById("batch-status");
  if (!status) return;
  new MutationObserver(() => window.statuses.push(status.textContent))
    .observe(status, { childList: true, characterData: true, subtree: true });
});
"""
MEDIA = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "txt": "text/plain"}


def page_percent(probability: float) -> int:
    """The percentage as the page writes it: JavaScript's Math.round rounds halves up, where
    Python's round() rounds them to even (0.185 is "19%" there, 18 here)."""
    return math.floor(probability * 100 + 0.5)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium_or_skip() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def live_url(browser: Any, settings: Settings) -> Iterator[str]:
    with serving(create_app(settings)) as url:
        yield url


@pytest.fixture()
def tab(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    # The 503 the test sends is logged by Chromium as a failed load: expected, not a problem.
    page.on(
        "console",
        lambda m: m.type == "error" and "503" not in m.text and problems.append(m.text),
    )
    page.add_init_script(RECORD_STATUS)
    yield page
    context.close()
    assert problems == []


def twelve_files() -> list[tuple[str, bytes]]:
    """11 photos (the 7th the group of five, the 9th without a face) and a text file."""
    return [photo(i) for i in range(1, 12)] + [("notes.txt", NOT_A_PHOTO)]


def api_answer(live_url: str, name: str, data: bytes) -> dict[str, Any]:
    """What the JSON API of the same server answers for the same bytes."""
    request = urllib.request.Request(
        f"{live_url}/api/predict", data=image_form(data, name), headers={"Content-Type": MULTIPART}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def batch_rows(page: Any, tmp_path: Path) -> list[dict[str, Any]]:
    """The rows of the CSV that "Download CSV" gives, read as the command's output is."""
    with page.expect_download() as download:
        page.click("#batch-csv")
    assert download.value.suggested_filename == "age-groups.csv"
    path = tmp_path / "download.csv"
    download.value.save_as(path)
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    return list(read_rows(path))


def table(page: Any) -> list[dict[str, str]]:
    return page.eval_on_selector_all(
        "#batch-table tbody tr",
        "rows => rows.map(r => ({name: r.cells[1].innerText.trim(), faces: r.cells[2].innerText,"
        " groups: r.cells[3].innerText, notes: r.cells[4].innerText, link: !!r.querySelector('a'),"
        " thumb: !!r.querySelector('img'), error: r.classList.contains('error-row')}))",
    )


@pytest.mark.slow
def test_twelve_photos_dropped_go_up_one_by_one_into_a_table_and_a_csv(
    tab: Any, live_url: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    files = twelve_files()
    answers = {
        name: api_answer(live_url, name, data) for name, data in files if name != "notes.txt"
    }
    posts: list[float] = []

    def answer_busy_once(route: Any) -> None:
        posts.append(time.monotonic())
        if len(posts) == BUSY_AT:
            body = {"error": {"code": "busy", "message": "The server is busy."}}
            route.fulfill(
                status=503,
                headers={"Retry-After": "1", "Content-Type": "application/json"},
                body=json.dumps(body),
            )
        else:
            route.continue_()

    tab.route("**/api/predict", answer_busy_once)
    tab.goto(f"{live_url}/")
    expect(tab.locator("#batch")).to_be_visible()
    payload = [
        (name, MEDIA[name.rsplit(".", 1)[1]], base64.b64encode(data).decode())
        for name, data in files
    ]
    assert tab.evaluate(DROP_FILES, payload) == [True, True, True]
    # The page-wide drop of the one-photo form did not take them.
    assert tab.eval_on_selector("#image-input", "i => i.files.length") == 0

    status = tab.locator("#batch-status")
    expect(status).to_have_text("Done: 12 of 12 photos, 1 could not be read.", timeout=180_000)
    announced = tab.evaluate("window.statuses")
    for done in range(12):
        assert f"{done} of 12 photos done." in announced
    assert "Waiting 1 s: the server is busy. 4 of 12 photos done." in announced
    assert tab.locator("#batch-status").get_attribute("role") == "status"
    expect(tab.locator("#batch-cancel")).to_be_hidden()
    assert tab.evaluate("document.getElementById('batch-progress').value") == 12

    # 11 photos sent (the text file is refused in the browser), the busy one twice, a second
    # after its 503.
    assert len(posts) == 12
    assert posts[BUSY_AT] - posts[BUSY_AT - 1] >= 0.95

    rows = table(tab)
    assert [row["name"] for row in rows] == [name for name, _ in files]
    for row, (name, _) in zip(rows, files):
        if name == "notes.txt":
            assert row["error"] and not row["link"] and row["faces"] == "—"
            assert "not supported" in row["notes"] and "unsupported_type" in row["notes"]
            continue
        faces = answers[name]["faces"]
        assert row["link"] and row["thumb"] and not row["error"]
        assert row["faces"] == str(sum(face["face_found"] for face in faces))
        for face in faces:
            assert f"{face['bucket']} {page_percent(face['confidence'])}%" in row["groups"]
        if "no-face" in name:
            assert row["faces"] == "0" and "No face found" in row["notes"]
        else:
            assert "No face found" not in row["notes"]
    assert rows[6]["faces"] == "5"  # the group

    # The CSV: the command's columns, one row per face, the API's numbers.
    expected = []
    for name, _ in files:
        if name == "notes.txt":
            expected.append(error_row(name, "unsupported_type", UNSUPPORTED))
        else:
            expected.extend(face_rows(name, answers[name]))
    assert batch_rows(tab, tmp_path) == expected
    assert len(expected) == 10 + 5 + 1

    assert axe_violations(tab, ("minor", "moderate", "serious", "critical")) == []

    # A row opens the photo's full result, with the photo; Back returns to the same table.
    tab.click("#batch-table tbody tr:nth-child(7) a")
    expect(tab.locator("#result-title")).to_have_text(
        "5 faces: " + ", ".join(face["bucket"] for face in answers[files[6][0]]["faces"])
    )
    tab.wait_for_function(
        "() => { const img = document.getElementById('photo');"
        " return img && img.complete && img.naturalWidth > 0; }"
    )
    expect(tab.locator("#download-png")).to_be_visible()  # made in the browser from the photo
    tab.go_back()
    expect(tab.locator("#batch-table tbody tr")).to_have_count(12)
    expect(status).to_have_text("Done: 12 of 12 photos, 1 could not be read.")
    assert table(tab) == rows


def test_photos_chosen_in_the_file_field_and_cancel(
    tab: Any, live_url: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    paths = []
    for i in (1, 2, 3, 4, 5, 6):
        name, data = photo(i)
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    tab.goto(f"{live_url}/")
    tab.set_input_files("#batch-files", [str(p) for p in paths[:2]])
    expect(tab.locator("#batch-status")).to_have_text("Done: 2 of 2 photos.", timeout=120_000)
    expect(tab.locator("#batch-table tbody tr")).to_have_count(2)

    # A slow server: Cancel stops the batch after the photo in flight; what was done stays.
    def slow(route: Any) -> None:
        time.sleep(1.5)
        route.continue_()

    tab.route("**/api/predict", slow)
    tab.set_input_files("#batch-files", [str(p) for p in paths])
    expect(tab.locator("#batch-status")).to_contain_text("1 of 6 photos done.", timeout=60_000)
    tab.click("#batch-cancel")
    expect(tab.locator("#batch-status")).to_contain_text("Cancelled: ", timeout=30_000)
    count = tab.locator("#batch-table tbody tr").count()
    assert 1 <= count < 6
    assert tab.locator("#batch-csv").is_visible()


def test_without_scripts_the_section_stays_hidden(browser: Any, live_url: str) -> None:
    context = browser.new_context(viewport=VIEWPORT, java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(f"{live_url}/")
        assert page.locator("#batch").is_hidden()
        assert page.locator("#image-input").is_visible()
    finally:
        context.close()
