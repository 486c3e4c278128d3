"""The Python API: ``AgeGroupDetector``, one pipeline behind the command, the web app and tests.

    from agegroup import AgeGroupDetector

    detector = AgeGroupDetector(runtime="onnx")  # loads the model and the face detector once
    answer = detector.predict("photo.jpg")  # a path, the file's bytes or a PIL image
    for face in answer["faces"]:
        print(face["bucket"], face["confidence"], face.get("age"))

``predict`` returns the JSON API's answer as plain dicts and lists (the ``/api/predict``
structure: ``model``, ``image``, ``faces``, ``warnings``, ``elapsed_ms``; each face has ``box``,
``face_found``, ``low_resolution``, ``bucket``, ``confidence``, ``probabilities`` and, for an
age model, ``age``). ``analyze`` returns the same result as ``agegroup.analysis.Analysis``
dataclasses. A photo that cannot be used raises an ``agegroup.errors.AppError`` with the API's
error ``code`` and ``message`` (``unsupported_type``, ``corrupt_image``, ``too_large``, ...),
and a path that cannot be read raises ``UnreadableFile`` (``unreadable_file``).

The photo goes through the server's own steps: ``decode_upload`` with the server's pixel limit
and decode memory budget, then ``analysis.analyze``. Importing this module loads neither Flask
nor torch (the fastai runtime imports torch when it is chosen).
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from agegroup.analysis import Analysis, analyze
from agegroup.config import Settings
from agegroup.errors import AppError
from agegroup.images import DecodedImage, decode_upload
from agegroup.loaders import load_detector, load_predictor
from agegroup.memory_budget import ANALYSIS_BYTES_PER_PIXEL, MemoryBudget, shared_budget
from agegroup.pages import shaped_json

if TYPE_CHECKING:
    from agegroup.faces import FaceDetector
    from agegroup.predictor import ModelInfo, Predictor

Source = str | os.PathLike[str] | bytes | bytearray | memoryview | Image.Image

# Modes a PNG can hold as they are; others (CMYK, YCbCr, LAB, HSV, F) become RGB first.
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


class UnreadableFile(AppError):
    """A path that could not be read (missing, a folder, no permission)."""

    code = "unreadable_file"
    status = 400


class AgeGroupDetector:
    """The model and the face detector, loaded once; ``predict`` answers one photo at a time.

    ``runtime`` is ``"onnx"`` (the lean twin, ``export.onnx``) or ``"fastai"`` (the exported
    learner); ``None`` takes ``AGE_RUNTIME``. ``model_path`` names the exported learner
    (``export.pkl``, whose twin lies beside it) instead of ``AGE_MODEL_PATH``, and trusts its
    folder. Everything else comes from ``settings`` (default: the environment, as the server
    reads it). Raises ``ModelUnavailable`` when the model cannot be loaded. Safe to share
    between threads: the detector and the runtimes take their own locks.
    """

    def __init__(
        self,
        runtime: str | None = None,
        *,
        model_path: str | os.PathLike[str] | None = None,
        settings: Settings | None = None,
        predictor: Predictor | None = None,
        detector: FaceDetector | None = None,
    ) -> None:
        settings = settings or Settings.from_env()
        if runtime is not None:
            settings = replace(settings, runtime=runtime.strip().lower())
        if model_path is not None:
            path = Path(model_path)
            settings = replace(settings, model_path=path, model_dir=path.resolve().parent)
        self.settings = settings
        self.predictor: Predictor = predictor or load_predictor(settings)
        self.detector: FaceDetector = detector or load_detector(settings)
        self.budget: MemoryBudget = shared_budget(
            settings.decode_budget_bytes, settings.decode_wait_s
        )

    @property
    def info(self) -> ModelInfo:
        """The model's name, version, input size and classes."""
        return self.predictor.info

    def decode(self, source: Source) -> DecodedImage:
        """``source`` as the server decodes an upload: upright RGB, at most the work size."""
        settings = self.settings
        return decode_upload(
            read_source(source), settings.max_pixels, settings.work_size, self.budget
        )

    def analyze(self, source: Source) -> Analysis:
        """Every face of the photo, as dataclasses (``Analysis`` and its ``FaceResult``)."""
        started = time.perf_counter()
        decoded = self.decode(source)
        # Detection and crops need memory too: held in the budget while they run, as the
        # server does for a request.
        image = decoded.image
        with self.budget.reserve(image.width * image.height * ANALYSIS_BYTES_PER_PIXEL):
            return self.analyze_decoded(decoded, started)

    def analyze_decoded(self, decoded: DecodedImage, started: float | None = None) -> Analysis:
        """Every face of a photo already decoded (the web layer decodes and holds memory for
        the whole request itself); ``started`` is a ``time.perf_counter()`` value."""
        return analyze(decoded, self.predictor, started, self.detector)

    def answer(self, result: Analysis) -> dict[str, Any]:
        """An analysis as the JSON API answers it: probabilities rounded, in age order."""
        return shaped_json(result.to_json(self.predictor.info))

    def predict(self, source: Source) -> dict[str, Any]:
        """The JSON API's answer for a photo given as a path, its bytes or a PIL image."""
        return self.answer(self.analyze(source))


def unreadable(path: Path, error: OSError) -> UnreadableFile:
    """The error for a path that could not be opened or read."""
    return UnreadableFile(f"The file {path} cannot be read: {error.strerror or error}.")


def read_source(source: Source) -> bytes:
    """The encoded bytes of a photo given as a path, bytes or a PIL image.

    A PIL image is written as an uncompressed PNG with its EXIF data, so that it is decoded
    exactly as an upload of the same pixels would be (orientation, transparency, modes).
    """
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if isinstance(source, Image.Image):
        image = source if source.mode in _PNG_MODES else source.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, "PNG", compress_level=0, exif=source.getexif())
        return buffer.getvalue()
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise unreadable(path, exc) from exc
    raise TypeError(f"A photo is a path, bytes or a PIL image, not {type(source).__name__}.")
