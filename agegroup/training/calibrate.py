"""Fit the correction for the training prior and the temperature, on validation.

    python -m agegroup.training.calibrate model/export.pkl    # writes model/export.calibration.json

Two corrections, both chosen on the validation part of the training split (never the test
split), written beside the model (``agegroup.calibration``), which both runtimes apply:

* **Logit adjustment** (Menon et al. 2021): UTKFace has five times as many faces of 21-30 as
  of 11-20, and a network trained on it says 21-30 whenever in doubt. Adding
  ``-tau * log(training prior of the class's group)`` to every class's log-probability takes
  that pull back; ``tau`` is the value, from a grid up to 1 (the full correction, which in
  theory minimises the balanced error), with the best balanced accuracy on validation (the
  smallest within ``TAU_TIE`` of the best): the
  accuracy the model would have if every group were equally common. The app cannot know who
  uploads, and photo sets labelled by age are not spread over the groups like UTKFace, so
  answering as if the groups were equally likely is the neutral choice; it costs accuracy on
  UTKFace's own 21-30-heavy test split (see model/MODEL.md).
* **Temperature scaling** (Guo et al. 2017): dividing by ``T`` keeps every ranking and makes
  the probabilities honest; ``T`` minimises the expected calibration error (15 bins) of the
  served (flip-averaged) group probabilities, with every group weighing the same
  (``balanced_weights``), as the prior correction assumes.

Works for age models (classes are ages, grouped by ``GROUP_OF_AGE``) and group models.

``--agev1-share S``: the app mixes that share of age-v1's answer into the network's
(``agegroup.agev1``), and both corrections are fitted on the mixed answers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agegroup.ages import group_matrix
from agegroup.buckets import BUCKETS
from agegroup.calibration import Calibration, calibration_path
from agegroup.predictor import FastaiPredictor, file_sha256, probabilities_of
from agegroup.training import data as utk
from agegroup.training.evaluate import predict_faces
from agegroup.training.learner import training_split
from agegroup.training.metrics import (
    balanced_weights,
    compute_metrics,
    expected_calibration_error,
)

TAUS = (0.0, 0.25, 0.5, 0.75, 1.0)
# Balanced accuracies on validation (1,934 faces) this close are the same: of such taus the
# weakest correction is kept, which gives up less of the network's plain accuracy.
TAU_TIE = 0.002
TEMPERATURES = tuple(float(t) for t in np.round(np.arange(0.5, 3.01, 0.05), 2))


def served(
    log_plain: np.ndarray, log_flipped: np.ndarray, groups: np.ndarray, calibration: Calibration
) -> np.ndarray:
    """What the app serves: the mean of the calibrated face's and mirror's group probabilities."""
    plain = probabilities_of(log_plain, calibration) @ groups
    return (plain + probabilities_of(log_flipped, calibration) @ groups) / 2


def weakest_best_tau(candidates: list[dict[str, float]]) -> float:
    """The smallest tau whose balanced accuracy is within ``TAU_TIE`` of the best one."""
    best = max(c["balanced_accuracy"] for c in candidates)
    return min(c["tau"] for c in candidates if c["balanced_accuracy"] >= best - TAU_TIE)


def fit(
    log_plain: np.ndarray,
    log_flipped: np.ndarray,
    truth: np.ndarray,
    prior: np.ndarray,
    groups: np.ndarray,
    source_sha256: str = "",
) -> tuple[Calibration, dict[str, Any]]:
    """Choose ``tau`` then ``T`` on validation; the calibration and a report of every try."""
    log_prior = groups @ np.log(prior)  # (classes,): log prior of each class's group

    def calibration(tau: float, temperature: float) -> Calibration:
        return Calibration(tuple(float(v) for v in -tau * log_prior), temperature, source_sha256)

    candidates = []
    for tau in TAUS:
        probabilities = served(log_plain, log_flipped, groups, calibration(tau, 1.0))
        m = compute_metrics(truth, probabilities, {})
        candidates.append(
            {"tau": tau, "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"]}
        )
    tau = weakest_best_tau(candidates)
    # T by the calibration error the issue measures (15 bins) on validation, every group
    # weighing the same; the negative log-likelihood's choice made it worse there.
    weights = balanced_weights(truth)
    errors = [
        expected_calibration_error(
            truth, served(log_plain, log_flipped, groups, calibration(tau, t)), weights=weights
        )
        for t in TEMPERATURES
    ]
    temperature = TEMPERATURES[int(np.argmin(errors))]
    before = served(log_plain, log_flipped, groups, calibration(0.0, 1.0))
    after = served(log_plain, log_flipped, groups, calibration(tau, temperature))
    report = {
        "tau": tau,
        "temperature": temperature,
        "prior": [round(float(p), 4) for p in prior],
        "candidates": candidates,
        "validation_faces": len(truth),
        "validation_ece_before": round(expected_calibration_error(truth, before), 4),
        "validation_ece_after": round(expected_calibration_error(truth, after), 4),
        "validation_balanced_ece_before": round(
            expected_calibration_error(truth, before, weights=weights), 4
        ),
        "validation_balanced_ece_after": round(
            expected_calibration_error(truth, after, weights=weights), 4
        ),
    }
    return calibration(tau, temperature), report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="an exported learner, e.g. model/export.pkl")
    parser.add_argument("--data", type=Path, default=utk.DEFAULT_DATA_DIR)
    parser.add_argument("--cache", type=Path, default=Path("data-cache"))
    parser.add_argument(
        "--agev1-share",
        type=float,
        default=0.0,
        help="share of age-v1's age distribution mixed into the served answer (age models)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.agev1_share < 1:
        parser.error("--agev1-share must lie in [0, 1)")

    predictor = FastaiPredictor(args.model, args.model.resolve().parent, calibrated=False)
    images, samples, valid_idx = training_split(args.data, predictor.info.input_size, args.cache)
    fit_rows = sorted(set(range(len(samples))) - set(valid_idx))
    prior = np.bincount([samples[i].bucket for i in fit_rows], minlength=len(BUCKETS))
    faces = [Image.fromarray(images[i]) for i in valid_idx]
    plain, flipped = predict_faces(predictor, faces)
    if args.agev1_share > 0:  # the served answer is the mix, calibrated as a whole
        from agegroup.agev1 import AgeV1

        teacher_plain, teacher_flipped = predict_faces(AgeV1(), faces)
        plain = (1 - args.agev1_share) * plain + args.agev1_share * teacher_plain
        flipped = (1 - args.agev1_share) * flipped + args.agev1_share * teacher_flipped
    calibration, report = fit(
        np.log(np.clip(plain, 1e-300, None)),
        np.log(np.clip(flipped, 1e-300, None)),
        np.array([samples[i].bucket for i in valid_idx]),
        prior / prior.sum(),
        group_matrix(predictor.info.classes),
        file_sha256(args.model),
    )
    print(json.dumps(report, indent=2))
    calibration = dataclasses.replace(calibration, agev1_share=args.agev1_share)
    out = calibration_path(args.model)
    out.write_text(json.dumps({**calibration.to_json(), "fit": report}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
