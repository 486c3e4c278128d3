"""The evaluation metrics on hand-checked examples."""

import numpy as np

from agegroup.training.evaluate import compute_metrics


def one_hot(indices):
    probabilities = np.full((len(indices), 7), 0.01)
    probabilities[np.arange(len(indices)), indices] = 0.94
    return probabilities


def test_metrics_on_a_hand_checked_example():
    truth = [0, 0, 1, 2, 6, 6]
    pred = [0, 1, 1, 4, 6, 5]
    metrics = compute_metrics(truth, one_hot(pred), {"gender": ["m", "m", "f", "f", "m", "f"]})
    assert metrics["n"] == 6
    assert metrics["accuracy"] == round(3 / 6, 4)
    assert metrics["within_one_bucket"] == round(5 / 6, 4)  # only 2 -> 4 is two buckets off
    # recalls: bucket0 1/2, bucket1 1/1, bucket2 0/1, bucket6 1/2 -> mean over present buckets
    assert metrics["balanced_accuracy"] == round((0.5 + 1 + 0 + 0.5) / 4, 4)
    assert metrics["per_bucket"]["11-20"] == {"support": 1, "precision": 0.5, "recall": 1.0}
    assert metrics["confusion_matrix"][2][4] == 1
    assert metrics["by_group"]["gender"]["m"] == {"n": 3, "accuracy": round(2 / 3, 4)}
    assert metrics["by_group"]["gender"]["f"] == {"n": 3, "accuracy": round(1 / 3, 4)}
