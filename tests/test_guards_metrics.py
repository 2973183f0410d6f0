"""Guards on the figures kit reports about a score's uncertainty (kernels.metrics): the paired patient
bootstrap and the percentile interval from kept replicates are the documented formulas (NaN replicates, such
as a replicate holding one class or one read back from JSON as null, left out); every bootstrap replicate is
the exact AUC of its resampled patients, whichever engine computes it, ties and a positive majority included."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import kernels.metrics as metrics
from kernels.metrics import (
    Z_95,
    bootstrap_auc_matrix,
    bootstrap_counts,
    interval_from_replicates,
    paired_bootstrap_test,
    paired_from_replicates,
    quantile_mc_error,
)


def _expected_paired(auc1, auc2, reps1, reps2, n_groups, level):
    diffs = np.array(reps1, dtype=float) - np.array(reps2, dtype=float)
    diffs = diffs[~np.isnan(diffs)]
    tail = (1 - level) / 2
    se = float(np.std(diffs, ddof=1))
    diff = auc1 - auc2
    p = math.erfc(abs(diff / se) / math.sqrt(2)) if se else (1.0 if diff == 0 else 0.0)
    return (auc1, auc2, diff, float(np.quantile(diffs, tail)), float(np.quantile(diffs, 1 - tail)), se, p,
            diffs.size, n_groups)


def _fields(result) -> tuple:
    return (result.auc1, result.auc2, result.diff, result.low, result.high, result.se, result.p, result.n_boot,
            result.n_groups)


@pytest.mark.parametrize("level", [0.95, 0.8])
def test_the_paired_test_from_kept_replicates_is_the_documented_formula(level: float) -> None:
    """diff = auc1 - auc2; its interval the (1-level)/2 and 1-(1-level)/2 quantiles of the replicate
    differences; se their sample standard deviation (ddof 1); p = P(|N(0,1)| > |diff/se|); n_boot counts the
    replicates used: a NaN on either side (a replicate holding one class, or null read back from JSON) is left
    out."""
    rng = np.random.default_rng(3)
    reps1 = list(rng.uniform(0.7, 0.9, 40))
    reps2 = list(rng.uniform(0.65, 0.85, 40))
    reps1[3], reps2[7], reps2[9] = float("nan"), None, float("nan")
    got = paired_from_replicates(0.81, 0.78, reps1, reps2, 17, level)
    want = _expected_paired(0.81, 0.78, reps1, reps2, 17, level)
    assert got.n_boot == 37
    np.testing.assert_allclose(_fields(got), want, rtol=1e-12, atol=0)


def test_the_paired_test_needs_two_replicates_and_says_nothing_without_spread() -> None:
    """With fewer than two usable replicates there is no interval, se or p (NaN, n_boot 0), but the AUCs, their
    difference and the patient count are kept; two replicates are enough. Replicate differences without any
    spread give p = 1 when the AUCs are equal and p = 0 when they differ."""
    for reps1, reps2 in (([], []), ([0.8], [0.7]), ([0.8, float("nan")], [0.7, 0.6])):
        got = paired_from_replicates(0.8, 0.7, reps1, reps2, 12)
        assert (got.auc1, got.auc2, got.n_boot, got.n_groups) == (0.8, 0.7, 0, 12)
        assert got.diff == pytest.approx(0.1, abs=1e-15)
        assert all(math.isnan(v) for v in (got.low, got.high, got.se, got.p))
    two = paired_from_replicates(0.8, 0.7, [0.8, 0.9], [0.7, 0.7], 12)
    assert two.n_boot == 2 and two.se == pytest.approx(float(np.std([0.1, 0.2], ddof=1)))
    flat_equal = paired_from_replicates(0.75, 0.75, [0.8, 0.8, 0.8], [0.7, 0.7, 0.7], 5)
    assert (flat_equal.se, flat_equal.p) == (0.0, 1.0)
    flat_apart = paired_from_replicates(0.8, 0.7, [0.8, 0.8, 0.8], [0.7, 0.7, 0.7], 5)
    assert (flat_apart.se, flat_apart.p) == (0.0, 0.0)


@pytest.mark.parametrize("level", [0.95, 0.9])
def test_an_interval_from_kept_replicates_is_their_percentiles_with_its_monte_carlo_error(level: float) -> None:
    """The interval is the (1-level)/2 and 1-(1-level)/2 quantiles of the replicates that are not NaN (or
    null), n_boot counts them, and its Monte Carlo error is the larger of the two ends' errors."""
    rng = np.random.default_rng(4)
    reps = list(rng.uniform(0.6, 0.95, 300))
    reps[0], reps[10] = None, float("nan")
    clean = np.array([r for r in reps if r is not None and not math.isnan(r)])
    got = interval_from_replicates(0.8, reps, 50, level)
    tail = (1 - level) / 2
    assert (got.auc, got.level, got.n_boot, got.n_groups) == (0.8, level, 298, 50)
    assert (got.low, got.high) == (float(np.quantile(clean, tail)), float(np.quantile(clean, 1 - tail)))
    assert got.mc_error == max(quantile_mc_error(clean, tail), quantile_mc_error(clean, 1 - tail))
    for point, bad in ((float("nan"), reps), (0.8, [float("nan"), None])):
        empty = interval_from_replicates(point, bad, 50, level)
        assert (empty.n_boot, empty.n_groups, empty.level) == (0, 50, level)
        assert math.isnan(empty.low) and math.isnan(empty.high)


