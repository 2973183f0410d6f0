"""Blend methods, nested-CV scoring and calibration on synthetic prediction matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from kernels.metrics import auc
from kit.blend.calibrate import apply_calibration, calibrate, cross_fitted, fit_calibration
from kit.blend.methods import (
    METHODS,
    BlendMethod,
    Weights,
    apply_blend,
    fit_blend,
    method_params,
    rank01,
)
from kit.blend.nested import score_method
from kit.errors import KitError


def _problem(n: int = 800, strengths: tuple[float, ...] = (1.2, 0.8, 0.5, 0.0), prevalence: float = 0.2,
             folds: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OOF and test probability matrices of runs of given strengths on different scales."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    latent = rng.normal(size=n) + 1.5 * y
    t_latent = rng.normal(size=n // 2) + 1.5 * (rng.random(n // 2) < prevalence)
    oof = np.column_stack([1 / (1 + np.exp(-(s * latent + rng.normal(size=n)) * (j + 1)))
                           for j, s in enumerate(strengths)])
    test = np.column_stack([1 / (1 + np.exp(-(s * t_latent + rng.normal(size=n // 2)) * (j + 1)))
                            for j, s in enumerate(strengths)])
    return oof, test, y, rng.integers(0, folds, n)


def test_every_method_learns_on_oof_and_applies_to_test() -> None:
    oof, test, y, folds = _problem()
    singles = [auc(y, oof[:, j]) for j in range(oof.shape[1])]
    for name in METHODS:
        fitted = fit_blend(name, oof, y, folds)
        assert len(fitted.weights) == 4 and fitted.method == name
        blended = apply_blend(fitted, oof)
        out = apply_blend(fitted, test)
        assert out.shape == (test.shape[0],) and np.isfinite(out).all()
        learned = fitted.method in ("auc_weights", "greedy", "hill_climb", "stacking")
        # a learned blend is at least about as good as the best run; equal weights carry the noise run too
        assert auc(y, blended) > (max(singles) - 0.02 if learned else 0.7), name
        if fitted.transform == "rank" and fitted.link == "identity":
            assert abs(sum(abs(w) for w in fitted.weights) - 1) < 1e-9
            assert 0 < out.min() and out.max() < 1  # ranks within the test set, in (0, 1)


def test_equal_weight_methods_compute_their_formulas() -> None:
    oof, test, y, folds = _problem(n=50)
    np.testing.assert_allclose(apply_blend(fit_blend("mean", oof, y, folds), test), test.mean(axis=1))
    ranks = np.column_stack([(rankdata(test[:, j]) - 0.5) / len(test) for j in range(4)])
    np.testing.assert_allclose(apply_blend(fit_blend("rank_mean", oof, y, folds), test), ranks.mean(axis=1))
    np.testing.assert_allclose(apply_blend(fit_blend("power_mean", oof, y, folds, {"power": 3.0}), test),
                               np.mean(test ** 3, axis=1) ** (1 / 3))
    logit = np.log(test / (1 - test)).mean(axis=1)
    np.testing.assert_allclose(apply_blend(fit_blend("logit_mean", oof, y, folds), test), 1 / (1 + np.exp(-logit)))


def test_rank_methods_ignore_each_runs_scale() -> None:
    oof, test, y, folds = _problem(n=300)
    squashed_test = test.copy()
    squashed_test[:, 0] = squashed_test[:, 0] ** 8  # same ranking, other scale
    fitted = fit_blend("rank_mean", oof, y, folds)
    np.testing.assert_allclose(apply_blend(fitted, test), apply_blend(fitted, squashed_test))
    assert not np.allclose(apply_blend(fit_blend("mean", oof, y, folds), test),
                           apply_blend(fit_blend("mean", oof, y, folds), squashed_test))


def test_learned_methods_beat_equal_weights_in_sample_and_find_the_strong_run() -> None:
    oof, _, y, folds = _problem(strengths=(1.5, 0.0, 0.0, 0.0, 0.0, 0.0))
    base = auc(y, apply_blend(fit_blend("rank_mean", oof, y, folds), oof))
    for name in ("auc_weights", "greedy", "hill_climb", "stacking"):
        fitted = fit_blend(name, oof, y, folds)
        assert auc(y, apply_blend(fitted, oof)) > base + 0.02, name
        w = np.asarray(fitted.weights)
        assert np.argmax(w) == 0 and w[0] > 2 * np.abs(w[1:]).max(), (name, w)


def test_greedy_is_caruana_selection_with_replacement() -> None:
    oof, _, y, folds = _problem(strengths=(1.0, 0.9, 0.2))
    fitted = fit_blend("greedy", oof, y, folds, {"max_steps": 20, "patience": 20, "init": 1})
    picks = fitted.info["picks"]
    np.testing.assert_allclose(fitted.weights, np.asarray(picks) / sum(picks))
    path = fitted.info["auc_path"]
    assert path[0] == pytest.approx(auc(y, oof[:, int(np.argmax([auc(y, oof[:, j]) for j in range(3)]))]))
    assert max(path) == pytest.approx(auc(y, apply_blend(fitted, oof)), abs=1e-9)
    assert len(path) == 21  # patience = max_steps: every step taken, the best prefix kept
    assert max(picks) >= 2  # with replacement: a run is picked more than once


def test_hill_climb_negative_weights_option() -> None:
    rng = np.random.default_rng(3)
    n = 600
    y = (rng.random(n) < 0.3).astype(int)
    nuisance = rng.normal(size=n)
    signal = y + nuisance + 0.5 * rng.normal(size=n)
    P = 1 / (1 + np.exp(-np.column_stack([signal, nuisance])))  # subtracting the nuisance run helps
    folds = rng.integers(0, 3, n)
    positive = fit_blend("hill_climb", P, y, folds)
    negative = fit_blend("hill_climb", P, y, folds, {"negative": True})
    assert min(positive.weights) >= 0
    assert negative.weights[1] < 0
    assert auc(y, apply_blend(negative, P)) > auc(y, apply_blend(positive, P)) + 0.05


def test_stacking_chooses_c_by_fold_aware_cv_and_matches_sklearn() -> None:
    oof, _, y, folds = _problem()
    fitted = fit_blend("stacking", oof, y, folds, {"c_grid": [0.1, 10.0]})
    assert fitted.info["C"] in (0.1, 10.0) and set(fitted.info["cv_auc_by_C"]) == {"0.1", "10.0"}
    X = rank01(oof)
    ref = LogisticRegression(C=fitted.info["C"], tol=1e-10, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(fitted.weights, ref.coef_[0], atol=1e-5)
    assert fitted.bias == pytest.approx(ref.intercept_[0], abs=1e-5)
    p = apply_blend(fitted, oof)
    np.testing.assert_allclose(p, ref.predict_proba(X)[:, 1], atol=1e-6)


def test_stacking_falls_back_to_default_c_without_two_folds_holding_both_classes() -> None:
    oof, _, y, _ = _problem(n=300)
    one_fold = fit_blend("stacking", oof, y, np.zeros(300, int), {"default_c": 0.5})
    assert one_fold.info == {"C": 0.5, "cv_auc_by_C": {}}
    folds = np.where(y == 1, 0, np.arange(300) % 3)  # fold 0 holds every positive: never held out
    folds[:3] = [1, 2, 1]
    y2 = y.copy()
    y2[:3] = 1
    fitted = fit_blend("stacking", oof, y2, folds)
    assert set(fitted.info["cv_auc_by_C"]) == {str(c) for c in sorted(METHODS["stacking"].defaults["c_grid"])}


def test_method_params_are_validated() -> None:
    assert method_params("greedy")["max_steps"] == 50
    assert method_params("greedy", {"max_steps": 5})["max_steps"] == 5
    with pytest.raises(KitError, match="unknown blend method 'median'"):
        method_params("median")
    with pytest.raises(KitError, match=r"method.params.steps: unknown parameter of greedy \(expected one of "
                                       r"max_steps, patience, init\)"):
        method_params("greedy", {"steps": 3})
    with pytest.raises(KitError, match="method.params.negative: got 'yes', expected a value like False"):
        method_params("hill_climb", {"negative": "yes"})
    with pytest.raises(KitError, match="expected a number > 0"):
        method_params("power_mean", {"power": 0})


def test_adding_a_method_is_one_function_and_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def fit_best_single(X: np.ndarray, y: np.ndarray, folds: np.ndarray, params: dict) -> Weights:
        w = np.zeros(X.shape[1])
        w[int(np.argmax([auc(y, X[:, j]) for j in range(X.shape[1])]))] = 1.0
        return Weights(w)

    monkeypatch.setitem(METHODS, "best_single", BlendMethod(fit_best_single, "rank", "identity", {}, "best run"))
    oof, test, y, folds = _problem()
    fitted = fit_blend("best_single", oof, y, folds)
    assert fitted.weights == (1.0, 0.0, 0.0, 0.0)
    score = score_method("best_single", oof, y, folds)
    assert score.in_sample_auc == pytest.approx(auc(y, oof[:, 0]))


def test_nested_equals_in_sample_for_methods_that_learn_nothing() -> None:
    oof, _, y, folds = _problem()
    for name in ("mean", "rank_mean", "power_mean", "logit_mean"):
        score = score_method(name, oof, y, folds)
        assert score.nested_fold_auc == pytest.approx(score.in_sample_fold_auc, abs=1e-12)
        assert score.optimism == pytest.approx(0.0, abs=1e-12)
        assert score.in_sample_auc == pytest.approx(auc(y, score.in_sample))


def test_nested_cv_exposes_an_overfit_blend() -> None:
    """Two weak real runs and 40 noise runs on a small OOF set: hill climbing with negative
    weights fits the noise; in-sample AUC soars, nested CV shows the truth."""
    rng = np.random.default_rng(5)
    n = 300
    y = (rng.random(n) < 0.2).astype(int)
    latent = rng.normal(size=n) + 0.8 * y
    real = [latent + rng.normal(size=n) for _ in range(2)]
    noise = [rng.normal(size=n) for _ in range(40)]
    P = 1 / (1 + np.exp(-np.column_stack(real + noise)))
    folds = rng.integers(0, 5, n)
    honest = score_method("rank_mean", P[:, :2], y, folds)
    overfit = score_method("hill_climb", P, y, folds, {"negative": True, "step": 0.2})
    assert overfit.in_sample_auc > honest.in_sample_auc + 0.08  # looks better in-sample ...
    assert overfit.nested_auc < honest.nested_auc - 0.03  # ... and is worse where it counts
    assert overfit.optimism > 0.1 and abs(honest.optimism) < 1e-12
    greedy = score_method("greedy", P, y, folds)
    assert greedy.optimism > 0.02


def test_nested_needs_two_folds() -> None:
    oof, _, y, _ = _problem(n=100)
    score = score_method("greedy", oof, y, np.zeros(100, dtype=int))
    assert math.isnan(score.nested_auc) and score.nested_fold_auc == {}
    assert not math.isnan(score.in_sample_auc)


def test_platt_and_isotonic_match_sklearn_and_improve_brier() -> None:
    rng = np.random.default_rng(6)
    n = 2000
    y = (rng.random(n) < 0.1).astype(int)
    scores = 1 / (1 + np.exp(-(rng.normal(size=n) + 2 * y)))  # far too high for 10 % prevalence
    platt = fit_calibration("platt", scores, y)
    ref = LogisticRegression(C=1e6, tol=1e-12, max_iter=10_000).fit(scores[:, None], y)
    assert platt.params["a"] == pytest.approx(ref.coef_[0, 0], rel=1e-4)
    np.testing.assert_allclose(apply_calibration(platt, scores), ref.predict_proba(scores[:, None])[:, 1], atol=1e-6)
    iso = fit_calibration("isotonic", scores, y)
    ref_iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(scores, y)
    probe = np.linspace(-0.5, 1.5, 301)
    np.testing.assert_allclose(apply_calibration(iso.to_json(), probe), ref_iso.predict(probe), atol=1e-12)
    folds = rng.integers(0, 5, n)
    for method in ("platt", "isotonic"):
        _, report = calibrate(method, scores, y, folds)
        assert report.brier_raw == pytest.approx(np.mean((scores - y) ** 2))  # the definition, by hand
        assert report.brier_in_sample < report.brier_raw - 0.05
        assert report.brier_in_sample <= report.brier_cross_fitted < report.brier_raw
    assert np.isnan(cross_fitted("platt", scores, y, np.zeros(n, dtype=int))).all()
    with pytest.raises(KitError, match="unknown method 'beta'"):
        fit_calibration("beta", scores, y)
    with pytest.raises(KitError, match="one class only"):
        fit_calibration("platt", scores, np.zeros(n, dtype=int))


def test_report_lists_the_largest_weights_when_there_are_many_runs() -> None:
    from kit.blend.report import _weights_text

    assert _weights_text([0.5, 0.5], ["a", "b"]) == "0.50 0.50"
    many = _weights_text([0.0] * 7 + [0.2, 0.5, 0.3], [f"r{i}" for i in range(10)])
    assert many == "r8 0.50, r9 0.30, r7 0.20 (3 of 10 non-zero)"  # nothing cut, nothing hidden
    spread = _weights_text([0.1] * 10, [f"r{i}" for i in range(10)])
    assert spread.endswith("r3 0.10 and 6 more (10 of 10 non-zero)"), spread
