"""Shared fixtures: a tiny but real exported fastai learner, the app and its test client.

The helpers behind them live in the ``testsupport`` package, which the tools use too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agegroup.config import Settings
from agegroup.factory import create_app
from testsupport import images
from testsupport.learner import export_tiny_learner


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    export_tiny_learner(folder / "export.pkl")
    return folder


@pytest.fixture(scope="session")
def lean_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the tiny learner and its ONNX twin."""
    from agegroup.training.onnx_export import export_onnx

    folder = tmp_path_factory.mktemp("lean")
    shutil.copy(model_dir / "export.pkl", folder / "export.pkl")
    export_onnx(folder / "export.pkl")
    return folder


@pytest.fixture(scope="session")
def settings(model_dir: Path) -> Settings:
    return Settings(model_path=model_dir / "export.pkl", model_dir=model_dir, max_upload_mb=1)


@pytest.fixture(scope="session")
def app(settings: Settings):
    app = create_app(settings)
    app.config["TESTING"] = True
    return app


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture()
def face_jpeg() -> bytes:
    return images.face_jpeg()
