"""``blend.json``: the saved blend, written by `kit blend` and read by `kit predict`.

In:  (writing) a fitted blend with its runs, calibration and scores; (reading) the JSON file and
     a matrix of new predictions, one column per run in the file's run order.
Out: the JSON dict, validated; `apply_saved` turns new per-run predictions into blended (and,
     when the blend has one, calibrated) probabilities with numpy alone.

Fields (schema ``kit.blend/1``):
- ``schema``        "kit.blend/1"
- ``name``          the ensemble name (recipe file stem); ``recipe`` its path
- ``recipe_hash``   sha256 of the recipe's canonical JSON (see `kit.blend.recipe`)
- ``created_at``    UTC ISO-8601 time of the blend
- ``method``        blend method name (`kit.blend.methods.METHODS`); ``params`` its parameters
- ``transform``     per-run transform: "prob" | "rank" | "logit" | "power"
- ``link``          "identity" | "sigmoid" | "root" (power mean: z ** (1 / params.power))
- ``weights``       one weight per run, in ``runs`` order; ``bias`` the intercept (stacking)
- ``runs``          [{"run_id": "<experiment>/v<N>", "experiment", "version", "folder",
                      "weight", "oof_sha256", "test_sha256",
                      "reference": {"quantiles": [...], "n": n_test}}]: the run's test-prediction
                     quantiles, so a rank transform can place new images without a test set
- ``calibration``   null, {"method": "platt", "a", "b"} (p = sigmoid(a s + b)) or
                    {"method": "isotonic", "x": [...], "y": [...]} (linear interpolation, clipped)
- ``oof_auc``       the headline OOF AUC of the submitted blend, pooled over the OOF rows: by
                    nested CV (weights learned on the other folds) when the method learns from the
                    labels, else in-sample (the same figure); ``oof_auc_headline`` says which
                    ("nested_cv" | "in_sample"); ``oof_auc_ci`` its patient-bootstrap interval
                    [low, high]; ``oof_auc_in_sample`` and ``oof_auc_nested`` both pooled figures
- ``scores``        {"oof_auc", "oof_auc_ci", "oof_auc_in_sample", "oof_auc_nested",
                     "fold_mean_in_sample", "fold_mean_nested", "fold_auc": {k: auc},
                     "fold_auc_nested": {k: auc}, "brier": {"raw", "calibrated", "cross_fitted"} | null}
- ``n_oof``, ``n_test``, ``info`` (what the method reports: picks, chosen C, ...)

Applying: each column is transformed as at blend time; for ``rank``, new predictions are placed
in the run's stored test distribution (``reference="stored"``, right for a few images) or ranked
among themselves (``reference="within"``, what the submission did for the full test set); then
``X @ weights + bias``, the link, and the calibration if any.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from kernels.contracts import ContractError, read_json
from kit.blend.calibrate import apply_calibration
from kit.blend.methods import LINKS, TRANSFORMS

BLEND_SCHEMA = "kit.blend/1"
BLEND_FILE = "blend.json"
REFERENCE_QUANTILES = 1001
REQUIRED_KEYS = ("schema", "name", "method", "params", "transform", "link", "weights", "bias", "runs",
                 "calibration", "recipe_hash")
REFERENCES = ("stored", "within")


def reference_quantiles(test_preds: np.ndarray, count: int = REFERENCE_QUANTILES) -> list[float]:
    """Evenly spaced quantiles of one run's test predictions (its reference distribution)."""
    return np.quantile(np.asarray(test_preds, dtype=float), np.linspace(0.0, 1.0, count)).tolist()


def validate_blend(data: Mapping[str, Any], where: str = BLEND_FILE) -> Mapping[str, Any]:
    """Check a blend.json dict: keys, schema, one weight and one reference per run."""
    if not isinstance(data, Mapping):
        raise ContractError(f"{where}: expected a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ContractError(f"{where}: missing key(s) {', '.join(missing)}")
    if data["schema"] != BLEND_SCHEMA:
        raise ContractError(f"{where}: schema is {data['schema']!r}, expected {BLEND_SCHEMA!r}")
    if data["transform"] not in TRANSFORMS or data["link"] not in LINKS:
        raise ContractError(f"{where}: unknown transform {data['transform']!r} or link {data['link']!r}")
    if len(data["weights"]) != len(data["runs"]) or not data["runs"]:
        raise ContractError(f"{where}: {len(data['weights'])} weights for {len(data['runs'])} runs")
    for i, run in enumerate(data["runs"]):
        if "run_id" not in run or "quantiles" not in run.get("reference", {}):
            raise ContractError(f"{where}: runs[{i}]: expected run_id and reference.quantiles")
    return data


def read_blend(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    """Read and validate a blend.json."""
    return validate_blend(read_json(path), str(path))


def _stored_rank(p: np.ndarray, quantiles: list[float]) -> np.ndarray:
    """Place predictions in a stored distribution: linear between distinct quantiles, tied
    quantiles taking their middle level (the midrank rule), clipped at the ends."""
    q = np.asarray(quantiles, dtype=float)
    levels = np.linspace(0.0, 1.0, q.size)
    values, first, counts = np.unique(q, return_index=True, return_counts=True)
    mid = (levels[first] + levels[first + counts - 1]) / 2.0
    return np.interp(p, values, mid)


def apply_saved(blend: Mapping[str, Any], preds: np.ndarray, reference: str = "stored") -> np.ndarray:
    """Blended probabilities for new predictions `preds` (n, runs) in the file's run order."""
    if reference not in REFERENCES:
        raise ValueError(f"apply_saved: reference must be one of {REFERENCES}")
    P = np.atleast_2d(np.asarray(preds, dtype=float))
    runs = blend["runs"]
    if P.shape[1] != len(runs):
        raise ValueError(f"apply_saved: {P.shape[1]} prediction columns for {len(runs)} runs in the blend")
    params = blend["params"]
    if blend["transform"] == "rank" and reference == "stored":
        X = np.column_stack([_stored_rank(P[:, j], run["reference"]["quantiles"]) for j, run in enumerate(runs)])
    else:
        X = TRANSFORMS[blend["transform"]](P, params)
    z = X @ np.asarray(blend["weights"], dtype=float) + float(blend["bias"])
    out = LINKS[blend["link"]](z, params)
    if blend.get("calibration"):
        out = apply_calibration(blend["calibration"], out)
    return out
