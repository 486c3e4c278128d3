"""The evaluation metrics on hand-checked examples."""

import numpy as np
import pytest

from agegroup.training.metrics import compute_metrics


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
    # m: faces 0, 1, 4 (truth 0, 0, 6): group 0 recalled 1 of 2, group 6 1 of 1.
    assert metrics["by_group"]["gender"]["m"] == {
        "n": 3,
        "accuracy": round(2 / 3, 4),
        "balanced_accuracy": round((0.5 + 1) / 2, 4),
    }
    # f: faces 2, 3, 5 (truth 1, 2, 6): recalled 1, 0, 0.
    assert metrics["by_group"]["gender"]["f"] == {
        "n": 3,
        "accuracy": round(1 / 3, 4),
        "balanced_accuracy": round(1 / 3, 4),
    }


def test_the_age_bias_per_group_of_people_is_the_signed_mean_error_in_each_band():
    from agegroup.training.metrics import bias_table

    truth = [0, 1, 3, 4, 6, 6]
    ages = [5, 15, 35, 45, 70, 80]
    estimated = [9.0, 17.0, 33.0, 40.0, 60.0, 76.0]
    metrics = compute_metrics(
        truth, one_hot(truth), {"race": ["A", "A", "A", "B", "B", "B"]}, ages, estimated
    )
    a = metrics["by_group"]["race"]["A"]["age_bias_years"]
    b = metrics["by_group"]["race"]["B"]["age_bias_years"]
    assert a["0-20"] == {"n": 2, "years": 3.0}  # +4 and +2
    assert a["21-40"] == {"n": 1, "years": -2.0}
    assert a["41-60"] == {"n": 0, "years": None}
    assert b["41-60"] == {"n": 1, "years": -5.0}
    assert b["61+"] == {"n": 2, "years": -7.0}  # -10 and -4
    table = bias_table(metrics | {"by_group": metrics["by_group"]}, min_faces=2)
    assert "| A | +3.0 | (1 faces) | (0 faces) | (0 faces) |" in table.splitlines()
    assert "| B | (0 faces) | (0 faces) | (1 faces) | -7.0 |" in table.splitlines()


def test_calibration_error_on_a_hand_checked_example_plain_and_group_balanced():
    from agegroup.training.metrics import balanced_weights, expected_calibration_error

    # Four faces of group 0, all said with confidence 0.94, three right; one face of group 1,
    # said right with 0.94. All five fall in the same confidence bin.
    truth = [0, 0, 0, 0, 1]
    probabilities = one_hot([0, 0, 0, 1, 1])
    assert expected_calibration_error(truth, probabilities) == pytest.approx(abs(4 / 5 - 0.94))
    weights = balanced_weights(truth)
    assert weights.sum() == pytest.approx(1.0)
    assert weights[:4].sum() == pytest.approx(weights[4])  # each group weighs a half
    # Balanced: group 0 is 3/4 right, group 1 all right, each half of the weight.
    balanced = expected_calibration_error(truth, probabilities, weights=weights)
    assert balanced == pytest.approx(abs((0.5 * 3 / 4 + 0.5 * 1) - 0.94))


def test_the_summary_lists_only_the_sets_evaluated_whichever_they_are():
    from agegroup.training.evaluate import summary

    metrics = compute_metrics([0, 1, 2], one_hot([0, 1, 3]), {})
    metrics |= {"calibration_error": 0.1, "calibration_error_balanced": 0.2}
    results = {
        "model": {"name": "m", "version": "1"},
        "served_as": "flip_average",
        "served": "flip_average",  # the same setting's name in older reports, not a test set
        "tight": {"seconds": 1.0, "plain": metrics, "flip_average": metrics},
    }
    lines = summary(results).splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["tight", "tight", "recall:"]
    assert "accuracy=0.6667" in lines[1]
