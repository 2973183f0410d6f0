"""Builders of synthetic run folders for the blend / runs / report tests (no TensorFlow needed).

`make_run` writes what a kernel leaves (oof.csv, test_pred.csv, manifest.json with real
checksums) plus run.json, through the writers of `kernels.contracts`; `signal_preds` makes
predictions of a chosen strength for shared labels. tests/test_blend_fixtures.py checks the builders
themselves produce folders that pass the contracts.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kernels.config import DataSection, Experiment, ModelSection, ScratchSection, TrainSection, to_dict
from kernels.contracts import (
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
    OOF_FILE,
    TEST_PRED_FILE,
    file_digest,
    write_csv,
)
from kernels.metrics import auc
from kit.blend.memo import key_of
from kit.run.folders import write_run_record


@dataclasses.dataclass(frozen=True)
class Cohort:
    """Shared labels, folds, patients and metadata for a set of synthetic runs."""

    names: np.ndarray
    y: np.ndarray
    folds: np.ndarray
    patients: np.ndarray
    sex: np.ndarray
    age: np.ndarray
    site: np.ndarray
    test_names: np.ndarray
    latent: np.ndarray
    test_latent: np.ndarray


def make_cohort(n: int = 400, n_test: int = 150, prevalence: float = 0.15, folds: int = 4, seed: int = 0,
                images_per_patient: int = 4) -> Cohort:
    """Labels with a latent malignancy signal; patients hold several images and sit in one fold."""
    rng = np.random.default_rng(seed)
    n_pat = max(n // images_per_patient, folds)
    patients = np.sort(rng.integers(0, n_pat, n))
    patient_fold = rng.integers(0, folds, n_pat)
    y = (rng.random(n) < prevalence).astype(int)
    y[:2] = [0, 1]
    latent = rng.normal(size=n) + 1.5 * y
    test_latent = rng.normal(size=n_test) + 1.5 * (rng.random(n_test) < prevalence)
    return Cohort(
        names=np.array([f"ISIC_{i:07d}" for i in range(n)]),
        y=y,
        folds=patient_fold[patients],
        patients=np.array([f"IP_{p:06d}" for p in patients]),
        sex=rng.integers(0, 3, n),
        age=np.where(rng.random(n) < 0.1, -1, rng.integers(2, 18, n) * 5),
        site=rng.integers(0, 7, n),
        test_names=np.array([f"ISIC_{9_000_000 + i:07d}" for i in range(n_test)]),
        latent=latent,
        test_latent=test_latent,
    )


def signal_preds(cohort: Cohort, strength: float, seed: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """OOF and test probabilities: sigmoid(strength * latent + noise); strength 0 is pure noise."""
    rng = np.random.default_rng(seed)
    oof = strength * cohort.latent + rng.normal(size=cohort.latent.size)
    test = strength * cohort.test_latent + rng.normal(size=cohort.test_latent.size)
    return 1 / (1 + np.exp(-scale * oof)), 1 / (1 + np.exp(-scale * test))


def experiment_config(name: str, backbone: str = "efficientnet_b0", image_size: int = 64, epochs: int = 3,
                      weights: str = "none", tags: Sequence[str] = (), scratch: Mapping[str, Any] | None = None,
                      dataset: str = "data/synth", tta: int = 0) -> dict[str, Any]:
    exp = Experiment(
        name=name, tags=tuple(tags),
        data=DataSection(dataset=dataset, image_size=image_size, folds=4),
        model=ModelSection(backbone=backbone, weights=weights, scratch=ScratchSection(**(scratch or {}))),
        train=TrainSection(epochs=epochs, tta=tta),
    )
    return to_dict(exp)


def make_run(root: Path, experiment: str, cohort: Cohort, oof_pred: np.ndarray, test_pred: np.ndarray,
             version: int = 1, config: Mapping[str, Any] | None = None, with_meta: bool = True,
             oof_edit: Any = None, test_edit: Any = None, tta_gain: float | None = None,
             epoch_time: float = 2.0, manifest_extra: Mapping[str, Any] | None = None,
             history: bool = False) -> Path:
    """Write ``root/<experiment>/v<version>/`` as a kernel + kit would; `oof_edit` / `test_edit`
    (frame -> frame) corrupt the CSVs before the manifest records their checksums;
    `manifest_extra` adds top-level manifest keys (``{"role": "baseline"}``); `history` writes a
    history.json of 5 epochs per fold."""
    folder = root / experiment / f"v{version}"
    folder.mkdir(parents=True, exist_ok=True)
    oof = pd.DataFrame({"image_name": cohort.names, "target": cohort.y, "pred": oof_pred, "fold": cohort.folds})
    if with_meta:
        oof["patient_id"] = cohort.patients
        oof["sex"] = cohort.sex
        oof["age_approx"] = cohort.age
        oof["anatom_site_general_challenge"] = cohort.site
    test = pd.DataFrame({"image_name": cohort.test_names, "target": test_pred})
    if oof_edit is not None:
        oof = oof_edit(oof)
    if test_edit is not None:
        test = test_edit(test)
    write_csv(oof, folder / OOF_FILE)
    write_csv(test, folder / TEST_PRED_FILE)
    fold_rows = []
    for k in np.unique(cohort.folds):
        mask = cohort.folds == k
        a = auc(cohort.y[mask], np.asarray(oof_pred)[mask]) if len(oof) == len(cohort.y) else 0.5
        row = {"fold": int(k), "auc": a, "best_epoch": 1, "epochs_run": 3, "epoch_times_s": [epoch_time] * 3,
               "n_val": int(mask.sum())}
        if tta_gain is not None:
            row["auc_no_tta"] = a - tta_gain
        fold_rows.append(row)
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "experiment": experiment,
        "config": dict(config or experiment_config(experiment)),
        "versions": {"python": "3.11", "tensorflow": "2.21.0", "keras": "3.15.1", "numpy": "2", "backend": "tensorflow"},
        "seed": 42,
        "hardware": {"kind": "cpu", "replicas": 1, "backend": "tensorflow"},
        "folds": fold_rows,
        "oof_auc": 0.5,
        "timings": {"total_s": 10.0},
        "files": {name: file_digest(folder / name) for name in (OOF_FILE, TEST_PRED_FILE)},
        **dict(manifest_extra or {}),
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    if history:
        epochs = np.arange(1, 6)
        folds_hist = [{"fold": int(k), "best_epoch": 4, "loss": (0.7 / epochs).tolist(),
                       "val_loss": (0.6 / epochs + 0.02 * epochs).tolist(), "auc": (1 - 0.4 / epochs).tolist(),
                       "val_auc": (0.8 - 0.2 / epochs - 0.01 * k).tolist()} for k in np.unique(cohort.folds)]
        (folder / "history.json").write_text(json.dumps({"schema": "kit.history/1", "folds": folds_hist}))
    write_run_record(folder, experiment=experiment, version=version, source="local", kernel=None,
                     content_hash="0" * 64, finished_at="2026-01-01T00:00:00Z")
    return folder


BASELINE_MANIFEST = {"role": "baseline", "baseline": {"model": "colour statistics + logistic regression"}}


def make_baseline_run(root: Path, cohort: Cohort, strength: float, seed: int = 99) -> Path:
    """A baseline run folder (manifest role = baseline), as `kit baseline` writes one."""
    oof, test = signal_preds(cohort, strength, seed=seed)
    cfg = experiment_config("baseline", "baseline-logreg", tags=["baseline"])  # tagged as kit baseline tags it
    return make_run(root, "baseline", cohort, oof, test, config=cfg, manifest_extra=BASELINE_MANIFEST)


def make_sample_submission(folder: Path, cohort: Cohort) -> Path:
    """A dataset folder with sample_submission.csv and train.csv (string metadata, as Kaggle's)."""
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"image_name": cohort.test_names, "target": 0}).to_csv(folder / "sample_submission.csv", index=False)
    pd.DataFrame({
        "image_name": cohort.names, "patient_id": cohort.patients,
        "sex": np.array(["male", "female", np.nan], dtype=object)[cohort.sex],
        "age_approx": np.where(cohort.age < 0, np.nan, cohort.age),
        "anatom_site_general_challenge": np.array(["head/neck", "upper extremity", "lower extremity", "torso",
                                                   "palms/soles", "oral/genital", np.nan], dtype=object)[cohort.site],
        "target": cohort.y,
    }).to_csv(folder / "train.csv", index=False)
    return folder


class PathsInMemory:
    """Greedy's path store (`kit.blend.methods.PathStore`) in memory; `kit.blend.memo.Memo` keeps them on disk."""

    def __init__(self) -> None:
        self.paths: dict[str, object] = {}

    def load(self, namespace: str, parts: object) -> object:
        return self.paths.get(key_of(namespace, parts, "test"))

    def save(self, namespace: str, parts: object, value: object) -> None:
        self.paths[key_of(namespace, parts, "test")] = value
