"""The served model's correction for its training prior, and its temperature.

A model trained on UTKFace, where 21-30 has five times the faces of 11-20, says 21-30 whenever
in doubt. ``agegroup.training.calibrate`` fits, on the validation part of the training split,
how much of the training prior to take back (logit adjustment, Menon et al. 2021) and a
temperature that makes the probabilities honest (Guo et al. 2017), and writes them beside the
model as ``<model>.calibration.json``. Both runtimes apply it to every prediction
(``Calibration.adjust`` on the network's logits, before the softmax and the mirror-image
average), so they serve the same numbers.

The file names the sha256 of the learner it was fitted on; beside any other learner it is
refused with a clear message rather than silently applied.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agegroup.errors import ModelUnavailable

log = logging.getLogger(__name__)

SUFFIX = ".calibration.json"


def calibration_path(model_path: Path) -> Path:
    """``model/export.pkl`` and ``model/export.onnx`` share ``model/export.calibration.json``."""
    return model_path.with_name(model_path.stem + SUFFIX)


@dataclass(frozen=True)
class Calibration:
    """``softmax((logits + offsets) / temperature)`` over the model's classes.

    ``agev1_share``: the share of age-v1's age distribution mixed into the served answer
    (``agegroup.agev1.as_served``); 0 serves the network alone.
    """

    offsets: tuple[float, ...]
    temperature: float
    source_sha256: str
    agev1_share: float = 0.0

    def adjust(self, logits: np.ndarray) -> np.ndarray:
        """The corrected logits; log-probabilities work as well (softmax ignores the shift)."""
        return (np.asarray(logits, dtype=np.float64) + np.asarray(self.offsets)) / self.temperature

    def to_json(self) -> dict[str, object]:
        return {
            "offsets": list(self.offsets),
            "temperature": self.temperature,
            "source_sha256": self.source_sha256,
            "agev1_share": self.agev1_share,
        }


def load_calibration(
    model_path: Path, source_sha256: Callable[[], str], classes: int
) -> Calibration | None:
    """The calibration beside ``model_path``, checked against its learner (``source_sha256``
    gives the learner's sha256, computed only if there is a file); ``None`` if absent."""
    path = calibration_path(model_path)
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        calibration = Calibration(
            tuple(float(v) for v in saved["offsets"]),
            float(saved["temperature"]),
            str(saved["source_sha256"]),
            float(saved.get("agev1_share", 0.0)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        log.error("reading %s failed: %r", path, exc)
        raise ModelUnavailable(f"{path.name} could not be read (see the server log).") from exc
    if calibration.source_sha256 != source_sha256():
        raise ModelUnavailable(
            f"{path.name} was fitted for another learner than the one beside it; run "
            "`python -m agegroup.training.calibrate` again or remove it."
        )
    if not 0 <= calibration.agev1_share < 1:
        raise ModelUnavailable(f"{path.name}: agev1_share must lie in [0, 1).")
    if len(calibration.offsets) != classes or not calibration.temperature > 0:
        raise ModelUnavailable(f"{path.name} does not fit the model's {classes} classes.")
    return calibration
