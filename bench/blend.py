"""Blend figures for `make bench`: greedy selection at competition size, the AUC engine vs scikit-learn,
and the whole `kit blend` command over real run folders.

In:  nothing (synthetic predictions: 100 candidate runs x 33,126 OOF rows, 584 malignant, the
     competition's train size and prevalence; runs of varied strength, scale and tie density).
     `write_competition_runs` writes 50 such runs (about 16 images per patient, 10,982 test rows,
     one baseline) as real run folders for the end-to-end figures.
Out: {"blend_greedy_100x33126_s": wall seconds of one greedy fit (default params, ranks included; best of 3),
      "blend_greedy_100x33126_cpu_s": the same in process CPU seconds (robust to other load on the machine),
      "auc_max_abs_diff_vs_sklearn": largest |auc - roc_auc_score| over the 100 runs and their blend,
      "auc_speedup_vs_sklearn": sklearn time / engine time for those 101 AUCs,
      "blend_greedy_steps": additions the greedy fit made,
      "blend_end_to_end_50x33126_s": wall seconds of `kit blend` (greedy, defaults) over 50 run
          folders in a fresh process, nothing cached yet (cold: no run statistics, an empty blend cache
          of its own, so an earlier bench never warms it),
      "blend_end_to_end_50x33126_warm_s": the same command again (run statistics, fits, figures and
          plots read from their caches),
      "blend_end_to_end_50x33126_warm_plus1_s": again after adding a 51st run (run statistics of the 50
          cached, greedy replaying its stored paths, the rest computed),
      "..._cpu_s" of each: user + system CPU seconds of the process and its plot workers (robust to
          other load; more than the wall time where the work ran on both cores),
      "blend_end_to_end_50x33126_peak_mb": the largest peak RSS of any of those processes,
      "blend_bootstrap_group_vs_row_speedup": one run's 1,000 patient replicates, the row engine's
          time / the group engine's (same replicates; measured side by side here)}
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_ROWS = 33_126
N_POS = 584
N_RUNS = 100
SEED = 2020
REPEATS = 3  # best of, for the timings
E2E_RUNS = 50  # runs blended by the end-to-end figures
N_TEST = 10_982  # the competition's test images
IMAGES_PER_PATIENT = 16  # 33,126 images of 2,056 patients in the competition's train set
N_FOLDS = 5
PATIENT_SD = 0.7  # spread of the patient effect shared by a patient's images (clustered errors)
BACKBONES = ("efficientnet_b0", "efficientnet_b3", "resnet50", "densenet121", "mobilenet_v2")


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


def _competition_runs(rng: np.random.Generator, n_runs: int) -> dict[str, np.ndarray]:
    """Labels, patients, folds, metadata and `n_runs` OOF/test prediction columns with patient-level signal."""
    n_pat = N_ROWS // IMAGES_PER_PATIENT
    patients = np.sort(rng.integers(0, n_pat, N_ROWS))
    y = np.zeros(N_ROWS, dtype=int)
    y[rng.choice(N_ROWS, N_POS, replace=False)] = 1
    latent = rng.normal(size=N_ROWS) + PATIENT_SD * rng.normal(size=n_pat)[patients] + 1.8 * y
    t_latent = rng.normal(size=N_TEST) + 1.8 * (rng.random(N_TEST) < N_POS / N_ROWS)
    oof, test = np.empty((N_ROWS, n_runs)), np.empty((N_TEST, n_runs))
    for j in range(n_runs):
        w, noise, slope = rng.uniform(0.2, 1.0), rng.uniform(0.6, 2.0), rng.uniform(0.5, 2)
        decimals = int(rng.integers(2, 7))  # some runs write few decimals: ties
        for out, lat in ((oof, latent), (test, t_latent)):
            z = w * lat + noise * rng.normal(size=lat.size)
            out[:, j] = np.round(1 / (1 + np.exp(-(z - 4) * slope)), decimals)
    return {"y": y, "patients": patients, "folds": rng.integers(0, N_FOLDS, n_pat)[patients],
            "sex": rng.integers(0, 3, N_ROWS), "age": rng.integers(2, 18, N_ROWS) * 5.0,
            "site": rng.integers(0, 7, N_ROWS), "oof": oof, "test": test}


def write_run_folder(root: Path, experiment: str, data: dict[str, np.ndarray], column: int,
                     backbone: str, role: str = "model") -> Path:
    """``root/<experiment>/v1/`` as a kernel and `kit pull` leave it (oof.csv, test_pred.csv,
    manifest.json with real checksums, run.json): the files `kit blend` reads."""
    import pandas as pd

    from kernels.config import DataSection, Experiment, ModelSection, TrainSection, to_dict
    from kernels.contracts import MANIFEST_FILE, MANIFEST_SCHEMA, OOF_FILE, TEST_PRED_FILE, file_digest, write_csv
    from kit.run.folders import write_run_record

    folder = root / experiment / "v1"
    folder.mkdir(parents=True)
    names = np.array([f"ISIC_{i:07d}" for i in range(N_ROWS)])
    write_csv(pd.DataFrame({"image_name": names, "target": data["y"], "pred": data["oof"][:, column],
                            "fold": data["folds"], "patient_id": [f"IP_{p:07d}" for p in data["patients"]],
                            "sex": data["sex"], "age_approx": data["age"],
                            "anatom_site_general_challenge": data["site"]}), folder / OOF_FILE)
    write_csv(pd.DataFrame({"image_name": [f"ISIC_{9_000_000 + i:07d}" for i in range(N_TEST)],
                            "target": data["test"][:, column]}), folder / TEST_PRED_FILE)
    config = to_dict(Experiment(name=experiment, data=DataSection(dataset="", image_size=256, folds=N_FOLDS),
                                model=ModelSection(backbone=backbone, weights="imagenet"), train=TrainSection()))
    manifest = {
        "schema": MANIFEST_SCHEMA, "experiment": experiment, "config": config, "seed": column, "role": role,
        "versions": {"python": "3.11", "tensorflow": "2.21.0", "keras": "3.15.1", "numpy": "2", "backend": "tensorflow"},
        "hardware": {"kind": "tpu", "replicas": 8, "backend": "jax"},
        "folds": [{"fold": k, "auc": 0.5, "best_epoch": 1, "epochs_run": 1, "epoch_times_s": [60.0], "n_val": 1}
                  for k in range(N_FOLDS)],
        "oof_auc": 0.5, "timings": {"total_s": 1.0},
        "files": {name: file_digest(folder / name) for name in (OOF_FILE, TEST_PRED_FILE)},
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    write_run_record(folder, experiment=experiment, version=1, source="kaggle", kernel=None,
                     content_hash="0" * 64, finished_at="2026-01-01T00:00:00Z")
    return folder


def write_competition_runs(root: Path, n_runs: int = E2E_RUNS, seed: int = SEED) -> dict[str, np.ndarray]:
    """`n_runs` run folders at the competition's size under `root` (run 0 is a baseline), and
    an extra prediction column (index `n_runs`) for a run added later; returns the data."""
    data = _competition_runs(np.random.default_rng(seed), n_runs + 1)
    for j in range(n_runs):
        write_run_folder(root, f"run-{j:02d}", data, j, BACKBONES[j % len(BACKBONES)],
                         "baseline" if j == 0 else "model")
    return data


RECIPE = """[runs]
root = "{root}"
[method]
name = "greedy"
"""


def _timed_command(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """(wall s, user + system CPU s, peak RSS MB) of one process running `argv` to completion."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {err[-500:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0


