"""Age-group detector: the runtime that predicts the age group of the faces in a photo.

``from agegroup import AgeGroupDetector`` is the Python API (``agegroup.pipeline``); the command
is ``agegroup predict`` (``agegroup.cli``). Importing the package loads nothing heavy: the
detector is imported on first use, the Flask app factory is ``agegroup.factory``, the runtimes
are ``agegroup.predictor`` (fastai) and ``agegroup.onnx_runtime`` (the lean twin), and the
gunicorn worker class is ``agegroup.gunicorn_worker``. Training lives in ``agegroup.training``;
benchmarks and other build-time tools in the top-level ``tools`` package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agegroup.pipeline import AgeGroupDetector

__all__ = ["AgeGroupDetector"]


def __getattr__(name: str) -> Any:
    # PEP 562: the API is imported when first asked for, so ``import agegroup`` stays light.
    if name == "AgeGroupDetector":
        from agegroup.pipeline import AgeGroupDetector

        return AgeGroupDetector
    raise AttributeError(f"module 'agegroup' has no attribute {name!r}")
