"""A run's own statistics, computed once and cached beside the run (``<run>/kit-stats.json``).

In:  a loaded `kit.run.folders.Run` and the bootstrap settings (replicates, seed).
Out: `RunStats`: OOF AUC, its patient-bootstrap interval, per-fold AUCs and the bootstrap replicate
     AUCs themselves (a paired test between two runs is then the difference of their replicates,
     `kernels.metrics.paired_from_replicates`, with no new resampling), plus a digest of what
     the replicates depend on: images, targets and patients (two runs' replicates pair only when
     their digests match).

Cache: the JSON file in the run folder holds one entry, keyed by the sha256 of oof.csv, the
bootstrap settings and `ENGINE` (the version of the computation); any change recomputes it and
rewrites the file atomically. A run's OOF predictions never change, so every later blend or report
reads the figures instead of resampling. A run folder that cannot be written is not cached (the
figures are computed as before). The replicates are the same ones `bootstrap_auc_ci` draws, so a
cached figure equals a fresh one exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kernels.contracts import OOF_FILE, atomic_write_text, file_digest
from kernels.metrics import (
    CI_LEVEL,
    AucInterval,
    PairedResult,
    auc,
    auc_by_group,
    bootstrap_aucs,
    interval_from_replicates,
    paired_from_replicates,
)
from kit.run.folders import Run

STATS_FILE = "kit-stats.json"
STATS_SCHEMA = "kit.run-stats/1"
ENGINE = "patient-bootstrap/2"  # bump when the figures' computation changes: old caches are then ignored


@dataclass(frozen=True)
class RunStats:
    """One run's own figures under one set of bootstrap settings."""

    oof_sha256: str
    n_boot: int
    seed: int
    ci: AucInterval
    fold_auc: Mapping[int, float]
    pairing_digest: str  # `pairing_digest` of the OOF: equal digests -> the runs' replicates pair
    patients: bool  # whether the replicates resampled patients (else images)
    replicates: np.ndarray = field(repr=False)  # AUC of each bootstrap replicate (NaN: one class drawn)
    cached: bool = False  # read from the cache file rather than computed now

    @property
    def auc(self) -> float:
        return self.ci.auc


def _key(oof_sha256: str, n_boot: int, seed: int) -> dict[str, Any]:
    return {"engine": ENGINE, "oof_sha256": oof_sha256, "n_boot": int(n_boot), "seed": int(seed), "level": CI_LEVEL}


def pairing_digest(oof: Any, groups: np.ndarray | None) -> str:
    """What a run's replicates depend on, as a digest: with patients, the set of (image, target,
    patient) rows (in any order: replicates draw patients by sorted id); without, each row is its
    own group, so the (image, target) rows in file order. Equal digests: the same replicates."""
    import pandas as pd

    frame = pd.DataFrame({"image_name": oof["image_name"].to_numpy(str), "target": oof["target"].to_numpy(int)})
    if groups is not None:
        frame["patient_id"] = np.asarray(groups, dtype=str)
    rows = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    kind = "patients:" if groups is not None else "rows:"
    return kind + hashlib.sha256((np.sort(rows) if groups is not None else rows).tobytes()).hexdigest()


def compute(run: Run, n_boot: int, seed: int, oof_sha256: str = "") -> RunStats:
    """The figures from the run's OOF frame (no cache involved)."""
    from kit.blend.analysis import patient_groups

    y = run.oof["target"].to_numpy(int)
    pred = run.oof["pred"].to_numpy(float)
    groups = patient_groups(run.oof)
    n_groups = len(np.unique(groups)) if groups is not None else y.size
    point = auc(y, pred)
    reps = (bootstrap_aucs(y, pred, groups, n_boot=n_boot, seed=seed) if n_boot > 0 and not math.isnan(point)
            else np.zeros(0))
    ci = interval_from_replicates(point, reps, n_groups)
    folds = run.oof["fold"].to_numpy(int)
    fold_auc = {int(k): g.auc for k, g in auc_by_group(y, pred, folds).items()}
    return RunStats(oof_sha256, int(n_boot), int(seed), ci, fold_auc, pairing_digest(run.oof, groups),
                    groups is not None, reps)


