"""A second opinion on the faces a detector is not sure of: MTCNN's output network (ONet).

BlazeFace scores real faces and face-like clutter alike between its face threshold and its
"sure" score. ONet, a different network trained on other photos (MIT, the weights
``facenet-pytorch`` ships, converted once by ``tools/convert_mtcnn.py``), reads the middle of
the face's aligned crop and tells them apart (docs/detection.md#the-face-check).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from agegroup.config import PROJECT_ROOT
from agegroup.networks import small_network_session

MODEL_DIR = PROJECT_ROOT / "model" / "mtcnn"
MODEL_FILE = "onet.onnx"
INPUT_SIDE = 48
# ONet reads this middle share of the aligned crop (``crop_face``'s UTKFace framing), close to
# the framing of MTCNN's own faces. docs/detection.md#the-face-check
MIDDLE_SHARE = 0.85
# An unsure face is kept when ONet gives its aligned crop at least this.
# docs/detection.md#the-face-check
FACE_CHECK_SCORE = 0.5


class FaceCheck:
    """ONet in an onnxruntime session, shared by the server's threads."""

    def __init__(self, folder: Path = MODEL_DIR, threads: int = 1) -> None:
        self._session = small_network_session(Path(folder) / MODEL_FILE, threads, "face check")

    def __call__(self, crops: Sequence[Image.Image]) -> np.ndarray:
        """The probability that each aligned crop (``crop_face``'s framing) holds a face."""
        if not crops:
            return np.zeros(0, dtype=np.float32)
        return self.probabilities(np.stack([to_input(crop) for crop in crops]))

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """ONet's face probability for each of a batch of ``normalised`` 48 x 48 pictures."""
        return self._session.run(None, {"input": batch})[0]


def normalised(picture: Image.Image) -> np.ndarray:
    """An RGB picture as MTCNN's networks read it: CHW, scaled to about -1..1."""
    pixels = np.asarray(picture.convert("RGB"), dtype=np.float32)
    return ((pixels - 127.5) / 128.0).transpose(2, 0, 1)


def to_input(crop: Image.Image) -> np.ndarray:
    """ONet's input for one aligned crop: its middle, 48 x 48, ``normalised``."""
    margin = crop.width * (1 - MIDDLE_SHARE) / 2
    box = (margin, margin, crop.width - margin, crop.height - margin)
    return normalised(
        crop.convert("RGB").resize((INPUT_SIDE, INPUT_SIDE), Image.Resampling.BILINEAR, box=box)
    )
