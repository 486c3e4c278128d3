"""Short form of tools/soak.py against a real gunicorn, plus slow clients that hold threads."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from agegroup.config import PROJECT_ROOT
from testsupport.server import GunicornServer
from testsupport.uploads import MULTIPART, image_form
from tools import soak

THREADS = 4
DEADLINE_S = 6  # short, so that the slow clients are cut within seconds


@pytest.fixture(scope="module")
def server(onnx_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The server as deployed: the ONNX twin of the tiny learner."""
    log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    env = {
        "AGE_RUNTIME": "onnx",
        "WEB_CONCURRENCY": "1",
        "GUNICORN_THREADS": str(THREADS),
        "GUNICORN_REQUEST_DEADLINE": str(DEADLINE_S),
    }
    with GunicornServer(onnx_dir / "export.pkl", log, env) as running:
        yield running


@pytest.mark.slow
def test_short_soak_has_no_errors_no_drops_no_cross_talk(server) -> None:
    report = soak.run_soak(server, requests=240, clients=4, photo_count=16)
    assert soak.failures(report, max_growth_mb=40) == [], json.dumps(report, indent=1)
    assert report["statuses"].get("200", 0) > 100
    assert set(report["statuses"]) >= {"200", "413", "415"}
    print(json.dumps({k: v for k, v in report.items() if k != "unexpected"}))


def test_responses_from_gunicorn_reveal_no_versions(server) -> None:
    status, headers, body = server.request("POST", "/api/predict", image_form(b"not an image"))
    assert status == 415
    assert not any(ch.isdigit() for ch in headers.get("Server", ""))
    for needle in (b"Traceback", b"site-packages", str(PROJECT_ROOT).encode()):
        assert needle not in body


class SlowClient(threading.Thread):
    """Sends a valid request line and headers, then the body one byte at a time."""

    def __init__(self, port: int, body_size: int = 100_000) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.body_size = body_size
        self.sent = 0
        self.closed_by_server = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            head = (
                "POST /api/predict HTTP/1.1\r\nHost: localhost\r\n"
                f"Content-Type: {MULTIPART}\r\n"
                f"Content-Length: {self.body_size}\r\n\r\n"
            )
            sock.sendall(head.encode())
            while not self.stop.wait(0.2) and self.sent < self.body_size:
                try:
                    sock.sendall(b"-")
                    self.sent += 1
                    sock.settimeout(0.01)
                    if sock.recv(1024) == b"":
                        break  # the server closed its side
                except TimeoutError:
                    continue
                except OSError:
                    break
                finally:
                    sock.settimeout(5)
            else:
                return
            self.closed_by_server.set()


@pytest.mark.slow
def test_slow_clients_do_not_block_other_users(server) -> None:
    """Three clients trickling bodies hold three of the four threads; others still get answers,
    and the deadline then frees the held threads."""
    slow = [SlowClient(server.port) for _ in range(THREADS - 1)]
    for client in slow:
        client.start()
    try:
        while min(client.sent for client in slow) < 3:  # every slow body is being read
            threading.Event().wait(0.1)
        photo = soak.valid_photos(1)[0]
        answers = [
            server.request("POST", "/api/predict", image_form(photo), timeout=DEADLINE_S)[0]
            for _ in range(3)
        ]
        still_held = [not c.closed_by_server.is_set() and c.is_alive() for c in slow]
        assert answers == [200, 200, 200]
        assert all(still_held), "a slow client was cut before the others were served"
        for client in slow:
            assert client.closed_by_server.wait(DEADLINE_S + 30), "slow body never cut off"
            assert client.sent < client.body_size
    finally:
        for client in slow:
            client.stop.set()
    assert "still sending its request" in server.log_text()
    assert server.request("GET", "/healthz")[0] == 200
    assert "Traceback" not in server.log_text()
