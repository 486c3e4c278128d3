"""A client refused for its limits gets its 429 a moment later, sent by gunicorn's event loop:
no thread waits meanwhile, everybody else is answered at once, and the connection serves on."""

from __future__ import annotations

import http.client
import time

from agegroup import tarpit
from testsupport.server import GunicornServer
from testsupport.uploads import MULTIPART, image_form, post


def test_a_refusal_is_answered_after_a_moment_while_others_are_answered_at_once(
    onnx_dir, tmp_path, face_jpeg
) -> None:
    env = {"AGE_RUNTIME": "onnx", "AGE_RATE_LIMIT": "1/5seconds"}
    with GunicornServer(onnx_dir / "export.pkl", tmp_path / "gunicorn.log", env) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            assert (
                server.request("POST", "/api/predict", image_form(face_jpeg), conn=conn)[0] == 200
            )
            headers = {"Content-Type": MULTIPART}
            conn.request("POST", "/api/predict", body=image_form(face_jpeg), headers=headers)
            sent = time.monotonic()
            # Meanwhile another visitor is answered at once: no thread waits for the refusal.
            assert server.request("GET", "/healthz", timeout=5)[0] == 200
            assert time.monotonic() - sent < 0.8
            response = conn.getresponse()
            body = response.read()
            waited = time.monotonic() - sent
            assert response.status == 429 and b'"rate_limited"' in body
            assert int(response.getheader("Retry-After")) >= 1
            # Held for MAX_HOLD_S (the wait is longer), sent by the loop, which runs every second.
            assert tarpit.MAX_HOLD_S - 0.1 <= waited <= tarpit.MAX_HOLD_S + 1.5, waited
            # The connection then serves as any other.
            assert server.request("GET", "/healthz", conn=conn)[0] == 200
        finally:
            conn.close()
    assert "Traceback" not in server.log_text()


def test_outside_gunicorn_nothing_is_held(client_with, face_jpeg) -> None:
    """Flask's test client has no socket to hold an answer on: the refusal comes at once."""
    client = client_with(rate_limit="1/minute")
    assert post(client, face_jpeg).status_code == 200
    started = time.monotonic()
    refused = post(client, face_jpeg)
    assert refused.status_code == 429 and time.monotonic() - started < 1.0
