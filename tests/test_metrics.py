"""The AUC engine (kernels.metrics) against independent references.

- AUC vs scikit-learn's roc_auc_score on random data with many ties, both class balances.
- Bootstrap: each replicate's weighted AUC vs explicitly resampled data scored by scikit-learn;
  patient resampling vs image resampling on data where every patient's images are copies.
- DeLong vs a slow O(n^2) implementation written from the 1988 paper's definitions, and the
  test's size under the null hypothesis.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from kernels.metrics import (
    age_bands,
    auc,
    auc_by_group,
    auc_columns,
    auc_split,
    bootstrap_auc_ci,
    bootstrap_aucs,
    bootstrap_counts,
    delong_ci,
    delong_covariance,
    delong_test,
    midranks,
    weighted_auc,
)


def _tied_data(rng: np.random.Generator, n: int, prevalence: float, levels: int) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < prevalence).astype(int)
    y[0], y[1] = 0, 1
    s = rng.integers(0, levels, n) + y * rng.integers(0, 2, n)  # few distinct values: many ties
    return y, s.astype(float)


@pytest.mark.parametrize("n,prevalence,levels", [(2, 0.5, 2), (7, 0.5, 3), (50, 0.1, 4), (300, 0.6, 10),
                                                  (1000, 0.02, 50), (5000, 0.9, 1000)])
def test_auc_equals_sklearn_with_ties(n: int, prevalence: float, levels: int) -> None:
    rng = np.random.default_rng(n)
    for _ in range(20):
        y, s = _tied_data(rng, n, prevalence, levels)
        assert abs(auc(y, s) - roc_auc_score(y, s)) <= 1e-12


def test_auc_continuous_scores_and_orientation() -> None:
    rng = np.random.default_rng(1)
    y = rng.random(3000) < 0.3
    s = rng.normal(size=3000) + y
    assert abs(auc(y, s) - roc_auc_score(y, s)) <= 1e-12
    assert abs(auc(y, -s) - (1 - auc(y, s))) <= 1e-12
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_auc_undefined_cases() -> None:
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([0, 0], [0.1, 0.2]))
    with pytest.raises(ValueError, match="3 labels but 2 scores"):
        auc([0, 1, 1], [0.1, 0.2])


@pytest.mark.parametrize("labels", [[-1, 1, 1], [1, 2, 2], ["no", "yes", "yes"], [0, 1, float("nan")], [0, 0.5, 1]])
def test_labels_other_than_0_1_are_refused_with_one_line(labels: list) -> None:
    for fn in (lambda y: auc(y, [0.1, 0.2, 0.3]), lambda y: delong_test(y, [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]),
               lambda y: bootstrap_auc_ci(y, [0.1, 0.2, 0.3], n_boot=5)):
        with pytest.raises(ValueError, match=r"labels must be 0 or 1, got") as err:
            fn(labels)
        assert "\n" not in str(err.value)
    assert auc([False, True, True], [0.1, 0.2, 0.3]) == auc([0.0, 1.0, 1.0], [0.1, 0.2, 0.3]) == 1.0


def test_nan_scores_are_refused_not_ranked() -> None:
    y = [0, 1, 0, 1]
    for fn in (lambda s: auc(y, s), lambda s: delong_test(y, s, [0.1, 0.2, 0.3, 0.4]),
               lambda s: bootstrap_auc_ci(y, s, n_boot=5)):
        with pytest.raises(ValueError, match=r"1 NaN score\(s\) \(at index 3\)"):
            fn([0.1, 0.9, 0.2, float("nan")])
    with pytest.raises(ValueError, match=r"auc_columns: 2 NaN score\(s\)"):
        auc_columns(y, np.c_[[0.1, 0.9, 0.2, float("nan")], [0.1, 0.9, 0.2, float("nan")]])


def test_auc_split_rows_and_columns_match_sklearn() -> None:
    rng = np.random.default_rng(2)
    y, _ = _tied_data(rng, 400, 0.2, 5)
    S = np.column_stack([_tied_data(rng, 400, 0.2, k)[1] + y * k / 10 for k in (2, 3, 8, 30)])
    S[:, 3] = rng.normal(size=400)
    expected = [roc_auc_score(y, S[:, j]) for j in range(S.shape[1])]
    np.testing.assert_allclose(auc_columns(y, S), expected, atol=1e-12)
    yb = y.astype(bool)
    np.testing.assert_allclose(auc_split(S[yb].T, S[~yb].T), expected, atol=1e-12)
    # more positives than negatives takes the other branch
    np.testing.assert_allclose(auc_split(S[~yb].T, S[yb].T), 1 - np.array(expected), atol=1e-12)
    assert abs(auc_split(S[yb, 0], S[~yb, 0]) - expected[0]) <= 1e-12


def test_midranks_match_scipy() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 20, 500).astype(float)
    np.testing.assert_array_equal(midranks(x), rankdata(x))


def test_weighted_auc_equals_auc_of_repeated_rows() -> None:
    rng = np.random.default_rng(4)
    y, s = _tied_data(rng, 80, 0.3, 6)
    w = rng.integers(0, 4, 80)
    expected = roc_auc_score(np.repeat(y, w), np.repeat(s, w))
    assert abs(weighted_auc(y, s, w) - expected) <= 1e-12


def test_bootstrap_replicates_equal_explicit_resampling_of_patients() -> None:
    """Each replicate = draw patients with replacement, stack their images, score with sklearn."""
    rng = np.random.default_rng(5)
    n = 240
    patients = rng.integers(0, 60, n)
    y, s = _tied_data(rng, n, 0.25, 8)
    reps = bootstrap_aucs(y, s, patients, n_boot=30, seed=11)
    ids = np.unique(patients)
    for counts, got in zip(bootstrap_counts(ids.size, 30, seed=11), reps, strict=True):
        rows = np.concatenate([np.repeat(np.flatnonzero(patients == p), c) for p, c in zip(ids, counts, strict=True)])
        if np.unique(y[rows]).size < 2:
            assert math.isnan(got)
        else:
            assert abs(got - roc_auc_score(y[rows], s[rows])) <= 1e-12


def test_patient_bootstrap_is_unmoved_by_copies_while_image_bootstrap_narrows() -> None:
    rng = np.random.default_rng(6)
    n, copies = 300, 4
    y = (rng.random(n) < 0.3).astype(int)
    s = rng.normal(size=n) + y
    ci_once = bootstrap_auc_ci(y, s, None, n_boot=400, seed=3)
    y4, s4, pat4 = np.repeat(y, copies), np.repeat(s, copies), np.repeat(np.arange(n), copies)
    ci_patients = bootstrap_auc_ci(y4, s4, pat4, n_boot=400, seed=3)
    ci_images = bootstrap_auc_ci(y4, s4, None, n_boot=400, seed=3)
    # the same patients drawn the same way: the interval is identical
    assert ci_patients.low == pytest.approx(ci_once.low, abs=1e-12)
    assert ci_patients.high == pytest.approx(ci_once.high, abs=1e-12)
    width = ci_once.high - ci_once.low
    assert (ci_images.high - ci_images.low) < 0.7 * width  # about 1/sqrt(4) of it: overconfident
    assert ci_patients.n_groups == n and ci_images.n_groups == n * copies


def test_bootstrap_interval_covers_and_matches_delong_width() -> None:
    rng = np.random.default_rng(7)
    n = 3000
    y = (rng.random(n) < 0.2).astype(int)
    s = rng.normal(size=n) + 1.2 * y  # true AUC = Phi(1.2 / sqrt 2) = 0.8019
    ci = bootstrap_auc_ci(y, s, n_boot=1000, seed=0)
    dl = delong_ci(y, s)
    assert ci.low < ci.auc < ci.high and ci.level == 0.95 and ci.n_boot == 1000
    assert ci.low < 0.8019 < ci.high
    assert (ci.high - ci.low) == pytest.approx(dl.high - dl.low, rel=0.15)


def test_bootstrap_degenerate_inputs() -> None:
    ci = bootstrap_auc_ci([1, 1, 1], [0.1, 0.2, 0.3], n_boot=10)
    assert math.isnan(ci.auc) and math.isnan(ci.low) and ci.n_boot == 0
    ci = bootstrap_auc_ci([0, 1], [0.1, 0.2], n_boot=50)  # most replicates hold one class only
    assert ci.n_boot < 50


def _delong_slow(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong, DeLong & Clarke-Pearson (1988) by their definitions: psi over all pairs, O(m n)."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    k = scores.shape[0]
    v10 = np.zeros((k, m))
    v01 = np.zeros((k, n))
    for r in range(k):
        psi = (pos[r][:, None] > neg[r][None, :]) + 0.5 * (pos[r][:, None] == neg[r][None, :])
        v10[r] = psi.mean(axis=1)
        v01[r] = psi.mean(axis=0)
    theta = v10.mean(axis=1)
    s10 = (v10 - theta[:, None]) @ (v10 - theta[:, None]).T / (m - 1)
    s01 = (v01 - theta[:, None]) @ (v01 - theta[:, None]).T / (n - 1)
    return theta, s10 / m + s01 / n


def test_delong_matches_slow_reference_with_ties() -> None:
    rng = np.random.default_rng(8)
    y, _ = _tied_data(rng, 150, 0.3, 4)
    s1 = rng.integers(0, 6, 150) + 1.0 * y
    s2 = np.round(rng.normal(size=150) + 0.5 * y, 1)
    s3 = s1 + rng.integers(0, 2, 150)
    scores = np.vstack([s1, s2, s3]).astype(float)
    theta, cov = _delong_slow(y, scores)
    aucs, fast_cov = delong_covariance(y, scores)
    np.testing.assert_allclose(aucs, theta, atol=1e-12)
    np.testing.assert_allclose(fast_cov, cov, atol=1e-12)
    result = delong_test(y, s1, s2)
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z = (theta[0] - theta[1]) / math.sqrt(var)
    assert result.z == pytest.approx(z, abs=1e-9)
    assert result.p == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), abs=1e-12)
    assert result.auc1 == pytest.approx(roc_auc_score(y, s1), abs=1e-12)


def test_delong_hand_example() -> None:
    """3 positives, 2 negatives; psi matrices worked out by hand."""
    y = np.array([1, 1, 1, 0, 0])
    s1 = np.array([0.9, 0.8, 0.3, 0.5, 0.1])  # psi rows (pos vs neg): [1,1], [1,1], [0,1] -> AUC 5/6
    s2 = np.array([0.9, 0.2, 0.3, 0.5, 0.1])  # psi rows: [1,1], [0,1], [0,1] -> AUC 4/6
    # V10 (per positive): s1 [1, 1, .5], s2 [1, .5, .5] -> differences [0, .5, 0]: sample variance 1/12, / m=3
    # V01 (per negative): s1 [2/3, 1], s2 [1/3, 1] -> differences [1/3, 0]: sample variance 1/18, / n=2
    var = 1 / 36 + 1 / 36
    result = delong_test(y, s1, s2)
    assert result.auc1 == pytest.approx(5 / 6) and result.auc2 == pytest.approx(4 / 6)
    assert result.se == pytest.approx(math.sqrt(var), abs=1e-12)
    assert result.z == pytest.approx((1 / 6) / math.sqrt(var), abs=1e-12)


def test_delong_identical_and_null_calibration() -> None:
    rng = np.random.default_rng(9)
    y = (rng.random(200) < 0.3).astype(int)
    s = rng.normal(size=200) + y
    same = delong_test(y, s, s * 2 + 1)  # same ranking
    assert same.diff == 0 and same.p == 1.0
    pvals = []
    for _ in range(300):
        y = (rng.random(200) < 0.3).astype(int)
        latent = rng.normal(size=200) + y
        pvals.append(delong_test(y, latent + rng.normal(size=200), latent + rng.normal(size=200)).p)
    share = np.mean(np.asarray(pvals) < 0.05)
    assert 0.01 <= share <= 0.10  # a correctly sized test rejects about 5 % of true nulls


def test_delong_detects_a_real_difference() -> None:
    rng = np.random.default_rng(10)
    y = (rng.random(2000) < 0.2).astype(int)
    latent = rng.normal(size=2000) + y
    result = delong_test(y, latent + 0.3 * rng.normal(size=2000), latent + 2.0 * rng.normal(size=2000))
    assert result.diff > 0.05 and result.p < 1e-6


def test_auc_by_group_and_age_bands() -> None:
    rng = np.random.default_rng(11)
    y, s = _tied_data(rng, 500, 0.3, 7)
    folds = rng.integers(0, 4, 500)
    groups = auc_by_group(y, s, folds)
    assert list(groups) == [0, 1, 2, 3]
    for k, g in groups.items():
        mask = folds == k
        assert g.n == mask.sum() and g.n_pos == y[mask].sum()
        assert abs(g.auc - roc_auc_score(y[mask], s[mask])) <= 1e-12
    sex = np.array(["male", "female"], dtype=object)[rng.integers(0, 2, 500)]
    assert set(auc_by_group(y, s, sex)) == {"male", "female"}
    one_class = auc_by_group([0, 0, 1], [0.1, 0.2, 0.3], ["a", "a", "b"])
    assert math.isnan(one_class["a"].auc) and one_class["a"].n == 2
    labels = age_bands([0, 29, 30, 44, 45, 59, 60, 74, 75, 90, -1, float("nan")])
    assert labels.tolist() == ["<30", "<30", "30-44", "30-44", "45-59", "45-59", "60-74", "60-74", "75+", "75+",
                               "missing", "missing"]
