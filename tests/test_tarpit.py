"""A client refused for its limits waits on its keep-alive connection: gunicorn reads its next
request only when its ``Retry-After`` has passed, while everybody else is answered at once."""

from __future__ import annotations

import http.client
import time

from agegroup import tarpit
from testsupport.server import GunicornServer
from testsupport.uploads import image_form


def test_a_refused_keep_alive_connection_is_read_again_only_after_retry_after(
    onnx_dir, tmp_path, face_jpeg
) -> None:
    env = {"AGE_RUNTIME": "onnx", "AGE_RATE_LIMIT": "1/3seconds"}
    with GunicornServer(onnx_dir / "export.pkl", tmp_path / "gunicorn.log", env) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            assert (
                server.request("POST", "/api/predict", image_form(face_jpeg), conn=conn)[0] == 200
            )
            status, headers, _ = server.request(
                "POST", "/api/predict", image_form(face_jpeg), conn=conn
            )
            refused_at = time.monotonic()
            assert status == 429
            wait = int(headers["Retry-After"])
            assert 1 <= wait <= 3

            # The next request on that connection is sent now, but read only after the wait:
            # another visitor meanwhile is answered at once (no thread waits for the held one).
            conn.request("GET", "/healthz")
            started = time.monotonic()
            assert server.request("GET", "/healthz", timeout=5)[0] == 200
            assert time.monotonic() - started < 0.5
            response = conn.getresponse()
            response.read()
            held_s = time.monotonic() - refused_at
        finally:
            conn.close()
        assert response.status == 200
        # Released by the worker's loop, which runs at least once a second.
        assert wait - 0.2 <= held_s <= wait + 1.5, held_s

        # Held, the connection still goes when its client goes; a fresh connection is answered.
        assert server.request("POST", "/api/predict", image_form(face_jpeg))[0] == 200
    assert "Traceback" not in server.log_text()


def test_a_hold_lasts_at_most_the_longest_hold() -> None:
    class Sock:  # a stand-in socket: weakly referenced, as gunicorn's are
        pass

    sock = Sock()
    tarpit.hold({"gunicorn.socket": sock}, 3600)
    release = tarpit.release_time(sock)
    assert release is not None
    assert release - time.monotonic() <= tarpit.MAX_HOLD_S
    assert tarpit.release_time(sock) is None  # taken once
