"""Guards on the blend methods (kit.blend.methods), in process on small matrices: greedy selection and hill
climbing against plain re-implementations of their documented algorithms (ties, init, patience, the step
halving, the parallel path); cv_weighted's lift formula; the transforms and links at their edges (clipping,
overflow, empty matrices); exact integer ranks; the parameter checks' messages; a fitted blend's fields and
the shape checks of fitting and applying it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import rankdata

import kit.blend.methods as methods
from kernels.metrics import auc
from kit.blend.methods import METHODS, BlendMethod, Weights, apply_blend, fit_blend, method_params
from kit.errors import KitError


def _problem(seed: int, n: int = 60, m: int = 4, decimals: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities of m runs of random strength, rounded (ties within and across runs), labels, folds."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    y[:2] = [0, 1]
    latent = rng.normal(size=n) + y
    P = np.column_stack([np.round(1 / (1 + np.exp(-(rng.uniform(-0.3, 1.2) * latent + rng.normal(size=n)))),
                                  decimals) for _ in range(m)])
    return P, y, rng.integers(0, 3, n)


# --- greedy ---------------------------------------------------------------------------------------------------


def _greedy_by_hand(P: np.ndarray, y: np.ndarray, max_steps: int, patience: int, init: int):
    """Caruana's selection as documented: the `init` best single runs (the first on equal AUCs), then add the run
    whose addition scores best (the first on equal AUCs) until max_steps, or patience additions without a new
    best; weights = picks of the best prefix / their total. AUCs of sums of each run's ranks."""
    R = np.column_stack([rankdata(P[:, j]) for j in range(P.shape[1])])
    m = P.shape[1]
    singles = [auc(y, R[:, j]) for j in range(m)]
    counts = np.zeros(m, dtype=int)
    for j in sorted(range(m), key=lambda j: -singles[j])[:max(1, min(init, m))]:
        counts[j] += 1
    best, best_counts, since, path = auc(y, R @ counts), counts.copy(), 0, []
    path.append(best)
    for _ in range(max_steps):
        scores = [auc(y, R @ (counts + np.eye(m, dtype=int)[j])) for j in range(m)]
        j = int(np.argmax(scores))
        counts[j] += 1
        path.append(scores[j])
        if scores[j] > best + 1e-12:
            best, best_counts, since = scores[j], counts.copy(), 0
        else:
            since += 1
            if since >= patience:
                break
    return best_counts, path


@pytest.mark.parametrize("parallel", [False, True], ids=["one-thread", "threads"])
def test_greedy_is_caruanas_selection_step_by_step(monkeypatch, parallel: bool) -> None:
    """Random small problems with ties, positives the smaller or the larger class, init of one, several or more
    than the runs, patience short and long: the picks, weights and AUC path are those of the plain algorithm,
    whether the candidates are scored in one thread or split across threads."""
    monkeypatch.setattr(methods, "GREEDY_PARALLEL_MIN_CELLS", 0 if parallel else 10**12)
    rng = np.random.default_rng(31)
    for trial in range(12):
        P, y, folds = _problem(trial, m=int(rng.integers(2, 6)))
        if trial % 3 == 2:
            y = 1 - y
        params = {"max_steps": int(rng.integers(0, 9)), "patience": int(rng.integers(1, 4)),
                  "init": int(rng.integers(0, 7))}
        fitted = fit_blend("greedy", P, y, folds, params)
        counts, path = _greedy_by_hand(P, y, **params)
        assert fitted.info["picks"] == counts.tolist(), (trial, params)
        assert fitted.info["auc_path"] == pytest.approx(path, abs=1e-12), (trial, params)
        assert fitted.weights == pytest.approx(tuple(counts / counts.sum()), abs=1e-15)


def test_greedy_sums_ranks_exactly_in_integers() -> None:
    """Twice each column's midranks as unsigned integers, whether the matrix holds probabilities or already the
    normalised ranks of these rows (read back, not ranked again); 32 bits while the summed picks fit, else 64."""
    P, _, _ = _problem(1, n=40, m=3)
    want = np.vstack([2 * rankdata(P[:, j]) for j in range(3)])
    for X in (P, methods.rank01(P)):
        got = methods._int_ranks(X, 4)
        assert got.dtype == np.uint32 and np.array_equal(got, want)
    assert methods._int_ranks(P, 2**26).dtype == np.uint64
    near = methods.rank01(P) + 1e-3  # not ranks of these rows: ranked again
    assert np.array_equal(methods._int_ranks(near, 4), want)


# --- hill climbing --------------------------------------------------------------------------------------------