def test_the_monte_carlo_error_of_a_quantile_is_its_order_statistics_range_over_2z() -> None:
    """Error of the q-quantile of B replicates: (x[hi] - x[lo]) / (2 z), lo = floor(Bq - z sqrt(Bq(1-q))) and
    hi = ceil(Bq + z sqrt(Bq(1-q))), kept within the replicates; about sqrt(q(1-q)/B) for uniform ones."""
    x = np.arange(10.0)[::-1]  # unsorted on purpose: the order statistics are taken after sorting
    half = Z_95 * math.sqrt(10 * 0.025 * 0.975)  # 0.968: lo = floor(-0.72) -> 0, hi = ceil(1.22) = 2
    assert quantile_mc_error(x, 0.025) == pytest.approx((2.0 - 0.0) / (2 * Z_95), abs=1e-15)
    half = Z_95 * math.sqrt(10 * 0.975 * 0.025)  # 9.75 +- 0.968: lo = floor(8.78) = 8, hi = ceil(10.7) -> 9
    assert half == pytest.approx(0.9677, abs=1e-4)
    assert quantile_mc_error(x, 0.975) == pytest.approx((9.0 - 8.0) / (2 * Z_95), abs=1e-15)
    # 5 +- 3.10: lo = floor(1.90) = 1, hi = ceil(8.10) = 9
    assert quantile_mc_error(x, 0.5) == pytest.approx((9.0 - 1.0) / (2 * Z_95), abs=1e-15)
    b = 100_000
    uniform = np.linspace(0.0, 1.0, b)
    for q in (0.025, 0.5, 0.975):
        assert quantile_mc_error(uniform, q) == pytest.approx(math.sqrt(q * (1 - q) / b), abs=2.0 / b)
    assert math.isnan(quantile_mc_error(np.array([0.5]), 0.5)) and math.isnan(quantile_mc_error(np.array([]), 0.5))


def test_the_paired_bootstrap_test_uses_its_seed_level_and_replicates() -> None:
    """`paired_bootstrap_test` is `paired_from_replicates` on the replicates of its own seed, at its own level;
    a bad label is refused naming the function."""
    rng = np.random.default_rng(8)
    n = 120
    y = rng.random(n) < 0.3
    s1, s2 = y + rng.normal(0, 1.0, n), y + rng.normal(0, 1.5, n)
    patients = rng.integers(0, 40, n)
    got = paired_bootstrap_test(y, s1, s2, patients, n_boot=60, level=0.8, seed=5)
    reps = bootstrap_auc_matrix(y, np.vstack([s1, s2]), patients, 60, 5)
    want = paired_from_replicates(roc_auc_score(y, s1), roc_auc_score(y, s2), reps[:, 0], reps[:, 1],
                                  np.unique(patients).size, 0.8)
    np.testing.assert_allclose(_fields(got), _fields(want), rtol=1e-12)
    other_seed = paired_bootstrap_test(y, s1, s2, patients, n_boot=60, level=0.8, seed=6)
    assert (other_seed.low, other_seed.high) != (got.low, got.high)
    with pytest.raises(ValueError, match=r"^paired_bootstrap_test: labels must be 0 or 1, got 2$"):
        paired_bootstrap_test([0, 1, 2], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])


@pytest.mark.parametrize("engine_ratio", [0, 10**9], ids=["row-engine", "group-engine"])
@pytest.mark.parametrize("prevalence", [0.25, 0.75], ids=["positives-few", "positives-most"])
def test_each_replicate_is_the_exact_auc_of_its_resampled_patients(monkeypatch, engine_ratio: int,
                                                                   prevalence: float) -> None:
    """Whichever engine runs (the row engine, or the group engine kit picks when patients are few), with tied
    scores and with positives the majority, replicate r is the AUC of the images of the patients drawn in r;
    a replicate holding one class is NaN, without a warning."""
    monkeypatch.setattr(metrics, "GROUP_ENGINE_MAX_RATIO", engine_ratio)
    rng = np.random.default_rng(int(prevalence * 100))
    n = 90
    patients = rng.integers(0, 25, n)
    y = rng.random(n) < prevalence
    s = np.round(y * 0.6 + rng.random(n), 1)  # about ten distinct values: many ties within and across classes
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reps = bootstrap_auc_matrix(y, np.vstack([s, -s]), patients, n_boot=40, seed=2)
    ids = np.unique(patients)
    for counts, got in zip(bootstrap_counts(ids.size, 40, seed=2), reps, strict=True):
        rows = np.concatenate([np.repeat(np.flatnonzero(patients == p), c) for p, c in zip(ids, counts, strict=True)])
        if np.unique(y[rows]).size < 2:
            assert np.isnan(got).all()
        else:
            want = roc_auc_score(y[rows], s[rows])
            assert got == pytest.approx([want, 1 - want], abs=1e-12)


@pytest.mark.parametrize("engine_ratio", [0, 10**9], ids=["row-engine", "group-engine"])
def test_a_replicate_of_one_positive_and_one_negative_has_an_auc(monkeypatch, engine_ratio: int) -> None:
    """The smallest scoreable replicate (one positive and one negative image) is 1, 0 or 0.5, not NaN; one
    class alone is NaN (a float NaN, so a caller can test it)."""
    monkeypatch.setattr(metrics, "GROUP_ENGINE_MAX_RATIO", engine_ratio)
    y = np.array([True, False])
    for s, value in (([0.9, 0.1], 1.0), ([0.1, 0.9], 0.0), ([0.5, 0.5], 0.5)):
        reps = bootstrap_auc_matrix(y, np.array([s]), None, n_boot=30, seed=1)[:, 0]
        assert reps.dtype == float
        for counts, got in zip(bootstrap_counts(2, 30, seed=1), reps, strict=True):
            assert got == value if counts.min() > 0 else math.isnan(got)
