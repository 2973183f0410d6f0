"""Guards on the nested-CV fold loop that makes a learned blend's headline honest (kit.blend.nested): two folds
are enough, a fold whose other folds lack a class is the only one left without held-out scores, and a method
without any held-out fold AUC reports NaN quietly."""

from __future__ import annotations

import warnings

import numpy as np

from kit.blend.nested import BlendScore, cross_fit, score_method


def _trained_on(train: np.ndarray, held: np.ndarray) -> np.ndarray:
    """Held-out 'scores' that record how many rows the fit saw (so a test sees which folds were fitted)."""
    return np.full(int(held.sum()), float(train.sum()))


def test_two_folds_are_enough_for_held_out_scores() -> None:
    """With exactly two folds each fold is scored by a fit on the other; with one fold there is nothing to hold
    out and every score is NaN."""
    y = np.array([0, 1, 0, 1, 0, 1, 1, 0], dtype=bool)
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    out = cross_fit(y, folds, _trained_on)
    assert out.tolist() == [4.0] * 8
    assert np.isnan(cross_fit(y, np.zeros(8, dtype=int), _trained_on)).all()
    rng = np.random.default_rng(0)
    P = np.column_stack([y + rng.normal(0, 0.8, 8), rng.random(8)])
    score = score_method("stacking", np.tile(P, (20, 1)), np.tile(y, 20), np.tile(folds, 20))
    assert np.isfinite(score.nested).all() and np.isfinite(score.nested_pooled_auc)


def test_only_the_fold_whose_other_folds_lack_a_class_is_left_unscored() -> None:
    """Fold 0 holds every positive, so a fit on folds 1 and 2 would see negatives only: fold 0 stays NaN, and
    the folds after it are still fitted and scored (the loop goes on)."""
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    folds = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    out = cross_fit(y, folds, _trained_on)
    assert np.isnan(out[:3]).all()
    assert out[3:].tolist() == [6.0] * 6


def test_a_method_without_held_out_fold_aucs_reports_nan_without_a_warning() -> None:
    """No fold AUC to average (every nested score NaN): the fold means are NaN, with no RuntimeWarning
    ('Mean of empty slice') in the output."""
    y = np.array([0, 1] * 10, dtype=bool)
    P = np.column_stack([y + np.linspace(0, 1, 20), np.linspace(1, 0, 20)])
    score = score_method("stacking", P, y, np.zeros(20, dtype=int))  # one fold: nothing held out
    assert isinstance(score, BlendScore) and score.nested_fold_auc == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(score.nested_auc) and np.isnan(score.optimism)
