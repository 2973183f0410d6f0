"""The paired patient bootstrap (`kernels.metrics.paired_bootstrap_test`): its size under
clustered patients, its power, and its replicates.

Size simulation: patients hold several images; labels cluster within patients (a patient-level
propensity) and so do both models' errors (a patient-level offset per model, independent between
the models). Both models have the same true AUC, so every rejection is a false one. An image-level
DeLong test treats the images as independent and rejects far more often than 5 %; the patient
bootstrap must stay near 5 %.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from kernels.metrics import bootstrap_auc_matrix, bootstrap_aucs, delong_test, paired_bootstrap_test

ALPHA = 0.05
N_SIM = 300
N_BOOT = 200
N_PATIENTS = 60
IMAGES_PER_PATIENT = 5
# Rejections of a test of exact size 5 % over N_SIM independent simulations are Binomial(N_SIM,
# 0.05): 15 expected, 99.8 % of counts within [ppf(0.001), ppf(0.999)] = [5, 28], i.e. 1.7-9.3 %.
SIZE_LOW, SIZE_HIGH = binom.ppf(0.001, N_SIM, ALPHA), binom.ppf(0.999, N_SIM, ALPHA)


def _clustered(rng: np.random.Generator, effect: float = 0.0) -> tuple[np.ndarray, ...]:
    """Labels and two models' scores; model 1 is better by `effect` (0: equal true AUC)."""
    pid = np.repeat(np.arange(N_PATIENTS), IMAGES_PER_PATIENT)
    propensity = rng.normal(size=N_PATIENTS)[pid]
    y = (propensity + 0.7 * rng.normal(size=pid.size) > 1.0).astype(int)
    s1 = (1.0 + effect) * y + rng.normal(size=N_PATIENTS)[pid] + 0.5 * rng.normal(size=pid.size)
    s2 = 1.0 * y + rng.normal(size=N_PATIENTS)[pid] + 0.5 * rng.normal(size=pid.size)
    return y, s1, s2, pid


def test_paired_patient_bootstrap_holds_its_size_where_delong_does_not() -> None:
    rng = np.random.default_rng(0)
    boot = delong = 0
    for i in range(N_SIM):
        y, s1, s2, pid = _clustered(rng)
        boot += paired_bootstrap_test(y, s1, s2, pid, n_boot=N_BOOT, seed=i).p < ALPHA
        delong += delong_test(y, s1, s2).p < ALPHA
    assert SIZE_LOW <= boot <= SIZE_HIGH, f"patient bootstrap rejected {boot} of {N_SIM} true nulls"
    assert delong > SIZE_HIGH, f"DeLong rejected {delong} of {N_SIM}: the simulation does not cluster"


def test_paired_bootstrap_finds_a_real_difference() -> None:
    rng = np.random.default_rng(1)
    y, s1, s2, pid = _clustered(rng, effect=2.0)
    result = paired_bootstrap_test(y, s1, s2, pid, n_boot=500)
    assert result.diff > 0 and result.p < 0.01 and 0 < result.low < result.diff < result.high
    assert result.n_groups == N_PATIENTS and result.n_boot == 500


def test_identical_scores_give_no_evidence() -> None:
    y, s1, _, pid = _clustered(np.random.default_rng(2))
    result = paired_bootstrap_test(y, s1, s1.copy(), pid, n_boot=100)
    assert result.diff == 0 and result.p == 1.0 and result.se == 0


def test_paired_replicates_are_each_runs_own_replicates() -> None:
    y, s1, s2, pid = _clustered(np.random.default_rng(3))
    both = bootstrap_auc_matrix(y, np.vstack([s1, s2]), pid, n_boot=50, seed=4)
    np.testing.assert_allclose(both[:, 0], bootstrap_aucs(y, s1, pid, n_boot=50, seed=4))
    np.testing.assert_allclose(both[:, 1], bootstrap_aucs(y, s2, pid, n_boot=50, seed=4))
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        paired_bootstrap_test(y * 2, s1, s2, pid)
