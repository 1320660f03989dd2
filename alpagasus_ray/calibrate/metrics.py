"""How far a judge's scores agree with reference labels: ROC AUC, Spearman, the confusion
table at a threshold, and bootstrap confidence intervals.

Written on numpy rather than imported from scikit-learn and scipy, which would be two
heavy dependencies for a few lines each; `tests/test_calibrate.py` checks every number
against theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    counts = np.diff(np.r_[first, len(x)])
    mean_rank = first + (counts + 1) / 2.0
    ranks = np.empty(len(x))
    ranks[order] = mean_rank[group]
    return ranks


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The chance that a positive row scores above a negative one (ties count half): the
    Mann-Whitney U over both counts; NaN without both classes."""
    pos = int(labels.sum())
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    u = average_ranks(scores)[labels].sum() - pos * (pos + 1) / 2.0
    return float(u / (pos * neg))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) as the threshold falls from above the
    highest score through each distinct score."""
    cuts = np.unique(scores)[::-1]
    pos, neg = max(int(labels.sum()), 1), max(int((~labels).sum()), 1)
    tpr = [0.0] + [float((labels & (scores >= c)).sum() / pos) for c in cuts]
    fpr = [0.0] + [float((~labels & (scores >= c)).sum() / neg) for c in cuts]
    return np.array(fpr), np.array(tpr)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's correlation of the average ranks; NaN when either side is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def at_threshold(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """The judge keeps score >= threshold; the reference keeps label True."""
    kept = scores >= threshold
    tp, fp = int((kept & labels).sum()), int((kept & ~labels).sum())
    fn, tn = int((~kept & labels).sum()), int((~kept & ~labels).sum())
    n = len(scores)
    return {
        "threshold": threshold,
        "confusion": {
            "kept_by_both": tp,
            "kept_by_judge_only": fp,
            "kept_by_reference_only": fn,
            "dropped_by_both": tn,
        },  # fmt: skip
        "precision": tp / (tp + fp) if tp + fp else float("nan"),
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "agreement": (tp + tn) / n if n else float("nan"),
        "keep_rate": (tp + fp) / n if n else float("nan"),
        "reference_keep_rate": (tp + fn) / n if n else float("nan"),
    }


def matching_threshold(scores: np.ndarray, rate: float) -> float:
    """The score at or above which the judge keeps the fraction of rows nearest `rate`."""
    cuts = np.unique(scores)
    rates = np.array([(scores >= c).mean() for c in cuts])
    return float(cuts[int(np.argmin(np.abs(rates - rate)))])


def bootstrap(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    scores: np.ndarray,
    labels: np.ndarray,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """A percentile interval of `statistic` over resamples of the rows, with replacement;
    resamples where it is undefined (one class only) are left out."""
    rng = np.random.default_rng(seed)
    n = len(scores)
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, n, n)
        value = statistic(scores[pick], labels[pick])
        if not np.isnan(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