def end_to_end(tmp: Path) -> dict[str, float]:
    """`kit blend` of 50 runs at the competition's size: cold, warm, and warm after adding a run."""
    runs = tmp / "runs"
    data = write_competition_runs(runs)
    recipe = tmp / "e2e.toml"
    recipe.write_text(RECIPE.format(root=runs))
    argv = [sys.executable, "-c", "import sys; from kit.cli import main; sys.exit(main(sys.argv[1:]))",
            "blend", str(recipe), "--out", str(tmp / "out")]
    env = {**os.environ, "KIT_CACHE_DIR": str(tmp / "kit-cache")}  # a cache of this bench only
    env.pop("KIT_BLEND_CACHE", None)
    cold = _timed_command(argv, env)
    warm = _timed_command(argv, env)
    write_run_folder(runs, f"run-{E2E_RUNS:02d}", data, E2E_RUNS, BACKBONES[0])
    plus1 = _timed_command(argv, env)
    key = f"blend_end_to_end_{E2E_RUNS}x{N_ROWS}"
    out = {}
    for suffix, (wall, cpu, _) in (("", cold), ("_warm", warm), ("_warm_plus1", plus1)):
        out[f"{key}{suffix}_s"] = round(wall, 2)
        out[f"{key}{suffix}_cpu_s"] = round(cpu, 2)
    out[f"{key}_peak_mb"] = round(max(cold[2], warm[2], plus1[2]), 1)
    return out


def engine_speedup() -> float:
    """Row engine time / group engine time for one run's patient bootstrap at the competition's size."""
    import kernels.metrics as metrics

    data = _competition_runs(np.random.default_rng(SEED), 1)
    args = (data["y"], data["oof"][:, 0], data["patients"], metrics.DEFAULT_N_BOOT // 2)
    group_s, grouped = _best_of(lambda: metrics.bootstrap_aucs(*args), clock=time.process_time)
    saved = metrics.GROUP_ENGINE_MAX_RATIO
    metrics.GROUP_ENGINE_MAX_RATIO = 0  # the row engine, as before
    try:
        row_s, rows = _best_of(lambda: metrics.bootstrap_aucs(*args), repeats=1, clock=time.process_time)
    finally:
        metrics.GROUP_ENGINE_MAX_RATIO = saved
    if not np.allclose(grouped, rows, rtol=0, atol=1e-12, equal_nan=True):
        raise RuntimeError("the two bootstrap engines disagree")
    return round(row_s / group_s, 1)


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
    with tempfile.TemporaryDirectory() as tmp:
        e2e = end_to_end(Path(tmp))
    return {
        **e2e,
        "blend_bootstrap_group_vs_row_speedup": engine_speedup(),
        "blend_greedy_100x33126_s": round(greedy_s, 3),
        "blend_greedy_100x33126_cpu_s": round(greedy_cpu_s, 3),
        "blend_greedy_steps": float(sum(fitted.info["picks"])),
        "auc_max_abs_diff_vs_sklearn": float(diff),
        "auc_speedup_vs_sklearn": round(sklearn_s / engine_s, 1),
    }
