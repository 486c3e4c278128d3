"""The visitor's real address behind trusted proxies (ProxyFix, ``AGE_TRUSTED_PROXIES``): the
limits and gunicorn's access log use it, forged headers change nothing, and HSTS is sent on
HTTPS only."""

from __future__ import annotations

import http.client
import re
from typing import Any

import pytest

from agegroup.config import Settings
from agegroup.factory import HSTS, create_app
from testsupport.server import GunicornServer
from testsupport.uploads import MULTIPART, image_form, post


def proxied_app(settings: Settings, app: Any, hops: int, rate: str = "1/minute") -> Any:
    changed = Settings(**{**settings.__dict__, "trusted_proxies": hops, "rate_limit": rate})
    return create_app(changed, predictor=app.extensions["agegroup"].predictor)


def via(app: Any, peer: str, forwarded_for: str | None = None, proto: str | None = None) -> Any:
    """A test client whose connection comes from ``peer``, with forwarded headers if given."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = peer
    if forwarded_for is not None:
        client.environ_base["HTTP_X_FORWARDED_FOR"] = forwarded_for
    if proto is not None:
        client.environ_base["HTTP_X_FORWARDED_PROTO"] = proto
    return client


def test_without_trusted_proxies_a_forged_forwarded_for_changes_nothing(settings, app, face_jpeg):
    limited = proxied_app(settings, app, hops=0)
    assert post(via(limited, "198.51.100.20", "203.0.113.1"), face_jpeg).status_code == 200
    # A new forged address each time: still the same client, whose budget is spent.
    for forged in ("203.0.113.2", "203.0.113.3, 203.0.113.4"):
        assert post(via(limited, "198.51.100.20", forged), face_jpeg).status_code == 429
    # Nor does a forged scheme: no HSTS over plain HTTP.
    plain = via(limited, "198.51.100.21", proto="https").get("/")
    assert "Strict-Transport-Security" not in plain.headers


def test_behind_one_trusted_proxy_each_visitor_counts_by_its_own_address(settings, app, face_jpeg):
    limited = proxied_app(settings, app, hops=1)
    proxy = "10.0.0.5"  # every request comes through the same proxy
    assert post(via(limited, proxy, "203.0.113.10"), face_jpeg).status_code == 200
    assert post(via(limited, proxy, "203.0.113.11"), face_jpeg).status_code == 200
    assert post(via(limited, proxy, "203.0.113.10"), face_jpeg).status_code == 429
    # A visitor who sends its own X-Forwarded-For: the proxy appends the address it saw, and
    # only that last entry is believed, so the forged one buys no new budget.
    forged = via(limited, proxy, "198.51.100.99, 203.0.113.10")
    assert post(forged, face_jpeg).status_code == 429
    assert post(via(limited, proxy, "198.51.100.99"), face_jpeg).status_code == 200


def test_hsts_is_sent_on_https_only(settings, app):
    direct = proxied_app(settings, app, hops=0, rate="off")
    assert (
        direct.test_client()
        .get("/", base_url="https://localhost")
        .headers["Strict-Transport-Security"]
        == HSTS
    )
    assert "Strict-Transport-Security" not in direct.test_client().get("/").headers
    behind = proxied_app(settings, app, hops=1, rate="off")
    secure = via(behind, "10.0.0.5", "203.0.113.10", proto="https").get("/healthz")
    assert secure.headers["Strict-Transport-Security"] == HSTS
    plain = via(behind, "10.0.0.5", "203.0.113.10", proto="http").get("/healthz")
    assert "Strict-Transport-Security" not in plain.headers


def test_trusted_proxies_come_from_the_environment(monkeypatch):
    monkeypatch.delenv("AGE_TRUSTED_PROXIES", raising=False)
    assert Settings.from_env().trusted_proxies == 0
    monkeypatch.setenv("AGE_TRUSTED_PROXIES", "1")
    assert Settings.from_env().trusted_proxies == 1
    monkeypatch.setenv("AGE_TRUSTED_PROXIES", "-1")
    with pytest.raises(ValueError, match="AGE_TRUSTED_PROXIES"):
        Settings.from_env()


# --- under gunicorn -------------------------------------------------------------------------


def request(
    server: GunicornServer, path: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` (or POST ``body`` as multipart) with ``headers``, on its own connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        if body is not None:
            headers = {**headers, "Content-Type": MULTIPART}
        conn.request("POST" if body else "GET", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def access_lines(server: GunicornServer, path: str) -> list[str]:
    return [line for line in server.log_text().splitlines() if f'"GET {path}"' in line]


@pytest.mark.parametrize("hops", [0, 1])
def test_gunicorns_access_log_shows_the_address_the_app_uses(onnx_dir, tmp_path, hops, face_jpeg):
    env = {"AGE_TRUSTED_PROXIES": str(hops), "AGE_RATE_LIMIT": "1/minute", "AGE_RUNTIME": "onnx"}
    forwarded = {"X-Forwarded-For": "198.51.100.66, 203.0.113.77", "X-Forwarded-Proto": "https"}
    with GunicornServer(onnx_dir / "export.pkl", tmp_path / "gunicorn.log", env) as server:
        status, headers, _ = request(server, "/api?visit=1", forwarded)
        assert status == 200
        first = request(server, "/api/predict", forwarded, image_form(face_jpeg))[0]
        again = request(server, "/api/predict", forwarded, image_form(face_jpeg))[0]
        other = request(
            server, "/api/predict", {"X-Forwarded-For": "203.0.113.78"}, image_form(face_jpeg)
        )[0]
        [line] = access_lines(server, "/api")
    if hops:
        # The visitor the proxy saw (the last entry), not the proxy, nor what the visitor sent.
        assert re.match(r"203\.0\.113\.77 ", line), line
        assert headers.get("Strict-Transport-Security") == HSTS
        assert (first, again, other) == (200, 429, 200)
    else:
        # Nobody is trusted: the connection's own address, and gunicorn ignores the scheme too.
        assert re.match(r"127\.0\.0\.1 ", line), line
        assert "Strict-Transport-Security" not in headers
        assert (first, again, other) == (200, 429, 429)
    assert "visit=1" not in server.log_text()  # the path only, never the query string
