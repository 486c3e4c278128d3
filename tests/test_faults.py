"""Model faults and worker crashes: the server keeps running and says what is wrong."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from agegroup.config import Settings
from agegroup.factory import create_app
from testsupport.images import synthetic_faces
from testsupport.server import GunicornServer
from testsupport.uploads import image_bytes, image_form, post


def photo() -> bytes:
    from PIL import Image

    return image_bytes(Image.fromarray(synthetic_faces(1, 96, seed=11)[0]))


def broken_model(kind: str, good: Path, folder: Path) -> Path:
    """A model folder with a missing, truncated or foreign ``export.pkl``."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "export.pkl"
    if kind == "truncated":
        data = good.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    elif kind == "not a learner":
        target.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    elif kind == "text file":
        target.write_text("this is not a model\n")
    elif kind == "empty":
        target.write_bytes(b"")
    return target


FAULTS = ["missing", "truncated", "not a learner", "text file", "empty"]


@pytest.mark.parametrize("kind", FAULTS)
def test_a_bad_model_still_starts_and_says_so(model_dir, tmp_path, caplog, kind: str) -> None:
    folder = tmp_path / "secret-model-folder"
    path = broken_model(kind, model_dir / "export.pkl", folder)
    with caplog.at_level(logging.ERROR, logger="agegroup"):
        app = create_app(Settings(model_path=path, model_dir=folder))
    assert "no model loaded" in caplog.text
    client = app.test_client()

    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.get_json()["error"]["code"] == "model_unavailable"
    assert health.get_json()["error"]["message"]

    index = client.get("/")
    assert index.status_code == 200 and 'id="no-model"' in index.get_data(as_text=True)

    page = post(client, photo(), "/predict", "a.jpg")
    assert page.status_code == 503 and 'data-code="model_unavailable"' in page.get_data(
        as_text=True
    )
    api = post(client, photo(), "/api/predict", "a.jpg")
    assert api.status_code == 503

    for response in (health, index, page, api):
        text = response.get_data(as_text=True)
        assert str(tmp_path) not in text, "the answer reveals a server path"
        assert "Traceback" not in text and "site-packages" not in text


def outside_cases(model_dir: Path, tmp_path: Path) -> dict[str, Path]:
    allowed = tmp_path / "models"
    allowed.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(model_dir / "export.pkl", elsewhere / "export.pkl")
    (allowed / "link.pkl").symlink_to(elsewhere / "export.pkl")
    return {
        "absolute path outside": elsewhere / "export.pkl",
        "dot-dot path": allowed / ".." / "elsewhere" / "export.pkl",
        "symlink inside pointing outside": allowed / "link.pkl",
    }


@pytest.mark.parametrize(
    "case", ["absolute path outside", "dot-dot path", "symlink inside pointing outside"]
)
def test_a_model_outside_the_configured_folder_is_refused(model_dir, tmp_path, case) -> None:
    """Loading a model unpickles it, which can run code: only the trusted folder is used."""
    path = outside_cases(model_dir, tmp_path)[case]
    app = create_app(Settings(model_path=path, model_dir=tmp_path / "models"))
    health = app.test_client().get("/healthz")
    assert health.status_code == 503
    assert "outside" in health.get_json()["error"]["message"]


def inside_cases(model_dir: Path, tmp_path: Path) -> dict[str, Path]:
    """The outside cases' shapes, each ending at a model inside the folder."""
    allowed = tmp_path / "models"
    (allowed / "sub").mkdir(parents=True)
    shutil.copy(model_dir / "export.pkl", allowed / "sub" / "export.pkl")
    (allowed / "link.pkl").symlink_to(allowed / "sub" / "export.pkl")
    return {
        "absolute path inside": allowed / "sub" / "export.pkl",
        "dot-dot path staying inside": allowed / "sub" / ".." / "sub" / "export.pkl",
        "symlink inside pointing inside": allowed / "link.pkl",
    }


@pytest.mark.parametrize(
    "case",
    ["absolute path inside", "dot-dot path staying inside", "symlink inside pointing inside"],
)
def test_the_same_model_inside_the_folder_loads_and_answers(model_dir, tmp_path, case) -> None:
    path = inside_cases(model_dir, tmp_path)[case]
    client = create_app(Settings(model_path=path, model_dir=tmp_path / "models")).test_client()
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.get_json()["model"] == {"name": "tiny-test-model", "version": "0.0.1"}
    answer = post(client, photo())
    assert answer.status_code == 200
    assert answer.get_json()["model"]["name"] == "tiny-test-model"
    assert answer.get_json()["faces"][0]["probabilities"]


# --- real gunicorn ------------------------------------------------------------------------------
def test_gunicorn_without_a_model_serves_a_clear_error(tmp_path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    with GunicornServer(folder / "export.pkl", tmp_path / "gunicorn.log") as server:
        status, _, body = server.request("GET", "/healthz")
        assert status == 503 and b"model_unavailable" in body
        status, _, body = server.request("GET", "/")
        assert status == 200 and b'id="no-model"' in body
        status, _, body = server.request("POST", "/predict", image_form(photo()))
        assert status == 503 and b'data-code="model_unavailable"' in body
        assert "no model loaded" in server.log_text()


def test_a_worker_killed_mid_request_is_replaced(onnx_dir, tmp_path) -> None:
    env = {"WEB_CONCURRENCY": "1", "AGE_RUNTIME": "onnx"}
    with GunicornServer(onnx_dir / "export.pkl", tmp_path / "gunicorn.log", env) as server:
        assert server.request("GET", "/healthz")[0] == 200
        (worker,) = server.worker_pids()
        # A request whose body is still arriving when the worker dies.
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(
                b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
            )
            time.sleep(0.5)
            os.kill(worker, signal.SIGKILL)
            try:
                assert sock.recv(1024) == b"", "the killed worker's connection stays open"
            except ConnectionResetError:
                pass  # closed with unread data: a reset, which is fine
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            pids = server.worker_pids()
            if pids and pids != [worker]:
                break
            time.sleep(0.2)
        assert server.wait_until_serving(300) == 200
        status, _, body = server.request("POST", "/api/predict", image_form(photo()))
        assert status == 200 and b"probabilities" in body
        assert server.worker_pids() != [worker]
        assert "SIGKILL" in server.log_text() or "killed" in server.log_text().lower()
