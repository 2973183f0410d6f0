"""Blending at the competition's size: the patient-level bootstrap engine, its coverage on
clustered data, and the per-run statistics cache (`kit.blend.run_stats`).

- The group engine (per-patient pair counts) gives exactly the replicates of the row engine, and
  both equal explicit resampling (tests/test_metrics.py checks that against scikit-learn).
- Coverage: percentile intervals resampling patients cover the true AUC of clustered data about
  95 % of the time (within Binomial error); resampling images does not.
- The cache beside a run: written once, read back with identical figures, recomputed when
  oof.csv or the bootstrap settings change; paired tests from cached replicates equal fresh ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers.blend_fixtures import make_cohort, make_run, signal_preds
from scipy.stats import binom, norm

import kernels.metrics as metrics
from kernels.metrics import (
    auc,
    bootstrap_auc_ci,
    bootstrap_auc_matrix,
    delong_ci,
    paired_bootstrap_test,
    quantile_mc_error,
)
from kit.blend import analysis
from kit.blend.run_stats import STATS_FILE, compare_stats, run_stats
from kit.run.folders import load_run

LEVEL = 0.95
N_SIM = 400
N_BOOT = 200
N_PATIENTS = 80
IMAGES_PER_PATIENT = 5
SHIFT = 1.0  # positives' score shift
PATIENT_SD, IMAGE_SD = 1.0, 0.5  # a patient offset shared by the patient's images, and image noise
# An interval of exact 95 % coverage covers in Binomial(N_SIM, 0.95) of N_SIM independent
# simulations: 99.8 % of counts lie within [ppf(0.001), ppf(0.999)] = [367, 392] of 400.
COVER_LOW, COVER_HIGH = binom.ppf(0.001, N_SIM, LEVEL), binom.ppf(0.999, N_SIM, LEVEL)


def _clustered(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels clustered within patients (a patient propensity) and scores too (a patient offset)."""
    pid = np.repeat(np.arange(N_PATIENTS), IMAGES_PER_PATIENT)
    y = (rng.normal(size=N_PATIENTS)[pid] + 0.7 * rng.normal(size=pid.size) > 1.0).astype(int)
    s = SHIFT * y + PATIENT_SD * rng.normal(size=N_PATIENTS)[pid] + IMAGE_SD * rng.normal(size=pid.size)
    return y, s, pid


def _true_auc(n_datasets: int = 4000) -> float:
    """The estimator's expectation, by simulation (its Monte Carlo error about 0.001, far below the
    intervals' half-width of about 0.1)."""
    rng = np.random.default_rng(12345)
    return float(np.mean([auc(*_clustered(rng)[:2]) for _ in range(n_datasets)]))


def test_patient_intervals_cover_clustered_data_at_their_level() -> None:
    truth = _true_auc()
    rng = np.random.default_rng(27)
    patients = images = 0
    for i in range(N_SIM):
        y, s, pid = _clustered(rng)
        ci = bootstrap_auc_ci(y, s, pid, n_boot=N_BOOT, seed=i)
        patients += ci.low <= truth <= ci.high
        ci_img = delong_ci(y, s)  # images as if independent
        images += ci_img.low <= truth <= ci_img.high
    assert COVER_LOW <= patients <= COVER_HIGH, f"patient intervals covered {patients} of {N_SIM}"
    assert images < COVER_LOW, f"image-level intervals covered {images} of {N_SIM}: the simulation does not cluster"


