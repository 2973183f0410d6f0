"""Honest scoring of a blend method: in-sample OOF AUC next to nested-CV AUC.

In:  a method name and params, the OOF matrix P (n x runs), labels y and fold ids.
Out: a `BlendScore`: the in-sample blend (weights learned on all OOF rows, scored on the same
     rows, pooled and per fold) and the nested blend (for each fold k, weights learned on the
     other folds and scored on fold k), pooled over all OOF rows and per fold; and the headline.

The headline of a method that learns from the OOF labels is its nested-CV AUC pooled over the
OOF rows, like a run's OOF AUC (each fold scored by a model that never saw it, pooled); the
in-sample figure is shown beside it, labelled as such. A method that learns nothing scores the
same both ways, so its headline is the in-sample AUC. Comparisons are like with like: pooled
with pooled (`in_sample_auc` vs `nested_pooled_auc`), fold mean with fold mean
(`in_sample_fold_mean` vs `nested_auc`).

The column transform (ranks, logits, ...) is label-free, so it is taken once over all OOF rows;
only the learning is nested. Methods that learn nothing (mean, rank mean, ...) therefore score
the same both ways, and the gap between the fold means (`optimism`) is exactly the optimism of
the learning. The pooled nested AUC mixes fits as a run's pooled OOF AUC mixes its fold
models (a stacker's intercept moves between folds); the fold mean avoids that.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kernels.metrics import auc, auc_by_group
from kit.blend.methods import FittedBlend, combine, fit_transformed, learns_from_labels, method_params, transform

MIN_FOLDS_FOR_NESTED = 2
FIT_THREADS = 2  # fits run at once in `score_method`: the submitted fit and the nested folds' (sorts release the GIL)


@dataclass(frozen=True)
class BlendScore:
    """In-sample and nested-CV AUC of one method, with the blended OOF scores."""

    method: str
    fitted: FittedBlend
    in_sample_auc: float  # pooled over all OOF rows
    in_sample_fold_auc: Mapping[int, float]
    nested_fold_auc: Mapping[int, float]
    y: np.ndarray = field(repr=False)
    in_sample: np.ndarray = field(repr=False)
    nested: np.ndarray = field(repr=False)
    learned: bool = True  # whether the method learns from the OOF labels

    @property
    def nested_pooled_auc(self) -> float:
        """AUC of the nested-CV scores pooled over the OOF rows that have one."""
        ok = ~np.isnan(self.nested)
        return auc(self.y[ok], self.nested[ok]) if ok.any() else float("nan")

    @property
    def headline_scores(self) -> np.ndarray:
        """The OOF scores the headline is computed on: nested CV when the method learns, else in-sample."""
        return self.nested if self.learned else self.in_sample

    @property
    def headline_auc(self) -> float:
        """Pooled AUC of `headline_scores` (the figure reports quote)."""
        return self.nested_pooled_auc if self.learned else self.in_sample_auc

    @property
    def headline_kind(self) -> str:
        """How the headline was computed, in words for reports."""
        return "nested CV" if self.learned else "in-sample (the method learns nothing)"

    @property
    def in_sample_fold_mean(self) -> float:
        return _mean(self.in_sample_fold_auc.values())

    @property
    def nested_auc(self) -> float:
        """Mean over folds of the held-out fold AUC (NaN without at least two folds)."""
        return _mean(self.nested_fold_auc.values())

    @property
    def optimism(self) -> float:
        """In-sample minus nested AUC (fold means): how much of the in-sample score is fitted noise."""
        return self.in_sample_fold_mean - self.nested_auc


def _mean(values: Any) -> float:
    vals = [v for v in values if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def fold_aucs(y: np.ndarray, scores: np.ndarray, folds: np.ndarray) -> dict[int, float]:
    """AUC of each fold's rows (rows with NaN scores left out)."""
    ok = ~np.isnan(scores)
    if not ok.any():
        return {}
    return {int(k): g.auc for k, g in auc_by_group(y[ok], scores[ok], folds[ok]).items()}


def cross_fit(y: np.ndarray, folds: np.ndarray, fit_apply: Callable[[np.ndarray, np.ndarray], np.ndarray],
              pool: Executor | None = None) -> np.ndarray:
    """The fold loop shared by nested blending and cross-fitted calibration: for each fold k,
    ``fit_apply(train_mask, held_mask)`` learns on the other folds and returns fold k's scores.
    NaN where fewer than two folds exist or the other folds lack a class. With `pool`, the folds are
    fitted there at once (each in a copy of this context: greedy's stored paths come along)."""
    out = np.full(len(y), np.nan)
    fold_ids = np.unique(folds)
    if fold_ids.size < MIN_FOLDS_FOR_NESTED:
        return out
    todo = [k for k in fold_ids if np.unique(y[folds != k]).size >= 2]
    if pool is None:
        results = [fit_apply(folds != k, folds == k) for k in todo]
    else:
        futures = [pool.submit(contextvars.copy_context().run, fit_apply, folds != k, folds == k) for k in todo]
        results = [f.result() for f in futures]
    for k, scores in zip(todo, results, strict=True):
        out[folds == k] = scores
    return out


def nested_scores(name: str, X: np.ndarray, y: np.ndarray, folds: np.ndarray, params: Mapping[str, Any],
                  pool: Executor | None = None) -> np.ndarray:
    """Held-out blend scores: fold k blended with weights learned on the other folds (NaN where
    fewer than two folds exist or the other folds lack a class)."""
    return cross_fit(
        y, folds,
        lambda train, held: combine(fit_transformed(name, X[train], y[train], folds[train], params), X[held]),
        pool,
    )


def score_method(
    name: str, P: np.ndarray, y: np.ndarray, folds: np.ndarray, params: Mapping[str, Any] | None = None
) -> BlendScore:
    """Fit `name` on all OOF rows (the blend that is submitted) and score it in-sample and nested.
    The submitted fit and the nested folds' fits run `FIT_THREADS` at a time; each is deterministic, so the
    result is the one a sequential loop gives."""
    merged = method_params(name, params)
    y = np.asarray(y, dtype=bool)
    folds = np.asarray(folds)
    X = transform(name, P, merged)
    with ThreadPoolExecutor(max_workers=max(1, min(FIT_THREADS, os.cpu_count() or 1))) as pool:
        submitted = pool.submit(contextvars.copy_context().run, fit_transformed, name, X, y, folds, merged)
        nested = nested_scores(name, X, y, folds, merged, pool)
        fitted = submitted.result()
    in_sample = combine(fitted, X)
    return BlendScore(name, fitted, auc(y, in_sample), fold_aucs(y, in_sample, folds),
                      fold_aucs(y, nested, folds), y, in_sample, nested, learns_from_labels(name))
