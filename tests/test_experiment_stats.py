"""The study's statistics against hand-computed cases and scikit-learn: McNemar (exact and combined),
Holm's correction, the paired bootstrap, macro-F1 and per-class accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sr_augment.experiment import bootstrap_ci, holm, mcnemar_combined, mcnemar_exact
from sr_augment.experiment.stats import (
    accuracy_statistic,
    difference_statistic,
    macro_f1_statistic,
    per_class_accuracy,
)
from sr_augment.experiment.study import compare


def test_mcnemar_exact_matches_a_hand_computed_table():
    # 10 discordant pairs, 8 favour A: p = 2 * P(X <= 2), X ~ Binomial(10, 1/2) = 2 * 56 / 1024
    a = np.array([1] * 8 + [0] * 2 + [1] * 5 + [0] * 3, bool)
    b = np.array([0] * 8 + [1] * 2 + [1] * 5 + [0] * 3, bool)
    result = mcnemar_exact(a, b)
    assert (result["b"], result["c"]) == (8, 2)
    assert result["p"] == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert mcnemar_exact(a, a) == {"b": 0, "c": 0, "p": 1.0}


def test_mcnemar_combined_sums_the_repeats_with_continuity_correction():
    # repeats with (b, c) = (5, 1) and (3, 1): chi2 = (|8 - 2| - 1)^2 / 10 = 2.5, one degree of freedom,
    # whose survival function is erfc(sqrt(x / 2))
    result = mcnemar_combined([{"b": 5, "c": 1, "p": 0.2}, {"b": 3, "c": 1, "p": 0.6}])
    assert (result["b"], result["c"], result["chi2"]) == (8, 2, 2.5)
    assert result["p"] == pytest.approx(math.erfc(math.sqrt(2.5 / 2)))
    assert mcnemar_combined([{"b": 3, "c": 3}])["p"] == 1.0  # |b - c| - 1 < 0 counts as 0
    assert mcnemar_combined([{"b": 0, "c": 0}])["p"] == 1.0


def test_holm_adjusts_step_down_in_the_input_order():
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04 -> made non-decreasing: 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([0.02]) == [0.02]


def _pair(n=400, accuracy=0.7, a_only=15, b_only=5, seed=0):
    """Two arms' right/wrong on n images: equal except on a_only + b_only images."""
    rng = np.random.default_rng(seed)
    both = rng.random(n) < accuracy
    a, b = both.copy(), both.copy()
    wrong = np.flatnonzero(~both)
    a[wrong[:a_only]] = True
    b[wrong[a_only:a_only + b_only]] = True
    return a[None], b[None]


def test_bootstrap_intervals_match_the_normal_approximation_and_are_paired():
    a, b = _pair()
    n = a.shape[1]
    acc = bootstrap_ci(accuracy_statistic(a), n, seed=0)
    p = a.mean()
    assert acc["estimate"] == pytest.approx(p)
    assert (acc["high"] - acc["low"]) / 2 == pytest.approx(1.96 * math.sqrt(p * (1 - p) / n), rel=0.15)

    diff = bootstrap_ci(difference_statistic(a, b), n, seed=0)
    d = a[0].astype(float) - b[0]
    assert diff["estimate"] == pytest.approx((15 - 5) / n)
    assert (diff["high"] - diff["low"]) / 2 == pytest.approx(1.96 * d.std(ddof=1) / math.sqrt(n), rel=0.2)
    unpaired = 1.96 * math.sqrt(2 * p * (1 - p) / n)  # what resampling the arms independently would give
    assert (diff["high"] - diff["low"]) / 2 < unpaired / 2
    assert diff["low"] > 0  # 15 vs 5 of 400: a real, if small, difference

    assert bootstrap_ci(difference_statistic(a, b), n, seed=0) == diff  # seeded


def test_bootstrap_of_a_constant_is_that_constant():
    right, wrong = np.ones((2, 30), bool), np.zeros((2, 30), bool)
    assert bootstrap_ci(difference_statistic(right, wrong), 30) == {"estimate": 1.0, "low": 1.0, "high": 1.0}


def test_macro_f1_pools_repeats_like_scikit_learn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 200)
    predictions = np.where(rng.random((3, 200)) < 0.6, labels, rng.integers(0, 3, (3, 200)))  # class 3: rarely predicted
    expected = f1_score(np.tile(labels, 3), predictions.ravel(), average="macro", labels=range(4), zero_division=0)
    result = bootstrap_ci(macro_f1_statistic(labels, predictions, 4), 200, seed=0)
    assert result["estimate"] == pytest.approx(expected)
    assert result["low"] < expected < result["high"]
    assert bootstrap_ci(macro_f1_statistic(labels, predictions, 4), 200, seed=1) != result  # other resamples
    assert accuracy_statistic(predictions == labels)(np.arange(200)) == pytest.approx(np.mean(predictions == labels))


def test_per_class_accuracy_shows_a_class_swallowing_predictions():
    labels = np.array([0, 0, 1, 1, 2, 2])
    collapsed = np.zeros((2, 6), int)
    table = per_class_accuracy(labels, collapsed, ["a", "b", "c"])
    assert [table[c]["accuracy"] for c in "abc"] == [1.0, 0.0, 0.0]
    assert table["a"]["predicted_share"] == 1.0 and table["a"]["label_share"] == pytest.approx(1 / 3)


def test_compare_orients_differences_and_corrects_every_pair():
    labels = np.array([0, 1] * 20)
    predictions = {"LR": np.where(np.arange(40) < 10, 1 - labels, labels)[None],   # 10 wrong
                   "HR": labels[None].copy(),                                     # all right
                   "SR": np.where(np.arange(40) < 5, 1 - labels, labels)[None]}    # 5 wrong
    out = compare(labels, predictions, ["x", "y"])
    assert [(p["a"], p["b"]) for p in out["pairs"]] == [("LR", "HR"), ("LR", "SR"), ("HR", "SR")]
    lr_hr = out["pairs"][0]
    assert lr_hr["difference"]["estimate"] == pytest.approx(-10 / 40)
    assert (lr_hr["mcnemar"]["per_repeat"][0]["b"], lr_hr["mcnemar"]["per_repeat"][0]["c"]) == (0, 10)
    raw = [p["mcnemar"]["combined"]["p"] for p in out["pairs"]]
    assert [p["mcnemar"]["p_holm"] for p in out["pairs"]] == pytest.approx(holm(raw))
    assert out["summary"]["HR"]["accuracy"] == {"estimate": 1.0, "low": 1.0, "high": 1.0}
    assert out["summary"]["LR"]["confusion"] == [[15, 5], [5, 15]]
