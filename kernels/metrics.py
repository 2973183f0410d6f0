"""The one AUC engine (numpy only, so kernels and the toolkit share it).

In:  binary labels and scores (array-likes of equal length).
Out: exact ROC AUC, rank based (Mann-Whitney U), ties counted as one half as scikit-learn does.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x` with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = xs.size
    boundaries = np.flatnonzero(np.diff(xs)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [n]))
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(n, dtype=float)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Exact ROC AUC; NaN when only one class is present."""
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(y_score, dtype=float).ravel()
    if y.size != s.size:
        raise ValueError(f"auc: {y.size} labels but {s.size} scores")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = midranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
