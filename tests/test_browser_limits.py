"""In headless Chromium: past the per-client limit, the page's script says when to try again,
the same sentence the server sends; the signed link it got from the API opens the result.

Like tests/test_browser.py: Debian's Chromium, skipped without it unless ``REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

from agegroup.config import Settings
from agegroup.factory import create_app
from testsupport.browser import chromium_path, launch_chromium, serving


def _chromium() -> Any:
    executable = chromium_path()
    if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
        reason = f"no Chromium at {executable} (apt-get install chromium, or CHROMIUM_PATH)"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return pytest.importorskip("playwright.sync_api")


def test_past_the_limit_the_page_says_when_to_try_again(settings, app):
    playwright_api = _chromium()
    limited = Settings(**{**settings.__dict__, "rate_limit": "1/minute"})
    limited_app = create_app(limited, predictor=app.extensions["agegroup"].predictor)
    with playwright_api.sync_playwright() as playwright, serving(limited_app) as url:
        browser = launch_chromium(playwright)
        try:
            tab = browser.new_page()
            problems: list[str] = []
            tab.on("pageerror", lambda error: problems.append(str(error)))
            tab.goto(f"{url}/")
            tab.click('button.example[value="grace-hopper"]')
            # The first photo: the result under the signed link the API answered with.
            tab.wait_for_url(re.compile(r"/result\?r=\.?[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$"))
            tab.wait_for_selector("#result-title")
            # The second: refused, and said so in the page, which stays with its form ready.
            tab.go_back()
            tab.wait_for_selector('button.example[value="group"]')
            tab.click('button.example[value="group"]')
            error = tab.locator("#form-error")
            error.wait_for(state="visible")
            assert re.search(r"Please try again in \d+ seconds?\.", error.inner_text())
            assert tab.url == f"{url}/"
            assert tab.locator("#submit-button").is_enabled()
            assert problems == []
        finally:
            browser.close()