def _hill_climb_by_hand(X: np.ndarray, y: np.ndarray, step: float, min_step: float, negative: bool,
                        max_rounds: int):
    """From equal weights, each round tries w_j + step and then w_j - step for every run (all-zero weights, and
    negative ones unless allowed, are not tried) and takes the first best move when it raises the AUC by more
    than 1e-12; otherwise the step halves; until the step falls below min_step or max_rounds rounds."""
    m = X.shape[1]
    w = np.full(m, 1.0 / m)
    current, rounds = auc(y, X @ w), 0
    while step >= min_step and rounds < max_rounds:
        rounds += 1
        best, best_w = -math.inf, None
        for sign in (1, -1):
            for j in range(m):
                cand = w + sign * step * np.eye(m)[j]
                if np.abs(cand).sum() > 0 and (negative or (cand >= 0).all()):
                    score = auc(y, X @ cand)
                    if score > best:
                        best, best_w = score, cand
        if best > current + 1e-12:
            w, current = best_w, best
        else:
            step /= 2.0
    return w / np.abs(w).sum(), rounds, current


def test_hill_climbing_is_the_documented_coordinate_search() -> None:
    """Random small problems, with and without negative weights, steps and round limits of several sizes: the
    weights, rounds and AUC are those of the plain algorithm. (Continuous features, so that no two blended scores
    tie and float rounding cannot tell two summation orders apart.)"""
    rng = np.random.default_rng(32)
    for trial in range(10):
        m = int(rng.integers(1, 5))
        y = (rng.random(60) < 0.3).astype(bool)
        y[:2] = [False, True]
        X = rng.normal(size=(60, m)) + rng.uniform(-0.5, 1.0, m) * y[:, None]
        params = {"step": float(rng.choice([0.05, 0.1, 0.4])), "min_step": float(rng.choice([0.01, 0.1])),
                  "negative": bool(trial % 2), "max_rounds": int(rng.choice([1, 3, 500]))}
        fitted = methods.fit_transformed("hill_climb", X, y, np.zeros(60, int), params)
        w, rounds, current = _hill_climb_by_hand(X, y, **params)
        assert fitted.weights == pytest.approx(tuple(w), abs=1e-12), (trial, params)
        assert fitted.info == {"rounds": rounds, "auc": pytest.approx(current, abs=1e-12)}, (trial, params)


def test_hill_climbing_with_a_step_below_its_minimum_keeps_equal_weights() -> None:
    P, y, folds = _problem(7)
    fitted = fit_blend("hill_climb", P, y, folds, {"step": 0.001, "min_step": 0.01})
    assert fitted.weights == (0.25,) * 4 and fitted.info["rounds"] == 0


# --- cv_weighted and auc_weights ------------------------------------------------------------------------------


def test_cv_weighted_weights_each_run_by_its_lift_over_the_floor() -> None:
    """Weights proportional to max(AUC - floor, 0): the floor is the baseline column's AUC, or 0.5 without one;
    a run without an AUC counts as chance; nothing above the floor gives equal weights; a baseline column beyond
    the runs is refused."""
    P, y, folds = _problem(8, m=4)
    X = methods.rank01(P)
    aucs = np.array([auc(y, X[:, j]) for j in range(4)])
    for baseline in (-1, 0, 2):
        floor = aucs[baseline] if baseline >= 0 else 0.5
        fitted = methods.fit_cv_weighted(X, y.astype(bool), folds, {"baseline": baseline})
        lift = np.clip(aucs - floor, 0, None)
        want = lift / lift.sum() if lift.sum() > 0 else np.full(4, 0.25)
        np.testing.assert_allclose(fitted.weights, want, atol=1e-12)
        assert fitted.info == {"floor": pytest.approx(floor), "oof_auc": pytest.approx(aucs.tolist())}
    best = int(np.argmax(aucs))
    top = methods.fit_cv_weighted(X, y.astype(bool), folds, {"baseline": best})
    assert top.weights.tolist() == [0.25] * 4
    one_class = methods.fit_cv_weighted(X, np.zeros(60, bool), folds, {"baseline": -1})
    assert one_class.info["oof_auc"] == [0.5] * 4 and one_class.weights.tolist() == [0.25] * 4
    with pytest.raises(KitError, match=r"^cv_weighted: baseline column 4 but only 4 runs$"):
        methods.fit_cv_weighted(X, y.astype(bool), folds, {"baseline": 4})


