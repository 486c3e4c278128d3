"""The configured model and face detector, loaded once per process: for the app factory, the
Python API (``agegroup.pipeline``) and the tools. No Flask here."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from agegroup.config import Settings
from agegroup.errors import ModelUnavailable
from agegroup.predictor import Predictor

if TYPE_CHECKING:
    from agegroup.faces import FaceDetector

log = logging.getLogger("agegroup")


def load_predictor(settings: Settings) -> Predictor:
    """Load the configured model once, as served: mixed with age-v1 when its calibration file
    gives age-v1 a share (``agegroup.agev1``); raises ``ModelUnavailable`` with a clear reason."""
    from agegroup.agev1 import as_served

    return as_served(load_network(settings))


def load_network(settings: Settings) -> Predictor:
    """The configured runtime's network (fastai learner or ONNX twin), calibrated."""
    if settings.runtime == "onnx":
        from agegroup.onnx_runtime import OnnxPredictor, onnx_model_path

        if settings.onnx_precision not in ("float", "int8"):
            raise ModelUnavailable(
                f"AGE_ONNX_PRECISION must be 'float' or 'int8', not {settings.onnx_precision!r}."
            )

        return OnnxPredictor(onnx_model_path(settings), settings.model_dir, settings.torch_threads)
    if settings.runtime != "fastai":
        raise ModelUnavailable(f"AGE_RUNTIME must be 'fastai' or 'onnx', not {settings.runtime!r}.")
    from agegroup.predictor import FastaiPredictor

    return FastaiPredictor(settings.model_path, settings.model_dir, settings.torch_threads)


def load_detector(settings: Settings) -> FaceDetector:
    """The face detector ``AGE_FACE_DETECTOR`` names, aligned as ``AGE_FACE_LANDMARKS`` says.

    A landmark model that cannot be loaded is logged and faces are cropped by their boxes:
    the app still answers, slightly less precisely framed.
    """
    from agegroup.faces import FaceDetector, make_detector

    threads, pixels = settings.torch_threads, settings.detect_pixels
    try:
        return make_detector(
            settings.face_detector, settings.face_landmarks, threads, detect_pixels=pixels
        )
    except (OSError, RuntimeError) as exc:
        log.error("face landmarks not loaded (%s); faces are cropped by their boxes", exc)
        return FaceDetector(
            kind=settings.face_detector, keypoints=False, threads=threads, detect_pixels=pixels
        )