def _to_json(stats: RunStats) -> dict[str, Any]:
    ci = stats.ci
    return {"schema": STATS_SCHEMA, "key": _key(stats.oof_sha256, stats.n_boot, stats.seed),
            "auc": ci.auc, "low": ci.low, "high": ci.high, "n_boot_used": ci.n_boot, "n_groups": ci.n_groups,
            "mc_error": ci.mc_error, "fold_auc": {str(k): v for k, v in stats.fold_auc.items()},
            "pairing_digest": stats.pairing_digest, "patients": stats.patients, "replicates": [float(r) for r in stats.replicates]}


def _from_json(data: Mapping[str, Any], oof_sha256: str, n_boot: int, seed: int) -> RunStats | None:
    """The cached stats when `data` is a valid entry for exactly this key; else None."""
    if not isinstance(data, Mapping) or data.get("schema") != STATS_SCHEMA or data.get("key") != _key(
            oof_sha256, n_boot, seed):
        return None
    try:
        ci = AucInterval(float(data["auc"]), float(data["low"]), float(data["high"]), CI_LEVEL,
                         int(data["n_boot_used"]), int(data["n_groups"]), float(data["mc_error"]))
        fold_auc = {int(k): float(v) for k, v in data["fold_auc"].items()}
        reps = np.asarray(data["replicates"], dtype=float)
        digest, patients = str(data["pairing_digest"]), bool(data["patients"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if reps.size != (n_boot if n_boot > 0 and not math.isnan(ci.auc) else 0):
        return None
    return RunStats(oof_sha256, int(n_boot), int(seed), ci, fold_auc, digest, patients, reps, cached=True)


def oof_digest(run: Run) -> str:
    """sha256 of the run's oof.csv: the manifest's, which `kit.run.folders.load_run` checked against the
    file when it loaded the run; hashed here only when the manifest lists none."""
    listed = (run.info.manifest.get("files") or {}).get(OOF_FILE)
    if isinstance(listed, Mapping) and isinstance(listed.get("sha256"), str):
        return listed["sha256"]
    return file_digest(Path(run.info.folder) / OOF_FILE)["sha256"]


def stats_path(run: Run) -> Path:
    return Path(run.info.folder) / STATS_FILE


def run_stats(run: Run, n_boot: int, seed: int = 0) -> RunStats:
    """The run's figures: from ``kit-stats.json`` when its key matches (OOF sha256, replicates,
    seed, engine), else computed and written there for next time."""
    oof_sha256 = oof_digest(run)
    path = stats_path(run)
    try:
        cached = _from_json(json.loads(path.read_text()), oof_sha256, n_boot, seed)
    except (OSError, ValueError):
        cached = None
    if cached is not None:
        return cached
    stats = compute(run, n_boot, seed, oof_sha256)
    try:
        atomic_write_text(path, json.dumps(_to_json(stats)) + "\n")
    except OSError:
        pass  # a read-only run folder: figures computed, not cached
    return stats


def compare_stats(a: RunStats, b: RunStats) -> PairedResult | None:
    """AUC(a) - AUC(b) by the paired patient bootstrap, from the runs' own replicates; None when
    the replicates do not pair (other settings, images, targets or patients, or no replicates)."""
    if (a.n_boot, a.seed, a.pairing_digest) != (b.n_boot, b.seed, b.pairing_digest):
        return None
    if a.replicates.size != a.n_boot or b.replicates.size != b.n_boot or a.n_boot == 0:
        return None
    return paired_from_replicates(a.auc, b.auc, a.replicates, b.replicates, a.ci.n_groups)
