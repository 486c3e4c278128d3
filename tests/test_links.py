"""Signed result links (agegroup/links.py): only links this site made open, a valid one
renders, and with a fixed SECRET_KEY they outlive a restart."""

from __future__ import annotations

import base64
import json
import logging
import zlib
from typing import Any

import pytest
from itsdangerous import URLSafeSerializer

from agegroup.config import Settings
from agegroup.factory import create_app
from agegroup.links import FORGED_LINK, SALT, ResultLinks
from agegroup.openapi import EXAMPLE_FACE
from testsupport.uploads import post

KEY = "a fixed key of the deployment, 32+ chars"
RESULT = {
    "model": {"name": "m", "version": "1"},
    "image": {"width": 1200, "height": 800},
    "faces": [EXAMPLE_FACE | {"age": {"estimate": 61.3, "interval": [52, 70]}}],
    "warnings": [],
    "elapsed_ms": 12.0,
}


def keyed_app(settings: Settings, app: Any, key: str) -> Any:
    """A fresh app (a restart) with ``SECRET_KEY=key``, sharing the session's loaded model."""
    keyed = Settings(**{**settings.__dict__, "secret_key": key})
    return create_app(keyed, predictor=app.extensions["agegroup"].predictor)


def assert_refused(response: Any, message: str = FORGED_LINK) -> None:
    html = response.get_data(as_text=True)
    assert response.status_code == 400
    assert 'data-code="bad_result_link"' in html
    assert message in html
    assert html.count('id="upload-form"') == 1  # the form, to try a photo
    assert "about 61" not in html  # none of the link's numbers are shown


def test_a_link_the_site_made_renders_its_numbers(settings, app):
    client = keyed_app(settings, app, KEY).test_client()
    token = client.application.extensions["agegroup"].links.token(RESULT)
    page = client.get(f"/result?r={token}")
    assert page.status_code == 200
    assert "about 61, likely 52-70" in page.get_data(as_text=True)


def test_the_api_answer_carries_a_signed_link_to_its_own_numbers(client, face_jpeg):
    answer = post(client, face_jpeg).get_json()
    link = answer["result_link"]
    assert link.startswith("/result?r=")
    page = client.get(link)
    assert page.status_code == 200
    face = answer["faces"][0]
    html = page.get_data(as_text=True)
    assert f'id="predicted-bucket-1">{face["bucket"]}<' in html
    assert f"{face['confidence'] * 100:.1f}%" in html


def test_a_changed_link_is_refused(settings, app):
    client = keyed_app(settings, app, KEY).test_client()
    token = client.application.extensions["agegroup"].links.token(RESULT)
    payload, signature = token.rsplit(".", 1)
    changed = payload[:-3] + other_letter(payload[-3]) + payload[-2:]
    assert_refused(client.get(f"/result?r={changed}.{signature}"))
    assert_refused(client.get(f"/result?r={payload}.{other_letter(signature[0])}{signature[1:]}"))
    assert_refused(client.get(f"/result?r={payload}"))  # the signature cut off


def other_letter(letter: str) -> str:
    return "A" if letter != "A" else "B"


def test_a_link_signed_with_another_key_is_refused(settings, app):
    client = keyed_app(settings, app, KEY).test_client()
    forged = ResultLinks("someone else's key, just as long").token(RESULT)
    assert_refused(client.get(f"/result?r={forged}"))
    # The same serializer and key but another salt (another use of the key) is refused too.
    other_use = URLSafeSerializer(KEY, salt=SALT + ".other").dumps(RESULT)
    assert_refused(client.get(f"/result?r={other_use}"))


def test_an_unsigned_link_of_the_old_format_is_refused(client):
    """What the page's script used to build itself: raw deflate, base64url, no signature."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = packer.compress(json.dumps(RESULT).encode()) + packer.flush()
    unsigned = base64.urlsafe_b64encode(packed).decode().rstrip("=")
    assert_refused(client.get(f"/result?r={unsigned}"))


@pytest.mark.parametrize("junk", ["", "abc", "!!!!", "." * 10, "A" * 7000])
def test_junk_is_refused(client, junk):
    assert client.get(f"/result?r={junk}").status_code == 400
    assert client.get("/result").status_code == 400


def test_a_link_outlives_a_restart_with_the_same_key(settings, app):
    before = keyed_app(settings, app, KEY)
    token = before.extensions["agegroup"].links.token(RESULT)
    after = keyed_app(settings, app, KEY).test_client()
    assert after.get(f"/result?r={token}").status_code == 200
    assert_refused(
        keyed_app(settings, app, KEY + " rotated").test_client().get(f"/result?r={token}")
    )


def test_without_a_key_each_process_signs_with_its_own_and_says_so(settings, app, caplog):
    with caplog.at_level(logging.WARNING, logger="agegroup.links"):
        first = keyed_app(settings, app, "")
    assert "SECRET_KEY is not set" in caplog.text and "restart" in caplog.text
    token = first.extensions["agegroup"].links.token(RESULT)
    assert first.test_client().get(f"/result?r={token}").status_code == 200
    assert_refused(keyed_app(settings, app, "").test_client().get(f"/result?r={token}"))


def test_the_key_comes_from_the_environment_and_a_short_one_stops_the_app(
    settings, app, monkeypatch
):
    monkeypatch.setenv("SECRET_KEY", KEY)
    assert Settings.from_env().secret_key == KEY
    assert KEY not in repr(Settings.from_env())  # never in a log line that prints the settings
    with pytest.raises(ValueError, match="SECRET_KEY"):
        keyed_app(settings, app, "short")
