"""The study's statistics: paired bootstrap intervals, McNemar's test, Holm's correction, per-class accuracy.

Kept apart from the training loop: these are the numbers the report's conclusions rest on, and each is
checked against a hand-computed case (or scikit-learn / scipy) in the tests.

The unit of resampling is the image. Predictions are pooled over repeats: an image tested in R repeats
holds R predictions per arm, and a bootstrap resample draws images (with all their predictions, in every
arm at once), so an interval reflects both which images the data set happens to hold and the training
noise between repeats, and differences between arms are paired by image.
"""

from __future__ import annotations

import numpy as np

N_RESAMPLES = 2000
"""Bootstrap resamples per interval (percentile method)."""


def bootstrap_ci(statistic, n: int, *, seed: int = 0, n_resamples: int = N_RESAMPLES, confidence: float = 0.95) -> dict:
    """A percentile bootstrap interval of `statistic(indices)` over `n` images, resampling image indices.

    `statistic` takes an integer index array of shape (..., n) and returns one value per leading index
    (vectorised); every arm's predictions are indexed with the same draw, which is what makes a
    difference between arms paired. Seeded: the same `seed` draws the same resamples.

    Returns {"estimate": statistic on all images, "low": ..., "high": ...}.
    """
    from scipy.stats import bootstrap

    indices = np.arange(n)
    estimate = float(statistic(indices))
    if n < 2:
        return {"estimate": estimate, "low": estimate, "high": estimate}
    result = bootstrap((indices,), lambda idx, axis=-1: statistic(idx), vectorized=True, paired=False,
                       n_resamples=n_resamples, batch=200, confidence_level=confidence, method="percentile",
                       rng=np.random.default_rng(seed))
    low, high = (float(v) for v in (result.confidence_interval.low, result.confidence_interval.high))
    if not (np.isfinite(low) and np.isfinite(high)):  # every resample gave the same value
        low = high = estimate
    return {"estimate": estimate, "low": low, "high": high}


def accuracy_statistic(correct: np.ndarray):
    """Accuracy pooled over repeats: `correct` is (repeats, images) booleans."""
    correct = np.asarray(correct, np.float64)

    def statistic(idx):
        return correct[:, idx].mean(axis=(0, -1))

    return statistic


def difference_statistic(correct_a: np.ndarray, correct_b: np.ndarray):
    """Accuracy of A minus accuracy of B, paired by image (and repeat)."""
    return accuracy_statistic(np.asarray(correct_a, np.float64) - np.asarray(correct_b, np.float64))


def macro_f1_statistic(labels: np.ndarray, predictions: np.ndarray, num_classes: int):
    """Macro-F1 of the pooled predictions ((repeats, images) class indices) against `labels` (images);
    a class with no true and no predicted image counts 0, as scikit-learn's `zero_division=0`."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)

    def statistic(idx):
        y, p = labels[idx], predictions[:, idx]
        total = 0.0
        for k in range(num_classes):
            is_pred, is_true = p == k, (y == k)[None]
            tp = np.sum(is_pred & is_true, axis=(0, -1))
            fp = np.sum(is_pred & ~is_true, axis=(0, -1))
            fn = np.sum(~is_pred & is_true, axis=(0, -1))
            denominator = 2 * tp + fp + fn
            total = total + np.divide(2.0 * tp, denominator, out=np.zeros(np.shape(tp)), where=denominator > 0)
        return total / num_classes

    return statistic


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's exact test on paired right/wrong outcomes: a two-sided binomial test on the discordant
    pairs (b = A right and B wrong, c = A wrong and B right); p = 1 when there are none."""
    from scipy.stats import binomtest

    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    p = 1.0 if b + c == 0 else float(binomtest(min(b, c), b + c, 0.5).pvalue)
    return {"b": b, "c": c, "p": p}


def mcnemar_combined(tests: list[dict]) -> dict:
    """McNemar's chi-square test with continuity correction on the discordant counts summed over repeats:
    chi2 = (|b - c| - 1)^2 / (b + c), one degree of freedom; p = 1 when there are none.

    Repeats test the same images again, so the summed counts are not independent pairs: read this p as
    optimistic, and the paired bootstrap interval as the main evidence.
    """
    from scipy.stats import chi2

    b, c = sum(t["b"] for t in tests), sum(t["c"] for t in tests)
    if b + c == 0:
        return {"b": 0, "c": 0, "chi2": 0.0, "p": 1.0}
    statistic = max(0, abs(b - c) - 1) ** 2 / (b + c)
    return {"b": b, "c": c, "chi2": float(statistic), "p": float(chi2.sf(statistic, 1))}


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order (family-wise error control for the
    pairs compared): the i-th smallest p times (m - i + 1), made non-decreasing, capped at 1."""
    order = np.argsort(pvalues, kind="stable")
    m = len(pvalues)
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def per_class_accuracy(labels: np.ndarray, predictions: np.ndarray, classes: list[str]) -> dict:
    """Per class: accuracy (recall) over the pooled predictions, and the share of all predictions that
    name the class (a class swallowing predictions shows a share far above its share of the labels)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    out = {}
    for k, name in enumerate(classes):
        mask = labels == k
        out[name] = {"accuracy": float(np.mean(predictions[:, mask] == k)) if mask.any() else float("nan"),
                     "predicted_share": float(np.mean(predictions == k)), "label_share": float(np.mean(mask))}
    return out


def confusion(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> list[list[int]]:
    """Confusion matrix (rows: true class, columns: predicted) of the pooled predictions."""
    from sklearn.metrics import confusion_matrix

    repeats = predictions.shape[0]
    return confusion_matrix(np.tile(labels, repeats), np.asarray(predictions).ravel(),
                            labels=list(range(num_classes))).tolist()


def class_weights(labels: np.ndarray, count: int) -> np.ndarray:
    """sklearn's "balanced" weights: n_samples / (n_classes * count of the class)."""
    from sklearn.utils.class_weight import compute_class_weight

    return compute_class_weight("balanced", classes=np.arange(count), y=labels).astype(np.float32)