def _auc_weights_by_hand(X: np.ndarray, y: np.ndarray, max_evals: int, xatol: float):
    """scipy's Nelder-Mead on -AUC(X @ |theta|) from equal weights, its first simplex moving each weight by 1/m,
    at most max_evals evaluations, xatol as given and fatol 1e-12; the result's |theta| scaled to sum 1, unless
    it scores below equal weights (then equal weights)."""
    from scipy.optimize import minimize

    m = X.shape[1]
    start = np.full(m, 1.0 / m)
    corners = [start] + [start + np.eye(m)[i] / m for i in range(m)]
    res = minimize(lambda theta: -auc(y, X @ np.abs(theta)), start, method="Nelder-Mead",
                   options={"initial_simplex": np.array(corners), "maxfev": max_evals, "xatol": xatol,
                            "fatol": 1e-12})
    w = np.abs(res.x) if -res.fun >= auc(y, X @ start) else start
    return w / w.sum(), res.nfev


def test_auc_weights_are_the_documented_nelder_mead_search() -> None:
    """On small random problems the weights and the evaluation count are those of scipy's Nelder-Mead run as
    documented (start, first simplex, limits)."""
    for seed in range(3):
        P, y, folds = _problem(300 + seed, m=3, decimals=2)
        params = {"max_evals": 40 + 20 * seed, "xatol": 10.0 ** -(2 + seed)}
        fitted = fit_blend("auc_weights", P, y, folds, params)
        w, evaluations = _auc_weights_by_hand(methods.rank01(P), y, **params)
        assert fitted.weights == pytest.approx(tuple(w), abs=1e-12) and fitted.info == {"evaluations": evaluations}


def _stacking_c_by_hand(X: np.ndarray, y: np.ndarray, folds: np.ndarray, grid: list[float]):
    """For each C (smallest first) the mean, over the folds holding both classes, of the held-out AUC of a
    logistic regression fitted on every other row (folds with one class are always trained on); the best C,
    the smaller on a tie."""
    from sklearn.linear_model import LogisticRegression

    scored = [k for k in np.unique(folds) if np.unique(y[folds == k]).size == 2]
    by_c = {}
    for c in sorted(grid):
        aucs = []
        for k in scored:
            model = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(X[folds != k], y[folds != k])
            aucs.append(auc(y[folds == k], model.decision_function(X[folds == k])))
        by_c[str(c)] = float(np.mean(aucs))
    return max(sorted(grid), key=lambda c: (round(by_c[str(c)], 9), -c)), by_c


def test_stacking_chooses_c_by_the_held_out_auc_of_the_folds_holding_both_classes() -> None:
    """C is the grid value (given in any order) with the best mean held-out fold AUC, over the folds that hold
    both classes; a fold of one class is trained on, never held out."""
    P, y, folds = _problem(11, n=120, m=3, decimals=2)
    folds = folds.copy()
    folds[y == 1] = np.where(folds[y == 1] == 2, 0, folds[y == 1])  # fold 2: negatives only
    X = methods.rank01(P)
    grid = [10.0, 0.01, 1.0]
    fitted = fit_blend("stacking", P, y, folds, {"c_grid": grid})
    c, by_c = _stacking_c_by_hand(X, y, folds, grid)
    assert list(fitted.info["cv_auc_by_C"]) == ["0.01", "1.0", "10.0"]
    assert fitted.info["cv_auc_by_C"] == pytest.approx(by_c, abs=1e-6)
    assert fitted.info["C"] == c


def test_auc_weights_never_do_worse_than_equal_weights() -> None:
    """Non-negative weights summing to 1 whose AUC is at least that of equal weights; a single run needs no
    search (weight 1, no evaluation)."""
    for seed in range(4):
        P, y, folds = _problem(200 + seed)
        fitted = fit_blend("auc_weights", P, y, folds, {"max_evals": 60})
        w = np.asarray(fitted.weights)
        X = methods.rank01(P)
        assert (w >= 0).all() and w.sum() == pytest.approx(1.0)
        assert auc(y, X @ w) >= auc(y, X.mean(axis=1)) - 1e-12
        assert 0 < fitted.info["evaluations"] <= 60 + 4
    single = fit_blend("auc_weights", P[:, :1], y, folds)
    assert single.weights == (1.0,) and single.info == {"evaluations": 0}


# --- transforms, links and the fitted blend -------------------------------------------------------------------


