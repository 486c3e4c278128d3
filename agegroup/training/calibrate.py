"""Counter the training prior and calibrate: fitted on validation, written into the weights.

    python -m agegroup.training.calibrate runs/r50_age96/export.pkl --out model/export.pkl

Two corrections of the network's last layer, both chosen on the validation part of the
training split (never the test split):

* **Logit adjustment** (Menon et al. 2021): UTKFace has five times as many faces of 21-30 as
  of 11-20, and a network trained on it says 21-30 whenever in doubt. Subtracting
  ``tau * log(prior of the age's group)`` from every age's logit removes that pull; ``tau`` is
  the value, from a small grid, with the best mean of accuracy and balanced accuracy.
* **Temperature scaling** (Guo et al. 2017): dividing the logits by ``T`` keeps every ranking
  and makes the probabilities honest; ``T`` minimises the negative log-likelihood of the
  served (flip-averaged) group probabilities.

Both are a change of the last linear layer: ``W / T`` and a bias of ``-tau * log prior / T``.
The result is an ordinary exported learner, so both runtimes serve the calibrated
probabilities with no extra code.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.learner import load_learner
from PIL import Image

from agegroup.ages import AGE_CLASSES, GROUP_OF_AGE
from agegroup.buckets import BUCKETS
from agegroup.predictor import FastaiPredictor, softmax
from agegroup.training import data as utk
from agegroup.training.evaluate import compute_metrics, expected_calibration_error, predict_faces
from agegroup.training.train import export_learner, training_split

TAUS = (0.0, 0.25, 0.5, 0.75, 1.0)
TEMPERATURES = tuple(np.round(np.arange(0.5, 3.01, 0.05), 2))


def group_probabilities(
    log_probs: np.ndarray, offset: np.ndarray, temperature: float
) -> np.ndarray:
    """Groups of the adjusted, tempered age distribution (``log_probs``: ``(n, ages)``)."""
    return softmax((log_probs + offset) / temperature) @ GROUP_OF_AGE


def served(log_plain: np.ndarray, log_flipped: np.ndarray, offset: np.ndarray, t: float):
    """What the app serves: the mean of the face's and its mirror image's group probabilities."""
    return (
        group_probabilities(log_plain, offset, t) + group_probabilities(log_flipped, offset, t)
    ) / 2


def nll(probabilities: np.ndarray, truth: np.ndarray) -> float:
    return float(-np.log(np.clip(probabilities[np.arange(len(truth)), truth], 1e-12, None)).mean())


def fit(
    log_plain: np.ndarray, log_flipped: np.ndarray, truth: np.ndarray, prior: np.ndarray
) -> dict[str, Any]:
    """Choose ``tau`` then ``T`` on validation; returns them with every candidate's scores."""
    log_prior_of_age = np.log(prior) @ GROUP_OF_AGE.T  # (ages,): log prior of each age's group
    candidates = []
    for tau in TAUS:
        probabilities = served(log_plain, log_flipped, -tau * log_prior_of_age, 1.0)
        m = compute_metrics(truth, probabilities, {})
        candidates.append(
            {"tau": tau, "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"]}
        )
    best = max(candidates, key=lambda c: c["accuracy"] + c["balanced_accuracy"])
    offset = -best["tau"] * log_prior_of_age
    losses = [nll(served(log_plain, log_flipped, offset, t), truth) for t in TEMPERATURES]
    temperature = float(TEMPERATURES[int(np.argmin(losses))])
    before = served(log_plain, log_flipped, offset, 1.0)
    after = served(log_plain, log_flipped, offset, temperature)
    return {
        "tau": best["tau"],
        "temperature": temperature,
        "prior": [round(float(p), 4) for p in prior],
        "candidates": candidates,
        "validation_ece_before": round(expected_calibration_error(truth, before), 4),
        "validation_ece_after": round(expected_calibration_error(truth, after), 4),
        "offset": offset,
    }


def rewrite_last_layer(model: torch.nn.Module, offset: np.ndarray, temperature: float) -> None:
    """Replace the head's last linear layer by ``W / T`` with bias ``offset / T``."""
    head = model[1]
    last = head[-1]
    new = torch.nn.Linear(last.in_features, last.out_features, bias=True)
    with torch.no_grad():
        new.weight.copy_(last.weight.float() / temperature)
        bias = torch.as_tensor(offset, dtype=torch.float32) / temperature
        if last.bias is not None:
            bias = bias + last.bias.float() / temperature
        new.bias.copy_(bias)
    head[-1] = new


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="an exported age learner")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=utk.DEFAULT_DATA_DIR)
    parser.add_argument("--cache", type=Path, default=Path("data-cache"))
    parser.add_argument("--name", default=None, help="model name shown by the app")
    args = parser.parse_args(argv)

    predictor = FastaiPredictor(args.model, args.model.resolve().parent)
    if predictor.info.classes != AGE_CLASSES:
        raise SystemExit(f"{args.model} is not an age model")
    size = predictor.info.input_size
    images, samples, valid_idx = training_split(args.data, size, args.cache)
    fit_rows = sorted(set(range(len(samples))) - set(valid_idx))
    prior = np.bincount([samples[i].bucket for i in fit_rows], minlength=len(BUCKETS))
    prior = prior / prior.sum()
    faces = [Image.fromarray(images[i]) for i in valid_idx]
    plain, flipped = predict_faces(predictor, faces)
    truth = np.array([samples[i].bucket for i in valid_idx])
    chosen = fit(
        np.log(np.clip(plain, 1e-12, None)), np.log(np.clip(flipped, 1e-12, None)), truth, prior
    )
    offset = chosen.pop("offset")
    print(json.dumps(chosen, indent=2))

    learn = load_learner(args.model, cpu=True)
    learn.model.float()
    rewrite_last_layer(learn.model, offset, chosen["temperature"])
    name = args.name or f"resnet50-utkface-ages-{size}px"
    export_learner(learn, args.out, name=name)
    args.out.with_name(args.out.stem + "_calibration.json").write_text(
        json.dumps(
            {"source": str(args.model), "validation_faces": len(valid_idx), **chosen}, indent=2
        )
        + "\n"
    )
    print(f"wrote {args.out} (fitted on {len(valid_idx)} validation faces)")


if __name__ == "__main__":
    main()
