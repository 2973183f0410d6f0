"""Guards on the figures kit reports about a score's uncertainty (kernels.metrics): the paired patient
bootstrap and the percentile interval from kept replicates are the documented formulas (NaN replicates, such
as a replicate holding one class or one read back from JSON as null, left out); every bootstrap replicate is
the exact AUC of its resampled patients, whichever engine computes it, ties and a positive majority included."""

from __future__ import annotations

import itertools
import json
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import kernels.metrics as metrics
from kernels.metrics import (
    Z_95,
    bootstrap_auc_ci,
    bootstrap_auc_matrix,
    bootstrap_aucs,
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
    reps1[3], reps1[5], reps2[7], reps2[9] = float("nan"), None, None, float("nan")
    got = paired_from_replicates(0.81, 0.78, reps1, reps2, 17, level)
    want = _expected_paired(0.81, 0.78, reps1, reps2, 17, level)
    assert got.n_boot == 36
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
        assert empty.auc == point or math.isnan(point) and math.isnan(empty.auc)
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
    # two replicates are enough: 1 +- 1.39 -> lo = 0, hi = 1
    assert quantile_mc_error(np.array([0.7, 0.5]), 0.5) == pytest.approx(0.2 / (2 * Z_95), abs=1e-15)


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


# --- every replicate, whatever the engine, block and batch sizes ---------------------------------------------


def _explicit_replicates(y: np.ndarray, s: np.ndarray, patients: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Replicate r by hand: the images of the patients drawn in r (each as often as drawn), scored by
    scikit-learn; NaN when the draw holds one class."""
    ids = np.unique(patients)
    out = []
    for counts in bootstrap_counts(ids.size, n_boot, seed=seed):
        rows = np.concatenate([np.repeat(np.flatnonzero(patients == p), c) for p, c in zip(ids, counts, strict=True)])
        out.append(roc_auc_score(y[rows], s[rows]) if np.unique(y[rows]).size == 2 else float("nan"))
    return np.array(out)


@pytest.mark.parametrize("engine_ratio", [0, 10**9], ids=["row-engine", "group-engine"])
@pytest.mark.parametrize("block_cells,batch_cells", [(1, 1), (3, 5), (7, 2)], ids=["one-by-one", "3x5", "7x2"])
def test_the_replicates_do_not_depend_on_how_they_are_split_into_blocks(monkeypatch, engine_ratio: int,
                                                                       block_cells: int, batch_cells: int) -> None:
    """The bootstrap draws its replicates in blocks (memory) and, with patients, scores them in batches of one
    matrix product: replicate r is the same resampling of patients, scored exactly, whether blocks and batches
    hold one replicate, several, or a batch ends inside a block (sizes in replicates; the last batch is short)."""
    rng = np.random.default_rng(block_cells * 10 + batch_cells)
    n, n_patients, n_boot = 40, 12, 23
    patients = np.r_[np.arange(n_patients), rng.integers(0, n_patients, n - n_patients)]
    y = rng.random(n) < 0.3
    y[:2] = [True, False]
    s = np.round(y * 0.5 + rng.random(n), 1)
    monkeypatch.setattr(metrics, "GROUP_ENGINE_MAX_RATIO", engine_ratio)
    # block_cells replicates of n_patients counts per block; batch_cells replicates per product
    monkeypatch.setattr(metrics, "BOOT_BLOCK_CELLS", block_cells * n)
    monkeypatch.setattr(metrics, "GROUP_BATCH_CELLS", batch_cells * n_patients)
    got = bootstrap_auc_matrix(y, np.vstack([s, 1 - s]), patients, n_boot=n_boot, seed=9)
    want = _explicit_replicates(y, s, patients, n_boot, 9)
    assert got.shape == (n_boot, 2)
    np.testing.assert_allclose(got, np.c_[want, 1 - want], atol=1e-12, rtol=0)


@pytest.mark.parametrize("engine_ratio", [0, 10**9], ids=["row-engine", "group-engine"])
def test_no_replicates_asked_gives_none(monkeypatch, engine_ratio: int) -> None:
    """n_boot = 0: an empty (0, k) matrix of replicates, from either engine; the interval has none either."""
    monkeypatch.setattr(metrics, "GROUP_ENGINE_MAX_RATIO", engine_ratio)
    y = np.array([0, 1, 0, 1, 1, 0])
    s = np.array([0.1, 0.7, 0.3, 0.2, 0.9, 0.4])
    patients = np.array([0, 0, 1, 1, 2, 2])
    assert bootstrap_auc_matrix(y, np.vstack([s, s, s]), patients, n_boot=0).shape == (0, 3)
    assert bootstrap_aucs(y, s, patients, n_boot=0).shape == (0,)


def test_the_engine_is_the_cheaper_one_by_the_documented_cost_rule(monkeypatch) -> None:
    """With patients, the group engine (per-patient pair counts) runs while (patients holding a case of the
    smaller class) x (patients) <= GROUP_ENGINE_MAX_RATIO x (cases); beyond it the row engine does. The smaller
    class is the positives or the negatives, whichever has fewer cases."""
    engines: list[str] = []
    real_pairs, real_prepare = metrics.group_pairs, metrics._metrics_prepare
    monkeypatch.setattr(metrics, "group_pairs", lambda *a: engines.append("group") or real_pairs(*a))
    monkeypatch.setattr(metrics, "_metrics_prepare", lambda *a: engines.append("row") or real_prepare(*a))
    # 12 cases; the smaller class (3 cases) in patients {0, 1}, the larger (9) in {1, 2, 3, 4}: 2 x 5 = 10
    patients = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4, 4])
    smaller = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    s = np.linspace(0.0, 1.0, 12)
    for y in (smaller, 1 - smaller):  # the positives fewer, then the negatives fewer
        for ratio, engine in ((10 / 12, "group"), (10 / 12 * (1 - 1e-9), "row"), (1e9, "group"), (0, "row")):
            monkeypatch.setattr(metrics, "GROUP_ENGINE_MAX_RATIO", ratio)
            engines.clear()
            bootstrap_auc_matrix(y, s[None, :], patients, n_boot=2)
            assert engines == [engine], (y.sum(), ratio)


# --- the group engine's sufficient statistics -------------------------------------------------------------------


def _group_pairs_by_hand(y: np.ndarray, s: np.ndarray, g: np.ndarray, n_groups: int, minority_positive: bool):
    """(rows, wins, n_pos, n_neg) from every (positive, negative) pair: wins[r, h] sums 1 (positive higher) or
    1/2 (tie) over the pairs whose smaller-class case is in group rows[r] and whose other case is in group h."""
    small = y if minority_positive else ~y
    rows = np.unique(g[small])
    wins = np.zeros((rows.size, n_groups))
    for i in np.flatnonzero(y):
        for j in np.flatnonzero(~y):
            value = 1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0
            mine, other = (i, j) if minority_positive else (j, i)
            wins[np.searchsorted(rows, g[mine]), g[other]] += value
    return rows, wins, np.bincount(g[y], minlength=n_groups), np.bincount(g[~y], minlength=n_groups)


def test_group_pair_counts_are_the_pairs_between_patients_counted_by_hand() -> None:
    """`group_pairs` on small random data (ties, empty groups, one case of a class, one class absent): rows are
    the groups holding the smaller class (either class on a tie), wins the pair counts between each such group
    and every group, n_pos / n_neg the classes' cases per group, all as floats."""
    rng = np.random.default_rng(21)
    for trial in range(150):
        n = int(rng.integers(1, 14))
        n_groups = int(rng.integers(1, 6))
        y = rng.random(n) < rng.choice([0.0, 0.2, 0.5, 0.8, 1.0])
        s = rng.integers(0, 4, n).astype(float)
        g = rng.integers(0, n_groups, n)
        got = metrics.group_pairs(y, s, g, n_groups)
        m, k = int(y.sum()), int((~y).sum())
        choices = [True, False] if m == k else [m < k]
        wanted = [_group_pairs_by_hand(y, s, g, n_groups, c) for c in choices]
        assert any(np.array_equal(got.rows, w[0]) and got.wins.shape == w[1].shape
                   and np.array_equal(got.wins, w[1]) for w in wanted), trial
        for field, want in ((got.n_pos, wanted[0][2]), (got.n_neg, wanted[0][3])):
            assert field.dtype == float and np.array_equal(field, want), trial


# --- DeLong against its definition ----------------------------------------------------------------------------


def _delong_by_pairs(y: np.ndarray, scores: np.ndarray):
    """(aucs, v_pos, v_neg, covariance) of DeLong et al. (1988) from each score vector's pair matrix psi (1 where
    the positive scores higher, 1/2 on a tie): v_pos[i] the mean of positive i's row, v_neg[j] of negative j's
    column; covariance S10 / m + S01 / n with sample covariances over the cases (none from a side of one case)."""
    psi = [(row[y][:, None] > row[~y][None, :]) + 0.5 * (row[y][:, None] == row[~y][None, :]) for row in scores]
    v_pos = np.array([p.mean(axis=1) for p in psi])
    v_neg = np.array([p.mean(axis=0) for p in psi])
    cov = np.zeros((len(psi), len(psi)))
    for v in (v_pos, v_neg):
        size = v.shape[1]
        if size > 1:
            d = v - v.mean(axis=1, keepdims=True)
            cov += d @ d.T / (size - 1) / size
    return v_pos.mean(axis=1), v_pos, v_neg, cov


def test_delong_components_and_covariance_are_the_pairwise_definitions_for_any_class_sizes() -> None:
    """Small random data, tied and untied, from one case of a class upwards: the structural components, the
    AUCs and their covariance are those of the 1988 definitions computed pair by pair."""
    rng = np.random.default_rng(22)
    for trial in range(80):
        m, n = int(rng.integers(1, 7)), int(rng.integers(1, 7))
        y = rng.permutation(np.r_[np.ones(m, bool), np.zeros(n, bool)])
        scores = np.vstack([rng.integers(0, 3, m + n), rng.integers(0, 6, m + n) + y, rng.normal(size=m + n) + y])
        aucs, v_pos, v_neg = metrics.delong_components(y, scores)
        want_aucs, want_pos, want_neg, want_cov = _delong_by_pairs(y, scores)
        np.testing.assert_allclose(aucs, want_aucs, atol=1e-12, err_msg=str(trial))
        np.testing.assert_allclose(v_pos, want_pos, atol=1e-12, err_msg=str(trial))
        np.testing.assert_allclose(v_neg, want_neg, atol=1e-12, err_msg=str(trial))
        cov_aucs, cov = metrics.delong_covariance(y, scores)
        np.testing.assert_allclose(cov_aucs, want_aucs, atol=1e-12)
        np.testing.assert_allclose(cov, want_cov, atol=1e-12, err_msg=str(trial))


def test_the_delong_test_is_the_normal_test_of_the_pairwise_variance() -> None:
    """diff = AUC1 - AUC2, se the square root of var1 + var2 - 2 cov12 from the pairwise definitions, z = diff / se,
    p = P(|N(0, 1)| > |z|), on small random data with ties."""
    rng = np.random.default_rng(23)
    for trial in range(60):
        m, n = int(rng.integers(2, 8)), int(rng.integers(2, 8))
        y = rng.permutation(np.r_[np.ones(m, bool), np.zeros(n, bool)])
        s1, s2 = rng.integers(0, 5, m + n) + y, np.round(rng.normal(size=m + n) + y, 1)
        aucs, _, _, cov = _delong_by_pairs(y, np.vstack([s1, s2]).astype(float))
        se = math.sqrt(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0))
        got = metrics.delong_test(y, s1, s2)
        assert (got.auc1, got.auc2, got.diff, got.se) == pytest.approx(
            (aucs[0], aucs[1], aucs[0] - aucs[1], se), abs=1e-12), trial
        if se > 1e-6:
            assert got.z == pytest.approx((aucs[0] - aucs[1]) / se, rel=1e-9), trial
            assert got.p == pytest.approx(math.erfc(abs(got.z) / math.sqrt(2)), abs=1e-12), trial


def test_the_delong_test_without_spread_is_certain_or_says_nothing() -> None:
    """se = 0: the same ranking twice gives z = 0 and p = 1; a perfect score against its reverse gives
    z = +inf (or -inf the other way round) and p = 0."""
    y = np.array([1, 1, 0, 0])
    perfect, reverse = np.array([2.0, 3.0, 0.0, 1.0]), np.array([0.0, 1.0, 2.0, 3.0])
    same = metrics.delong_test(y, perfect, 10 * perfect + 3)
    assert (same.diff, same.se, same.z, same.p) == (0.0, 0.0, 0.0, 1.0)
    apart = metrics.delong_test(y, perfect, reverse)
    assert (apart.auc1, apart.auc2, apart.diff, apart.se, apart.z, apart.p) == (1.0, 0.0, 1.0, 0.0, math.inf, 0.0)
    backwards = metrics.delong_test(y, reverse, perfect)
    assert (backwards.diff, backwards.z, backwards.p) == (-1.0, -math.inf, 0.0)


@pytest.mark.parametrize("z", [Z_95, 1.0])
def test_the_delong_interval_is_the_normal_interval_clipped_to_0_1(z: float) -> None:
    """AUC -+ z se (se from the pairwise variance), clipped to [0, 1]; its level P(|N(0,1)| < z); no bootstrap
    replicates; the cases counted as groups."""
    rng = np.random.default_rng(24)
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    for s in (rng.normal(size=7) + y, np.array([0.9, 0.8, 0.35, 0.5, 0.1, 0.2, 0.3]), -np.array([0.9, 0.8, 0.35, 0.5, 0.1, 0.2, 0.3])):
        aucs, _, _, cov = _delong_by_pairs(y.astype(bool), s[None, :])
        se = math.sqrt(cov[0, 0])
        got = metrics.delong_ci(y, s, z)
        assert (got.auc, got.low, got.high) == pytest.approx(
            (aucs[0], max(0.0, aucs[0] - z * se), min(1.0, aucs[0] + z * se)), abs=1e-12)
        assert got.level == pytest.approx(math.erf(z / math.sqrt(2)), abs=1e-15)
        assert (got.n_boot, got.n_groups) == (0, 7)
    clipped = [metrics.delong_ci(y, s, z) for s in (np.array([0.9, 0.8, 0.35, 0.5, 0.1, 0.2, 0.3]),
                                                   -np.array([0.9, 0.8, 0.35, 0.5, 0.1, 0.2, 0.3]))]
    assert clipped[0].high == 1.0 and clipped[1].low == 0.0


# --- the bootstrap interval -----------------------------------------------------------------------------------


def test_the_bootstrap_interval_is_the_percentile_interval_of_its_own_replicates() -> None:
    """`bootstrap_auc_ci` is `interval_from_replicates` of the AUC and of the replicates of its own patients,
    seed and level; with no replicates asked (0 or fewer) or one class only, the ends are NaN and the level
    and patient count are kept; a single replicate is its own interval."""
    rng = np.random.default_rng(25)
    n = 60
    patients = rng.integers(0, 20, n)
    y = rng.random(n) < 0.4
    s = np.round(y + rng.normal(size=n), 1)
    n_patients = np.unique(patients).size
    got = bootstrap_auc_ci(y, s, patients, n_boot=50, level=0.8, seed=7)
    want = interval_from_replicates(roc_auc_score(y, s), bootstrap_aucs(y, s, patients, 50, 7), n_patients, 0.8)
    assert got == pytest.approx(want) and got.n_groups == n_patients < n
    one = bootstrap_auc_ci(y, s, patients, n_boot=1, level=0.8, seed=7)
    rep = bootstrap_aucs(y, s, patients, 1, 7)[0]
    assert (one.low, one.high, one.n_boot) == (rep, rep, 1)
    for n_boot, labels in ((0, y), (-1, y), (50, np.ones(n, bool))):
        empty = bootstrap_auc_ci(labels, s, patients, n_boot=n_boot, level=0.8, seed=7)
        assert (empty.level, empty.n_boot, empty.n_groups) == (0.8, 0, n_patients)
        assert math.isnan(empty.low) and math.isnan(empty.high) and math.isnan(empty.mc_error)
        assert empty.auc == pytest.approx(roc_auc_score(y, s)) if n_boot < 50 else math.isnan(empty.auc)


# --- refusals -------------------------------------------------------------------------------------------------

ENTRY_POINTS = {  # name in the message: call with labels and one score vector
    "auc": lambda y, s: metrics.auc(y, s),
    "weighted_auc": lambda y, s: metrics.weighted_auc(y, s, np.ones(len(s))),
    "roc_points": lambda y, s: metrics.roc_points(y, s),
    "auc_by_group": lambda y, s: metrics.auc_by_group(y, s, np.zeros(len(s))),
    "bootstrap_auc_ci": lambda y, s: bootstrap_auc_ci(y, s, n_boot=3),
    "bootstrap": lambda y, s: bootstrap_auc_matrix(y, np.vstack([s, np.arange(len(s))]), n_boot=3),
    "delong": lambda y, s: metrics.delong_test(y, s, np.arange(len(s))),
    "auc_columns": lambda y, s: metrics.auc_columns(y, s[:, None]),
}
LENGTH_MESSAGE = {"bootstrap": "4 labels but scores of length 3", "delong": "4 labels but scores of length 3",
                  "auc_columns": r"scores of shape \(3, 1\) for 4 labels"}


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_each_entry_point_refuses_bad_input_naming_itself_in_one_line(name: str) -> None:
    """A label other than 0/1, a NaN score and labels and scores of different lengths are each refused with a
    one-line ValueError that starts with the function's name and says what is wrong and where."""
    call = ENTRY_POINTS[name]
    cases = (([0, 1, 2], [0.1, 0.2, 0.3], "labels must be 0 or 1, got 2"),
             ([0, 1, 0, 1], [0.1, 0.2, float("nan"), 0.4], r"1 NaN score\(s\) \(at index 2\)"),
             ([0, 1, 0, 1], [0.1, 0.2, 0.3], LENGTH_MESSAGE.get(name, "4 labels but 3 scores")))
    for labels, scores, message in cases:
        with pytest.raises(ValueError, match=rf"^{name}: {message}$"):
            call(np.array(labels), np.array(scores))


def test_delong_needs_both_classes() -> None:
    for labels in ([1, 1, 1], [0, 0, 0]):
        with pytest.raises(ValueError, match=r"^delong: needs both positive and negative cases$"):
            metrics.delong_test(labels, [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])


# --- the ROC curve --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prevalence", [0.1, 0.5, 0.9])
def test_roc_corners_are_scikit_learns_curve_with_ties(prevalence: float) -> None:
    """One corner per distinct score from the highest down, from (0, 0) to (1, 1): scikit-learn's
    roc_curve(drop_intermediate=False); a class that is absent makes its rate NaN, the other rate still rises."""
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(int(prevalence * 10))
    for n, levels in ((2, 2), (9, 3), (60, 5), (300, 1000)):
        y = (rng.random(n) < prevalence).astype(int)
        y[:2] = [0, 1]
        s = rng.integers(0, levels, n) / levels + 0.3 * y
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
        got = metrics.roc_points(y, s)
        np.testing.assert_allclose(got[0], fpr, atol=1e-15)
        np.testing.assert_allclose(got[1], tpr, atol=1e-15)
    fpr, tpr = metrics.roc_points([1, 1, 1], [0.2, 0.5, 0.5])
    assert fpr.shape == (3,) and np.isnan(fpr).all() and tpr.tolist() == [0.0, 2 / 3, 1.0]
    fpr, tpr = metrics.roc_points([0, 0, 0], [0.2, 0.5, 0.5])
    assert tpr.shape == (3,) and np.isnan(tpr).all() and fpr.tolist() == [0.0, 2 / 3, 1.0]


def test_each_replicate_draws_as_many_patients_as_there_are_uniformly_with_replacement() -> None:
    """Replicate r is n_groups draws with replacement: counts that sum to n_groups, every patient drawn about
    once per replicate on average (over 2000 replicates), the same stream for the same seed whatever the block
    size (one replicate a block, a few, all), another for another seed; no replicates asked, none given."""
    def blocks(n_groups: int, n_boot: int, seed: int, cells: int = metrics.BOOT_BLOCK_CELLS) -> list[np.ndarray]:
        """The generator's blocks, at most n_boot + 1 of them (a generator that never ends fails, not hangs)."""
        out = list(itertools.islice(metrics.bootstrap_count_blocks(n_groups, n_boot, seed, cells), n_boot + 1))
        assert all(len(b) for b in out), "an empty block"
        return out

    n_groups, n_boot = 7, 2000
    counts = np.vstack(blocks(n_groups, n_boot, 3))
    assert counts.shape == (n_boot, n_groups) and (counts.sum(axis=1) == n_groups).all() and counts.min() >= 0
    # each patient's count is Binomial(7, 1/7): mean 1, sd 0.93; its mean over 2000 replicates has sd 0.021
    np.testing.assert_allclose(counts.mean(axis=0), 1.0, atol=0.1)
    assert (counts == 0).any() and (counts >= 3).any()
    for cells in (1, 3 * n_groups, 10**9):
        split = blocks(n_groups, n_boot, 3, cells)
        assert max(len(b) for b in split) == min(n_boot, max(1, cells // n_groups))
        np.testing.assert_array_equal(np.vstack(split), counts)
    np.testing.assert_array_equal(np.array(list(bootstrap_counts(n_groups, 50, seed=3))), counts[:50])
    assert not np.array_equal(np.vstack(blocks(n_groups, 50, 4)), counts[:50])
    assert list(itertools.islice(bootstrap_counts(n_groups, 0), 1)) == [] and blocks(n_groups, 0, 3) == []
    one = blocks(1, 5, 3, cells=2)  # one patient: `cells` replicates a block
    assert [len(b) for b in one] == [2, 2, 1] and np.vstack(one).tolist() == [[1]] * 5


@pytest.mark.parametrize("labels,shown", [(["no", "yes", "yes"], "'no'"), ([None, 1, 0], "None"),
                                          ([0, 1, 2.5], "2.5"), (np.array([0, 7, 1]), "7")])
def test_a_refused_label_is_quoted_as_given(labels, shown: str) -> None:
    """The first label that is not 0/1 is shown as the caller gave it: text quoted, None as None, numbers plain."""
    with pytest.raises(ValueError, match=rf"^auc: labels must be 0 or 1, got {shown}$"):
        metrics.auc(labels, [0.1, 0.2, 0.3])


def test_other_shapes_and_group_counts_are_refused_naming_the_function() -> None:
    with pytest.raises(ValueError, match=r"^auc_columns: scores of shape \(4,\) for 4 labels$"):
        metrics.auc_columns([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"^groups: 3 group ids for 4 cases$"):
        bootstrap_auc_ci([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], [1, 1, 2], n_boot=3)
    with pytest.raises(ValueError, match=r"^auc_by_group: 3 group ids for 4 cases$"):
        metrics.auc_by_group([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], [1, 1, 2])


# --- inputs of every kind and size ------------------------------------------------------------------------------


def test_scores_of_any_numeric_type_are_read_as_numbers() -> None:
    """Boolean scores (a yes/no rule) and small unsigned integers (0-255 image scores) rank as their values: the
    same AUC, ROC corners and DeLong figures as the same scores given as floats."""
    y = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    for scores in (np.array([0, 1, 1, 1, 0, 0, 0, 1], dtype=bool), np.array([0, 200, 3, 255, 9, 1, 3, 128], np.uint8)):
        as_float = scores.astype(float)
        assert metrics.auc(y, scores) == metrics.auc(y, as_float)
        for got, want in zip(metrics.roc_points(y, scores), metrics.roc_points(y, as_float), strict=True):
            np.testing.assert_array_equal(got, want)
        assert metrics.delong_test(y, scores, y) == metrics.delong_test(y, as_float, y)


@pytest.mark.parametrize("engine_ratio", [0, 10**9], ids=["row-engine", "group-engine"])
def test_one_class_or_no_cases_give_nan_replicates_and_no_interval(monkeypatch, engine_ratio: int) -> None:
    """A bootstrap of one class only has no AUC in any replicate (NaN, from either engine); no cases at all give
    NaN replicates, and an interval without ends over zero patients."""
    monkeypatch.setattr(metrics, "GROUP_ENGINE_MAX_RATIO", engine_ratio)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for labels in ([1, 1, 1, 1], [0, 0, 0, 0]):
            reps = bootstrap_aucs(labels, [0.1, 0.2, 0.3, 0.4], [0, 0, 1, 2], n_boot=5)
            assert reps.shape == (5,) and np.isnan(reps).all()
        assert np.isnan(bootstrap_aucs([], [], n_boot=4)).all() and bootstrap_aucs([], [], n_boot=4).shape == (4,)
    none = bootstrap_auc_ci([], [], [], n_boot=4)
    assert (none.n_boot, none.n_groups) == (0, 0) and math.isnan(none.auc) and math.isnan(none.low)


def test_patient_ids_of_mixed_types_are_compared_as_text() -> None:
    """Ids in an object column (text with a missing value as None or NaN, numbers among them) are grouped by their
    text: each missing marker is a group of its own, not an error; the same in a per-group AUC."""
    ids = np.array(["p1", "p1", None, "p2", float("nan"), 3, "p2", None], dtype=object)
    y = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    s = np.array([0.1, 0.9, 0.3, 0.8, 0.4, 0.2, 0.6, 0.7])
    assert bootstrap_auc_ci(y, s, ids, n_boot=20).n_groups == 5  # p1, None, p2, nan, 3
    assert set(metrics.auc_by_group(y, s, ids)) == {"p1", "None", "p2", "nan", "3"}


def test_per_group_aucs_are_keyed_by_plain_python_values() -> None:
    """Folds given as numpy integers are keyed by Python ints (a report writes them to JSON as they are)."""
    y = np.array([0, 1, 0, 1, 1, 0])
    by_fold = metrics.auc_by_group(y, np.arange(6.0), np.array([0, 0, 1, 1, 2, 2], dtype=np.int64))
    assert all(type(k) is int for k in by_fold)
    assert json.loads(json.dumps({k: v.auc for k, v in by_fold.items()})) == {"0": 1.0, "1": 1.0, "2": 0.0}


def test_an_age_that_is_missing_as_none_is_in_the_missing_band() -> None:
    assert metrics.age_bands([45, None, 80.0]).tolist() == ["45-59", "missing", "75+"]


def test_weighted_auc_counts_each_case_as_often_as_its_weight() -> None:
    """Random tied data and integer weights (zeros included): the AUC of the cases repeated as often as their
    weight; one positive of weight 1 is enough; a class without weight has no AUC (NaN, without a warning)."""
    rng = np.random.default_rng(27)
    for _ in range(40):
        n = int(rng.integers(2, 12))
        y = rng.random(n) < 0.5
        y[:2] = [True, False]
        s = rng.integers(0, 4, n).astype(float)
        w = rng.integers(0, 4, n)
        w[:2] = 1
        assert metrics.weighted_auc(y, s, w) == pytest.approx(roc_auc_score(np.repeat(y, w), np.repeat(s, w)),
                                                               abs=1e-12)
    y, s = np.array([1, 0, 0]), np.array([0.5, 0.2, 0.9])
    assert metrics.weighted_auc(y, s, [1, 1, 0]) == 1.0 and metrics.weighted_auc(y, s, [1, 1, 1]) == 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(metrics.weighted_auc(y, s, [0, 1, 1])) and math.isnan(metrics.weighted_auc(y, s, [1, 0, 0]))


def test_a_row_holding_a_nan_or_an_empty_class_has_no_auc() -> None:
    """Candidates scored side by side: a row with a NaN among its positives or among its negatives, or a class
    without cases, is NaN; the other rows keep their AUC."""
    pos = np.array([[0.9, 0.8], [np.nan, 0.8], [0.9, 0.8], [0.9, 0.8]])
    neg = np.array([[0.1, 0.85, 0.2], [0.1, 0.85, 0.2], [0.1, np.nan, 0.2], [np.nan, np.nan, np.nan]])
    got = metrics.auc_split(pos, neg)
    assert got[0] == pytest.approx(5 / 6) and np.isnan(got[1:]).all()
    got = metrics.auc_split(neg, pos)  # more "positives" than "negatives": the other branch
    assert got[0] == pytest.approx(1 / 6) and np.isnan(got[1:]).all()
    assert math.isnan(metrics.auc_split(np.array([]), np.array([0.1, 0.2])))


def test_replicate_aucs_stay_exact_where_pair_counts_outgrow_float32() -> None:
    """Two large patients (2500 positive images against 3500 negative ones) make each replicate's pair sums pass
    2^24, where float32 rounds: every replicate is still the exact quotient of its integer pair counts (as a
    float64 product gives), and a replicate without positives is a float NaN."""
    rng = np.random.default_rng(26)
    groups = np.r_[np.zeros(2500, int), np.ones(3500, int), np.arange(2, 12)]
    y = np.r_[np.ones(2500, bool), np.zeros(3500, bool), rng.random(10) < 0.5]
    s = np.r_[rng.normal(1, 1, 2500), rng.normal(0, 1, 3500), rng.normal(size=10)]
    s[2500] = s[0]  # a tie: a half pair, so the sums are not all even numbers float32 could still hold
    pairs = metrics.group_pairs(y, s, groups, 12)
    counts = np.vstack(list(bootstrap_counts(12, 60, seed=1)))
    counts[0] = 0
    counts[0, 1] = 12  # the negative patient only
    got = metrics.group_pairs_block_aucs([pairs], counts)
    assert got.shape == (60, 1) and got.dtype == float and math.isnan(got[0, 0])
    twice_wins = (2 * pairs.wins).astype(np.int64).astype(object)  # exact integers
    for c, value in zip(counts[1:].astype(object), got[1:, 0], strict=True):
        twice_numerator = c[pairs.rows] @ (twice_wins @ c)
        total = (c @ pairs.n_pos.astype(int).astype(object)) * (c @ pairs.n_neg.astype(int).astype(object))
        assert value == float(Fraction(twice_numerator, 2 * total))
