"""The ONNX twin of the exported learner: the same network as ONNX, run by onnxruntime.

A torch + fastai server with a ResNet50 needs well over 512 MB; onnxruntime runs the same
network in a fraction of that. Serving (``OnnxPredictor``) imports neither torch nor fastai.
The twin is written, once, where the learner was trained, by ``agegroup.training.onnx_export``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from agegroup.calibration import load_calibration
from agegroup.config import Settings
from agegroup.errors import ModelUnavailable
from agegroup.predictor import (
    ModelInfo,
    check_model_path,
    check_vocab,
    file_sha256,
    probabilities_of,
)
from agegroup.preprocess import IMAGENET_MEAN, IMAGENET_STD, to_model_input

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "logits"

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(1, 1, 1, 3)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(1, 1, 1, 3)


INT8_SUFFIX = ".int8.onnx"


def int8_path_of(twin: Path) -> Path:
    """Where the int8 version of a twin lives: ``export.onnx`` -> ``export.int8.onnx``."""
    return twin.with_name(twin.stem + INT8_SUFFIX)


def onnx_model_path(settings: Settings) -> Path:
    """The twin that ``settings`` serve: ``export.pkl`` -> ``export.onnx``, or its int8
    version (``export.int8.onnx``) with ``AGE_ONNX_PRECISION=int8``."""
    twin = settings.model_path.with_suffix(".onnx")
    return int8_path_of(twin) if settings.onnx_precision == "int8" else twin


def learner_path_of(onnx_path: Path, meta: dict[str, str]) -> Path:
    """The ``export.pkl`` a twin (float or int8) was made from, named in its metadata."""
    return onnx_path.with_name(meta.get("source_name") or onnx_path.stem + ".pkl")


def to_batch(faces: Sequence[Image.Image], size: int) -> np.ndarray:
    """Faces -> the normalised float32 NCHW batch fastai builds (ToTensor, /255, Normalize)."""
    pixels = np.stack([np.asarray(to_model_input(face, size), dtype=np.uint8) for face in faces])
    batch = (pixels.astype(np.float32) / np.float32(255.0) - _MEAN) / _STD
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


class OnnxPredictor:
    """``export.onnx`` run by onnxruntime on the CPU; same interface as ``FastaiPredictor``."""

    def __init__(
        self, path: Path, model_dir: Path, threads: int = 0, calibrated: bool = True
    ) -> None:
        resolved = check_model_path(path, model_dir)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(0, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning pool threads would burn a shared host's small CPU share between requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # The arena keeps the largest batch's buffers forever; without it memory stays flat.
        options.enable_cpu_mem_arena = False
        # "Extended" rather than "all": the NCHWc layout pass of "all" keeps a second copy of
        # the ResNet50 weights (+45 MB peak) to save ~5 ms per face; memory is the scarce part.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        try:
            session = ort.InferenceSession(
                str(resolved), options, providers=["CPUExecutionProvider"]
            )
            meta = dict(session.get_modelmeta().custom_metadata_map)
            vocab = json.loads(meta["vocab"])
            input_size = int(meta["input_size"])
            stats = (json.loads(meta["mean"]), json.loads(meta["std"]))
        except Exception as exc:
            log.error("loading %s failed: %r", path, exc)
            raise ModelUnavailable(
                f"The model file {path.name} could not be loaded (see the server log)."
            ) from exc
        classes = check_vocab(vocab)
        if not np.allclose(stats, (IMAGENET_MEAN, IMAGENET_STD)):
            raise ModelUnavailable(
                f"{path.name} was made for another normalisation (mean, std {stats}) than the "
                "ImageNet statistics this runtime applies."
            )
        learner = learner_path_of(resolved, meta)
        _check_source(resolved, learner, meta)
        self._session = session
        self.precision = meta.get("precision", "float")
        # The learner the twin was made from (its sha256 is in the twin's metadata).
        self.calibration = (
            load_calibration(learner, lambda: meta.get("source_sha256", ""), len(classes))
            if calibrated
            else None
        )
        self.info = ModelInfo(
            name=meta.get("agegroup_name", resolved.stem),
            version=meta.get("agegroup_version", "unknown"),
            input_size=input_size,
            classes=classes,
        )

    def predict(self, faces: Sequence[Image.Image]) -> np.ndarray:
        """Preprocess like the learner, run the network, softmax in float64."""
        if not faces:
            return np.zeros((0, len(self.info.classes)), dtype=np.float64)
        batch = to_batch(faces, self.info.input_size)
        (logits,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        return probabilities_of(np.asarray(logits, dtype=np.float64), self.calibration)


def _check_source(onnx_path: Path, source: Path, meta: dict[str, str]) -> None:
    """Refuse a twin made from another ``export.pkl`` than the one beside it (a stale file)."""
    expected = meta.get("source_sha256")
    if expected and source.is_file() and file_sha256(source) != expected:
        raise ModelUnavailable(
            f"{onnx_path.name} was not made from the {source.name} beside it; run "
            f"`python -m agegroup.training.onnx_export {source}` to rebuild it"
            + (" and `python -m agegroup.training.quantize`." if meta.get("precision") else ".")
        )
