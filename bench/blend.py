"""Blend figures for `make bench`: greedy selection at competition size, the AUC engine vs scikit-learn.

In:  nothing (synthetic predictions: 100 candidate runs x 33,126 OOF rows, 584 malignant, the
     competition's train size and prevalence; runs of varied strength, scale and tie density).
Out: {"blend_greedy_100x33126_s": wall seconds of one greedy fit (default params, ranks included; best of 3),
      "blend_greedy_100x33126_cpu_s": the same in process CPU seconds (robust to other load on the machine),
      "auc_max_abs_diff_vs_sklearn": largest |auc - roc_auc_score| over the 100 runs and their blend,
      "auc_speedup_vs_sklearn": sklearn time / engine time for those 101 AUCs,
      "blend_greedy_steps": additions the greedy fit made}
"""

from __future__ import annotations

import time

import numpy as np

N_ROWS = 33_126
N_POS = 584
N_RUNS = 100
SEED = 2020
REPEATS = 3  # best of, for the timings


def _candidates(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = np.zeros(N_ROWS, dtype=int)
    y[rng.choice(N_ROWS, N_POS, replace=False)] = 1
    latent = rng.normal(size=N_ROWS) + 1.8 * y
    P = np.empty((N_ROWS, N_RUNS))
    for j in range(N_RUNS):
        z = rng.uniform(0.2, 1.0) * latent + rng.uniform(0.6, 2.0) * rng.normal(size=N_ROWS)
        p = 1 / (1 + np.exp(-(z - 4) * rng.uniform(0.5, 2)))
        P[:, j] = np.round(p, int(rng.integers(2, 7)))  # some runs write few decimals: ties
    return P, y


def _best_of(fn, repeats: int = REPEATS, clock=time.perf_counter) -> tuple[float, object]:  # noqa: ANN001
    best, out = float("inf"), None
    for _ in range(repeats):
        start = clock()
        out = fn()
        best = min(best, clock() - start)
    return best, out


def run() -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    from kernels.metrics import auc
    from kit.blend.methods import apply_blend, fit_blend

    rng = np.random.default_rng(SEED)
    P, y = _candidates(rng)
    folds = rng.integers(0, 5, N_ROWS)
    greedy_s, fitted = _best_of(lambda: fit_blend("greedy", P, y, folds))
    greedy_cpu_s, _ = _best_of(lambda: fit_blend("greedy", P, y, folds), clock=time.process_time)
    columns = [P[:, j] for j in range(N_RUNS)] + [apply_blend(fitted, P)]
    engine_s, ours = _best_of(lambda: [auc(y, c) for c in columns])
    sklearn_s, theirs = _best_of(lambda: [roc_auc_score(y, c) for c in columns])
    diff = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
    return {
        "blend_greedy_100x33126_s": round(greedy_s, 3),
        "blend_greedy_100x33126_cpu_s": round(greedy_cpu_s, 3),
        "blend_greedy_steps": float(sum(fitted.info["picks"])),
        "auc_max_abs_diff_vs_sklearn": float(diff),
        "auc_speedup_vs_sklearn": round(sklearn_s / engine_s, 1),
    }
