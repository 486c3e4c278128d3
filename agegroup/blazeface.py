"""MediaPipe's BlazeFace face detectors, run with onnxruntime (no torch, no TFLite).

The networks are Google's ``face_detection_full_range`` and ``face_detection_short_range``
(Apache-2.0, from the npm package ``@mediapipe/face_detection``), converted once to ONNX by
``tools/convert_blazeface.py`` with a free input size: they are fully convolutional, so a
whole photo goes through in one run and every cell of the output grid is an anchor, exactly as
MediaPipe's 192 x 192 (128 x 128) grid is. Decoding follows MediaPipe's calculators for these
models: anchor centres at the cell centres, fixed anchor size, offsets in input pixels, a
sigmoid score, and six keypoints (the eyes, the tip of the nose, the mouth and the ears).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agegroup.boxes import Detections
from agegroup.config import PROJECT_ROOT
from agegroup.networks import small_network_session

MODEL_DIR = PROJECT_ROOT / "model" / "blazeface"


@dataclass(frozen=True)
class Network:
    """One BlazeFace model: its file, its output grids and the input side it was trained on."""

    file: str
    # (stride, anchors per cell) of the output grids, in the order of the output rows.
    grids: tuple[tuple[int, int], ...]
    # Input sizes must be multiples of this (the deepest stride), so padding stays "same".
    multiple: int


FULL_RANGE = Network("face_detection_full_range.onnx", ((4, 1),), 32)
SHORT_RANGE = Network("face_detection_short_range.onnx", ((8, 2), (16, 6)), 16)
NETWORKS = {"full": FULL_RANGE, "short": SHORT_RANGE}


def anchor_centres(network: Network, height: int, width: int) -> np.ndarray:
    """The ``(x, y)`` centre of every anchor for an input of ``height`` x ``width``."""
    rows = []
    for stride, per_cell in network.grids:
        ys, xs = np.mgrid[0 : height // stride, 0 : width // stride]
        centres = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], axis=1) * stride
        rows.append(np.repeat(centres, per_cell, axis=0))
    return np.concatenate(rows).astype(np.float32)


class BlazeFace:
    """A BlazeFace network in an onnxruntime session, shared by the server's threads."""

    def __init__(self, network: Network = FULL_RANGE, folder: Path = MODEL_DIR, threads: int = 1):
        self.network = network
        self._session = small_network_session(Path(folder) / network.file, threads, "BlazeFace")
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._anchors: dict[tuple[int, int], np.ndarray] = {}
        self._lock = threading.Lock()

    def anchors(self, height: int, width: int) -> np.ndarray:
        key = (height, width)
        with self._lock:
            if key not in self._anchors:
                if len(self._anchors) > 16:  # photos come in many shapes: keep a few
                    self._anchors.clear()
                self._anchors[key] = anchor_centres(self.network, height, width)
            return self._anchors[key]

    def __call__(self, pixels: np.ndarray, min_score: float) -> Detections:
        """Faces in an ``H x W x 3`` uint8 RGB array whose sides are multiples of ``multiple``."""
        height, width = pixels.shape[:2]
        m = self.network.multiple
        if height % m or width % m:
            raise ValueError(f"input sides must be multiples of {m}, got {width} x {height}")
        # Scaled to [-1, 1] into one planar buffer: no float copies of the whole photo.
        x = np.empty((1, 3, height, width), np.float32)
        np.multiply(pixels.transpose(2, 0, 1), np.float32(2 / 255), out=x[0])
        x -= 1
        outputs = dict(zip(self._outputs, self._session.run(None, {"input": x}), strict=True))
        regress = next(v for v in outputs.values() if v.shape[-1] == 16)[0]
        logits = next(v for v in outputs.values() if v.shape[-1] == 1)[0, :, 0]
        keep = np.flatnonzero(logits > np.log(min_score / (1 - min_score)))
        centres = self.anchors(height, width)[keep]
        raw = regress[keep]
        scores = 1 / (1 + np.exp(-np.clip(logits[keep], -100, 100)))
        mid = raw[:, :2] + centres
        half = raw[:, 2:4] / 2
        boxes = np.concatenate([mid - half, mid + half], axis=1)
        keypoints = raw[:, 4:].reshape(-1, 6, 2) + centres[:, None, :]
        return Detections(scores, boxes, keypoints)