def test_transforms_and_links_at_their_edges() -> None:
    """sigmoid is 1 / (1 + e^-z) without overflow at +-1000; logit clips probabilities to [1e-6, 1 - 1e-6]; the
    power transform and the root link clip negatives to 0; ranks map into (0, 1) as (rank - 1/2) / n; an
    empty matrix has empty ranks of its shape."""
    z = np.array([-1000.0, -3.0, 0.0, 2.5, 1000.0])
    np.testing.assert_allclose(methods.sigmoid(z), [0.0, 1 / (1 + math.exp(3)), 0.5, 1 / (1 + math.exp(-2.5)), 1.0],
                               atol=1e-15)
    P = np.array([[0.0, 0.3], [1.0, -0.2], [0.5, 0.3]])
    logit = methods.transform("logit_mean", P, {})
    assert logit[:, 0] == pytest.approx([math.log(1e-6 / (1 - 1e-6)), math.log((1 - 1e-6) / 1e-6), 0.0])
    power = methods.transform("power_mean", P, {"power": 2.0})
    assert power[:, 1] == pytest.approx([0.09, 0.0, 0.09])
    root = methods.LINKS["root"](np.array([-4.0, 4.0]), {"power": 2.0})
    assert root.tolist() == [0.0, 2.0]
    assert methods.transform("rank_mean", P, {}).tolist() == [[0.5 / 3, 2 / 3], [2.5 / 3, 0.5 / 3], [1.5 / 3, 2 / 3]]
    assert methods.transform("mean", P, {}).tolist() == P.tolist()
    for shape in ((0, 3), (4, 0)):
        assert methods.midranks(np.zeros(shape)).shape == shape


def test_a_fitted_blend_carries_its_method_and_applies_to_matrices_of_its_runs(monkeypatch) -> None:
    """The fitted blend records the method, merged params, transform, link, float weights, bias and notes;
    applying it needs a matrix with one column per run; a fit function returning another number of weights is
    refused naming the method."""
    P, y, folds = _problem(9)
    fitted = fit_blend("power_mean", P, y, folds, {"power": 3})
    assert (fitted.method, fitted.params, fitted.transform, fitted.link) == ("power_mean", {"power": 3}, "power",
                                                                             "root")
    assert fitted.weights == (0.25,) * 4 and type(fitted.weights[0]) is float and fitted.bias == 0.0
    np.testing.assert_allclose(apply_blend(fitted, P), np.mean(np.clip(P, 0, None) ** 3, axis=1) ** (1 / 3))
    for bad in (P[:, :3], P[:, 0]):
        with pytest.raises(ValueError, match=rf"^apply_blend: predictions of shape \({bad.shape[0]},"):
            apply_blend(fitted, bad)
    monkeypatch.setitem(METHODS, "short", BlendMethod(lambda X, y, f, p: Weights(np.ones(2), 0.5, {"n": 1}),
                                                      "prob", "identity", {}, "two weights"))
    with pytest.raises(ValueError, match=r"^blend method short: 2 weights for 4 runs$"):
        fit_blend("short", P, y, folds)
    two = fit_blend("short", P[:, :2], y, folds)
    assert (two.weights, two.bias, two.info) == ((1.0, 1.0), 0.5, {"n": 1})
    assert apply_blend(two, P[:, :2]).tolist() == (P[:, 0] + P[:, 1] + 0.5).tolist()


def test_only_the_methods_that_fit_weights_learn_from_labels() -> None:
    learned = {name for name in METHODS if methods.learns_from_labels(name)}
    assert learned == {"auc_weights", "greedy", "hill_climb", "cv_weighted", "stacking"}


# --- parameter checks -----------------------------------------------------------------------------------------


def test_parameters_are_checked_against_each_methods_defaults() -> None:
    """Unknown methods and keys are refused with the allowed ones listed ("(none)" for a method without
    parameters); a value must have its default's type (an int may stand for a float, a bool never for a number
    nor a number for a bool); power must be above 0; the messages name where the method was given."""
    assert method_params("power_mean", {"power": 3}) == {"power": 3}
    assert method_params("greedy", None) == {"max_steps": 50, "patience": 10, "init": 1}
    refusals = [
        (("median", None), "method: unknown blend method 'median' (expected one of mean, rank_mean, power_mean, "
                           "logit_mean, auc_weights, greedy, hill_climb, cv_weighted, stacking)"),
        (("mean", {"power": 2}), "method.params.power: unknown parameter of mean (expected one of (none))"),
        (("greedy", {"max_steps": True}), "method.params.max_steps: got True, expected a value like 50"),
        (("greedy", {"max_steps": 2.5}), "method.params.max_steps: got 2.5, expected a value like 50"),
        (("hill_climb", {"negative": 1}), "method.params.negative: got 1, expected a value like False"),
        (("hill_climb", {"step": False}), "method.params.step: got False, expected a value like 0.1"),
        (("power_mean", {"power": 0}), "method.params.power: got 0, expected a number > 0"),
        (("power_mean", {"power": -1.5}), "method.params.power: got -1.5, expected a number > 0"),
    ]
    for (name, params), message in refusals:
        with pytest.raises(KitError) as err:
            method_params(name, params)
        assert str(err.value) == message
    with pytest.raises(KitError, match=r"^report.compare\[1\].params.init: got 'x', expected a value like 1$"):
        method_params("greedy", {"init": "x"}, where="report.compare[1]")
