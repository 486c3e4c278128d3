"""Score a weighted mix of models' saved test probabilities, before distilling from it.

    python -m agegroup.training.evaluate MODEL --sets clean degraded served --probabilities P.npz
    python -m agegroup.training.mix model_probs.npz=0.7 agev1_probs.npz=0.3

Each file (written by ``evaluate --probabilities``) holds a model's served probabilities on the
test sets; they are mixed with the given weights (they need not sum to one) and scored like a
model (``evaluate.score``) on every test set all files hold: as distributions over ages when
every part is an age model (so that the mix has an estimated age and its bias per group of
people), else summed into the seven groups first. A
mix that beats the served network tells which teachers know something it does not; only then
is a distillation run worth its hours.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from agegroup.ages import AGE_CLASSES, to_groups
from agegroup.buckets import BUCKETS
from agegroup.training import data as utk
from agegroup.training.evaluate import TEST_SETS, score
from agegroup.training.metrics import bias_table


def parse_part(text: str) -> tuple[Path, float]:
    """``PATH=WEIGHT`` (weight 1 when left out)."""
    path, _, weight = text.rpartition("=") if "=" in text else (text, "", "1")
    value = float(weight)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"the weight of {path} must be positive, not {weight}")
    return Path(path), value


def load_probabilities(
    path: Path,
) -> tuple[list[str], tuple[str, ...], dict[str, np.ndarray]]:
    """The image names, the model's classes and, per test set, the probabilities in ``path``."""
    with np.load(path) as saved:
        if "classes" not in saved or "names" not in saved:
            raise ValueError(f"{path} lacks names or classes (see evaluate --probabilities)")
        classes = tuple(str(c) for c in saved["classes"])
        sets = {t: saved[t] for t in TEST_SETS if t in saved}
        return [str(n) for n in saved["names"]], classes, sets


def mix(parts: list[tuple[Path, float]], data_dir: Path) -> dict[str, Any]:
    """The mixed probabilities' scores on every test set that all ``parts`` hold."""
    loaded = [(load_probabilities(path), weight) for path, weight in parts]
    names = loaded[0][0][0]
    for (other, _, _), _ in loaded[1:]:
        if other != names:
            raise ValueError("the files hold different test images (or another order)")
    ages = all(classes == AGE_CLASSES for (_, classes, _), _ in loaded)
    space = AGE_CLASSES if ages else BUCKETS
    common = [t for t in TEST_SETS if all(t in sets for (_, _, sets), _ in loaded)]
    if not common:
        raise ValueError("the files have no test set in common")
    by_name = {s.name: s for s in utk.list_samples(data_dir)}
    samples = [by_name[n] for n in names]
    total = sum(weight for _, weight in loaded)
    results: dict[str, Any] = {"parts": {str(p): w for p, w in parts}}
    for test in common:
        mixed = sum(
            weight * (sets[test] if ages else to_groups(sets[test], classes))
            for (_, classes, sets), weight in loaded
        )
        results[test] = score(samples, mixed / total, space)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("parts", nargs="+", type=parse_part, help="PROBABILITIES.npz[=WEIGHT]")
    parser.add_argument("--data", type=Path, default=utk.DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path, help="also write the scores here (JSON)")
    args = parser.parse_args(argv)
    try:
        results = mix(args.parts, args.data)
    except (OSError, ValueError) as exc:
        parser.exit(2, f"mix: {exc}\n")
    for test in TEST_SETS:
        if test in results:
            m = results[test]
            recalls = " ".join(f"{r['recall']:.2f}" for r in m["per_bucket"].values())
            print(
                f"{test:>8}: accuracy={m['accuracy']:.4f} within-one={m['within_one_bucket']:.4f}"
                f" balanced={m['balanced_accuracy']:.4f} ece={m['calibration_error']:.4f}"
                f" balanced-ece={m['calibration_error_balanced']:.4f} recall: {recalls}"
            )
            if "age_mae_years" in m:
                print(f"mae={m['age_mae_years']:.2f}y  age bias per group of people:")
                print(bias_table(m))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
