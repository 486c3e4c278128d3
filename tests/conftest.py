"""Shared fixtures: a tiny but real exported fastai learner, the app, its test client, apps
with other settings, and Grace Hopper's photo.

The helpers behind them live in the ``testsupport`` package, which the tools use too.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from agegroup.config import Settings
from agegroup.factory import create_app
from testsupport import images
from testsupport.learner import export_tiny_learner


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first: spread over pytest-xdist's workers, they then run beside the
    short ones instead of after them."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    export_tiny_learner(folder / "export.pkl")
    return folder


@pytest.fixture(scope="session")
def onnx_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the tiny learner and its ONNX model."""
    from agegroup.training.onnx_export import export_onnx

    folder = tmp_path_factory.mktemp("onnx")
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


@pytest.fixture()
def client_with(settings: Settings, app) -> Callable[..., Any]:
    """``client_with(**changes)``: a test client of an app whose settings differ by ``changes``
    and that shares the session app's loaded model."""

    def make(**changes: Any) -> Any:
        other = create_app(
            replace(settings, **changes), predictor=app.extensions["agegroup"].predictor
        )
        other.config["TESTING"] = True
        return other.test_client()

    return make


@pytest.fixture(scope="session")
def grace() -> Image.Image:
    """Grace Hopper's public-domain portrait (matplotlib's sample photo, 512 x 600)."""
    cbook = pytest.importorskip("matplotlib.cbook")
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as image:
        return image.convert("RGB")


@pytest.fixture(scope="session")
def grace_crop(grace: Image.Image) -> Image.Image:
    """Grace Hopper's face cropped as UTKFace's are (200 x 200, aligned) by the default
    detector."""
    from agegroup.crops import crop_face
    from agegroup.faces import get_detector

    [box] = get_detector().detect(grace)
    return crop_face(grace, box)