def test_group_engine_gives_the_row_engines_replicates(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    pid = rng.integers(0, 90, 600)
    y = (rng.random(600) < 0.1).astype(int)
    scores = np.round(rng.normal(size=(3, 600)) + y, 1)  # ties within and across patients
    grouped = bootstrap_auc_matrix(y, scores, pid, n_boot=300, seed=5)
    monkeypatch.setattr(metrics, "GROUP_ENGINE_MAX_RATIO", 0)  # force the row engine
    rows = bootstrap_auc_matrix(y, scores, pid, n_boot=300, seed=5)
    np.testing.assert_array_equal(np.isnan(grouped), np.isnan(rows))
    np.testing.assert_allclose(grouped, rows, rtol=0, atol=1e-15)
    for minority_negative in (1 - y,):  # positives the larger class: the engine swaps roles
        monkeypatch.setattr(metrics, "GROUP_ENGINE_MAX_RATIO", 64)
        a = bootstrap_auc_matrix(minority_negative, scores, pid, n_boot=100, seed=1)
        monkeypatch.setattr(metrics, "GROUP_ENGINE_MAX_RATIO", 0)
        np.testing.assert_allclose(a, bootstrap_auc_matrix(minority_negative, scores, pid, n_boot=100, seed=1),
                                   rtol=0, atol=1e-15)


def test_monte_carlo_error_matches_the_order_statistic_theory() -> None:
    """MC error of a bootstrap quantile: sqrt(q (1 - q) / B) / density at the quantile."""
    rng = np.random.default_rng(0)
    q = 0.025
    for b in (1600, 6400):
        theory = math.sqrt(q * (1 - q) / b) / norm.pdf(norm.ppf(q))
        mean = np.mean([quantile_mc_error(rng.normal(size=b), q) for _ in range(100)])  # one estimate is noisy
        assert mean == pytest.approx(theory, rel=0.15)
    assert math.isnan(quantile_mc_error(np.array([0.5]), q))


def _runs(tmp_path: Path, n_runs: int = 3) -> list:
    cohort = make_cohort(n=400, n_test=40, prevalence=0.2, images_per_patient=4)
    for j in range(n_runs):
        make_run(tmp_path, f"exp-{j}", cohort, *signal_preds(cohort, 0.6 + 0.3 * j, seed=j))
    return cohort, [load_run(tmp_path / f"exp-{j}" / "v1") for j in range(n_runs)]


def test_cache_is_written_once_and_read_back_with_the_same_figures(tmp_path: Path) -> None:
    cohort, runs = _runs(tmp_path)
    first = run_stats(runs[0], 300, seed=1)
    path = runs[0].info.folder / STATS_FILE
    assert not first.cached and path.is_file()
    again = run_stats(runs[0], 300, seed=1)
    assert again.cached and again.ci == first.ci and again.fold_auc == first.fold_auc
    np.testing.assert_array_equal(again.replicates, first.replicates)
    fresh = bootstrap_auc_ci(cohort.y, runs[0].oof["pred"], cohort.patients, n_boot=300, seed=1)
    assert (again.ci.auc, again.ci.low, again.ci.high, again.ci.n_boot) == (fresh.auc, fresh.low, fresh.high, fresh.n_boot)
    assert again.patients and again.ci.n_groups == fresh.n_groups


def test_cache_is_recomputed_when_settings_or_oof_change(tmp_path: Path) -> None:
    cohort, runs = _runs(tmp_path, 1)
    base = run_stats(runs[0], 200, seed=0)
    assert not run_stats(runs[0], 250, seed=0).cached  # other replicate count
    assert not run_stats(runs[0], 250, seed=3).cached  # other seed
    assert run_stats(runs[0], 250, seed=3).cached
    # the run's OOF replaced (a re-run into the same folder): the key (its sha256) changes
    make_run(tmp_path, "exp-0", cohort, *signal_preds(cohort, 2.5, seed=9))
    changed = run_stats(load_run(tmp_path / "exp-0" / "v1"), 200, seed=0)
    assert not changed.cached and changed.auc > base.auc
    data = json.loads((tmp_path / "exp-0" / "v1" / STATS_FILE).read_text())
    assert data["key"]["oof_sha256"] == changed.oof_sha256 and data["key"]["n_boot"] == 200


def test_a_broken_cache_file_is_recomputed(tmp_path: Path) -> None:
    _, runs = _runs(tmp_path, 1)
    path = runs[0].info.folder / STATS_FILE
    path.write_text("{not json")
    stats = run_stats(runs[0], 100, seed=0)
    assert not stats.cached and json.loads(path.read_text())["key"]["n_boot"] == 100


def test_paired_tests_from_cached_replicates_equal_fresh_ones(tmp_path: Path) -> None:
    cohort, runs = _runs(tmp_path)
    a, b = (run_stats(r, 400, seed=2) for r in runs[:2])
    kept = compare_stats(run_stats(runs[0], 400, seed=2), run_stats(runs[1], 400, seed=2))
    fresh = paired_bootstrap_test(cohort.y, runs[0].oof["pred"], runs[1].oof["pred"], cohort.patients, n_boot=400, seed=2)
    assert kept == fresh
    assert analysis.compare(runs[0], runs[1], 400, 2, (a, b)) == fresh
    assert compare_stats(a, run_stats(runs[1], 300, seed=2)) is None  # other replicates: no pairing


def test_shuffled_rows_pair_but_other_patients_do_not(tmp_path: Path) -> None:
    cohort, _ = _runs(tmp_path, 0)
    a_oof, a_test = signal_preds(cohort, 1.0, seed=1)
    make_run(tmp_path, "a", cohort, a_oof, a_test)
    make_run(tmp_path, "shuffled", cohort, a_oof, a_test, oof_edit=lambda f: f.sample(frac=1.0, random_state=0))
    make_run(tmp_path, "other-patients", cohort, a_oof, a_test,
             oof_edit=lambda f: f.assign(patient_id=f["patient_id"].to_numpy()[::-1]))
    a, shuffled, other = (run_stats(load_run(tmp_path / n / "v1"), 200) for n in ("a", "shuffled", "other-patients"))
    assert a.pairing_digest == shuffled.pairing_digest and a.pairing_digest != other.pairing_digest
    same = compare_stats(a, shuffled)
    assert same is not None and same.diff == 0 and same.p == 1.0
    assert compare_stats(a, other) is None


def test_correlation_heatmap_of_fifty_runs_stays_a_readable_size(tmp_path: Path) -> None:
    from PIL import Image

    from kit.blend.plots import DPI, MAX_HEATMAP_INCH, plot_correlation

    n = 50
    rho = np.corrcoef(np.random.default_rng(0).normal(size=(n, 200)))
    plot_correlation(tmp_path / "c.png", [f"experiment-{j:02d}/v1" for j in range(n)], rho)
    width, height = Image.open(tmp_path / "c.png").size
    assert max(width, height) <= (MAX_HEATMAP_INCH + 3) * DPI  # 50 cells of 0.62 in would be 33 in a side
