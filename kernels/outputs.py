"""Everything a run leaves behind: the files of kernels/contracts.py, checked, written atomically.

In:  per-fold results (`FoldOutput`: OOF frame, test predictions, history, timings), the experiment,
     the hardware description and the output folder.
Out: oof.csv, test_pred.csv, test_pred_folds.csv, history.json, history.png, fold{k}.weights.h5 and,
     last, manifest.json (config, versions, seed, hardware, per-fold and overall OOF AUC, timings,
     the size and sha256 of every other file, and the completion marker `complete`, true only once
     every planned fold is in). Returns the manifest dict. `finished_folds` reads the folds a
     previous, interrupted session of the same experiment left behind (for a resume).

history.json: {"schema": HISTORY_SCHEMA, "folds": [{"fold": k, "best_epoch": e, "loss": [...],
"val_loss": [...], "auc": [...], "val_auc": [...], "lr": [...], "epoch_time_s": [...]}]}.
"""

from __future__ import annotations

import io
import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kernels.config import Experiment, to_dict
from kernels.contracts import (
    COMPLETE_KEY,
    FOLDS_PLANNED_KEY,
    HISTORY_FILE,
    HISTORY_PLOT_FILE,
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
    OOF_COLUMNS,
    OOF_FILE,
    OOF_OPTIONAL_COLUMNS,
    TEST_FOLDS_FILE,
    TEST_PRED_FILE,
    WEIGHTS_PATTERN,
    atomic_write_bytes,
    atomic_write_text,
    file_digest,
    incomplete_reason,
    read_json,
    read_manifest,
    validate_manifest,
    validate_oof,
    validate_test_pred,
    write_csv,
)
from kernels.metrics import auc
from kernels.models import save_model_weights
from kernels.schema import SEXES, SITES
from kernels.train import effective_jit_compile

HISTORY_SCHEMA = "kit.history/1"
HISTORY_PANELS = (("loss", ("loss", "val_loss")), ("AUC", ("auc", "val_auc")), ("learning rate", ("lr",)))
PLOT_DPI = 100
PLOT_PANEL_INCHES = (5.0, 3.6)
CATEGORY_NAMES = {"sex": SEXES, "anatom_site_general_challenge": SITES}
OOF_SELECTED_KEY = "oof_selected"  # manifest: true when each fold kept its best epoch on its own OOF rows
NO_TTA_COLUMN = "pred_no_tta"  # extra oof.csv column: the plain (no-TTA) prediction, kept for a resume
FOLD_RECORD_OWN_KEYS = ("fold", "auc", "auc_no_tta", "best_epoch", "epochs_run", "epoch_times_s", "n_val",
                        "n_val_malignant", "train_s", "predict_s", "weights")


@dataclass
class FoldOutput:
    """One trained fold, ready to be written."""

    fold: int
    oof: pd.DataFrame  # image_name, target, pred, fold (+ metadata), pred = TTA mean
    oof_pred_no_tta: np.ndarray
    test_pred: np.ndarray  # TTA mean, in the test files' eval order
    history: dict[str, list[float]]
    best_epoch: int
    epochs_run: int
    train_s: float
    predict_s: float
    weights_file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _outputs_category_names(values: pd.Series, names: Sequence[str]) -> pd.Series:
    if not pd.api.types.is_integer_dtype(values):
        return values
    return values.map(lambda code: names[int(code)] if 0 <= int(code) < len(names) else "missing")


def oof_frame(meta: pd.DataFrame, pred: np.ndarray, fold: int) -> pd.DataFrame:
    """The OOF rows of one fold from its records' metadata (eval order) and predictions."""
    if len(meta) != len(pred):
        raise ValueError(f"fold {fold}: {len(meta)} validation records but {len(pred)} predictions")
    frame = pd.DataFrame({
        "image_name": meta["image_name"].astype(str).to_numpy(),
        "target": meta["target"].astype(int).to_numpy(),
        "pred": np.asarray(pred, dtype=float),
        "fold": fold,
    })
    for column in OOF_OPTIONAL_COLUMNS:
        if column in meta.columns:
            values = meta[column].reset_index(drop=True)
            names = CATEGORY_NAMES.get(column)
            frame[column] = _outputs_category_names(values, names) if names else values.to_numpy()
    return frame


def test_frames(names: Sequence[str], fold_preds: Mapping[int, np.ndarray]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(test_pred: image_name, target = mean over folds; test_pred_folds: image_name, fold_k per fold)."""
    per_fold = pd.DataFrame({"image_name": [str(n) for n in names]})
    for fold, pred in sorted(fold_preds.items()):
        per_fold[f"fold_{fold}"] = np.asarray(pred, dtype=float)
    columns = [c for c in per_fold.columns if c.startswith("fold_")]
    mean = per_fold[columns].mean(axis=1) if columns else pd.Series(np.nan, index=per_fold.index)
    return pd.DataFrame({"image_name": per_fold["image_name"], "target": mean.astype(float)}), per_fold


def history_document(folds: Sequence[FoldOutput]) -> dict[str, Any]:
    """history.json's content."""
    return {
        "schema": HISTORY_SCHEMA,
        "folds": [{"fold": f.fold, "best_epoch": f.best_epoch, **{k: list(v) for k, v in f.history.items()}}
                  for f in folds],
    }


def plot_history(history: Mapping[str, Any]) -> bytes:
    """PNG bytes: loss, AUC and LR per epoch, one line per fold (dashed = validation)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, works headless (Agg canvas)

    width, height = PLOT_PANEL_INCHES
    fig = Figure(figsize=(width * len(HISTORY_PANELS), height), dpi=PLOT_DPI)
    axes = fig.subplots(1, len(HISTORY_PANELS))
    for ax, (title, keys) in zip(axes, HISTORY_PANELS, strict=True):
        for i, fold in enumerate(history["folds"]):
            colour = f"C{i % 10}"
            for key in keys:
                values = fold.get(key) or []
                epochs = np.arange(1, len(values) + 1)
                style = "--" if key.startswith("val_") else "-"
                label = f"fold {fold['fold']} {key}"
                ax.plot(epochs, values, style, color=colour, label=label, marker="." if len(values) < 30 else None)
            if fold.get("best_epoch") and title != "learning rate":
                ax.axvline(fold["best_epoch"], color=colour, alpha=0.25, linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if title == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def save_weights(model: Any, out_dir: str, fold: int) -> str:
    """Write fold{k}.weights.h5 atomically (keras wants the suffix, so the temp name keeps it)."""
    name = WEIGHTS_PATTERN.format(fold=fold)
    final = os.path.join(out_dir, name)
    tmp = os.path.join(out_dir, f".tmp-{os.getpid()}-{name}")
    save_model_weights(model, tmp)
    os.replace(tmp, final)
    return name


def versions(backend: str) -> dict[str, str]:
    """Library versions for the manifest."""
    import keras
    import tensorflow as tf

    found = {
        "python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
        "numpy": np.__version__, "pandas": pd.__version__, "backend": backend,
    }
    if "jax" in sys.modules:
        found["jax"] = sys.modules["jax"].__version__
    return found


def hardware_record(hw: Any, global_batch: int) -> dict[str, Any]:
    """The manifest's hardware entry."""
    return {
        "kind": hw.kind, "backend": hw.backend, "replicas": int(hw.replicas), "devices": list(hw.devices),
        "mixed_precision": hw.mixed_precision, "jit_compile": effective_jit_compile(hw),
        "augment_on_device": bool(hw.augment_on_device), "global_batch": int(global_batch),
        "machine": platform.machine(), "cpus": os.cpu_count(),
    }


def _outputs_auc(frame: pd.DataFrame, pred: np.ndarray) -> float:
    return auc(frame["target"].to_numpy(), pred)


def fold_record(f: FoldOutput) -> dict[str, Any]:
    """The manifest's entry for one fold (AUCs from the checkpointed model's own OOF predictions)."""
    return {
        "fold": f.fold,
        "auc": _outputs_auc(f.oof, f.oof["pred"].to_numpy()),
        "auc_no_tta": _outputs_auc(f.oof, f.oof_pred_no_tta),
        "best_epoch": f.best_epoch,
        "epochs_run": f.epochs_run,
        "epoch_times_s": [round(float(t), 3) for t in f.history.get("epoch_time_s", [])],
        "n_val": len(f.oof),
        "n_val_malignant": int(f.oof["target"].sum()),
        "train_s": round(f.train_s, 3),
        "predict_s": round(f.predict_s, 3),
        "weights": f.weights_file,
        **f.extra,
    }


def write_outputs(
    out_dir: str, exp: Experiment, hw: Any, global_batch: int, folds: Sequence[FoldOutput],
    test_names: Sequence[str], timings: Mapping[str, float], planned: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Validate and write every output file, then the manifest; return the manifest. The manifest's
    `complete` is true only when `folds` covers every fold in `planned` (default: the folds given)."""
    planned = [f.fold for f in folds] if planned is None else [int(k) for k in planned]
    oof = pd.concat([f.oof.assign(**{NO_TTA_COLUMN: np.asarray(f.oof_pred_no_tta, dtype=float)}) for f in folds],
                    ignore_index=True)
    oof = oof[[*OOF_COLUMNS, *[c for c in oof.columns if c not in OOF_COLUMNS]]]
    validate_oof(oof, OOF_FILE)
    test_pred, test_folds = test_frames(test_names, {f.fold: f.test_pred for f in folds})
    validate_test_pred(test_pred, TEST_PRED_FILE)
    history = history_document(folds)
    write_csv(oof, os.path.join(out_dir, OOF_FILE))
    write_csv(test_pred, os.path.join(out_dir, TEST_PRED_FILE))
    write_csv(test_folds, os.path.join(out_dir, TEST_FOLDS_FILE))
    atomic_write_text(os.path.join(out_dir, HISTORY_FILE), json.dumps(history, indent=1) + "\n")
    atomic_write_bytes(os.path.join(out_dir, HISTORY_PLOT_FILE), plot_history(history))
    written = [OOF_FILE, TEST_PRED_FILE, TEST_FOLDS_FILE, HISTORY_FILE, HISTORY_PLOT_FILE]
    written += [f.weights_file for f in folds if f.weights_file]
    oof_no_tta = np.concatenate([f.oof_pred_no_tta for f in folds])
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "experiment": exp.name,
        "config": to_dict(exp),
        "versions": versions(hw.backend),
        "seed": exp.seed,
        "hardware": hardware_record(hw, global_batch),
        "folds": [fold_record(f) for f in folds],
        "oof_auc": auc(oof["target"].to_numpy(), oof["pred"].to_numpy()),
        "oof_auc_no_tta": auc(oof["target"].to_numpy(), oof_no_tta),
        OOF_SELECTED_KEY: exp.train.keep == "best",  # the epoch was chosen on the OOF fold: optimistic
        "n_oof": len(oof),
        "n_test": len(test_pred),
        "timings": {k: round(float(v), 3) for k, v in timings.items()},
        "files": {name: file_digest(os.path.join(out_dir, name)) for name in written},
        FOLDS_PLANNED_KEY: planned,
        COMPLETE_KEY: set(planned) <= {f.fold for f in folds},
    }
    validate_manifest(manifest, MANIFEST_FILE)
    atomic_write_text(os.path.join(out_dir, MANIFEST_FILE), json.dumps(manifest, indent=1) + "\n")
    return manifest


def _outputs_same_config(manifest: Mapping[str, Any], exp: Experiment) -> bool:
    return json.dumps(manifest.get("config"), sort_keys=True) == json.dumps(to_dict(exp), sort_keys=True)


def finished_folds(out_dir: str, exp: Experiment, test_names: Sequence[str]) -> list[FoldOutput]:
    """The folds an interrupted session of `exp` finished in `out_dir` (its manifest, oof.csv,
    test_pred_folds.csv, history.json and weights, each checked), ready to be written again beside
    the folds still to train. [] when `out_dir` holds no manifest; ValueError (one line) when it
    holds a run of another config or with other test images, or a finished run."""
    path = os.path.join(out_dir, MANIFEST_FILE)
    if not os.path.exists(path):
        return []
    manifest = read_manifest(path)
    if not _outputs_same_config(manifest, exp):
        raise ValueError(f"{path}: written with another config than {exp.name!r}'s; cannot resume it")
    if incomplete_reason(manifest) is None:
        raise ValueError(f"{path}: the run is already complete; nothing to resume")
    oof = pd.read_csv(os.path.join(out_dir, OOF_FILE), dtype={"image_name": str})
    per_fold = pd.read_csv(os.path.join(out_dir, TEST_FOLDS_FILE), dtype={"image_name": str})
    if [str(n) for n in per_fold["image_name"]] != [str(n) for n in test_names]:
        raise ValueError(f"{os.path.join(out_dir, TEST_FOLDS_FILE)}: other test images than the dataset's now")
    histories = {int(h["fold"]): h for h in read_json(os.path.join(out_dir, HISTORY_FILE))["folds"]}
    out = []
    for record in manifest["folds"]:
        fold = int(record["fold"])
        weights = record.get("weights")
        if weights and not os.path.exists(os.path.join(out_dir, weights)):
            raise ValueError(f"{os.path.join(out_dir, weights)}: listed for fold {fold} but missing")
        rows = oof[oof["fold"] == fold].reset_index(drop=True)
        history = {k: list(v) for k, v in histories[fold].items() if k not in ("fold", "best_epoch")}
        out.append(FoldOutput(
            fold=fold, oof=rows.drop(columns=[NO_TTA_COLUMN]),
            oof_pred_no_tta=rows[NO_TTA_COLUMN].to_numpy(dtype=float),
            test_pred=per_fold[f"fold_{fold}"].to_numpy(dtype=float), history=history,
            best_epoch=int(record["best_epoch"]), epochs_run=int(record["epochs_run"]),
            train_s=float(record["train_s"]), predict_s=float(record["predict_s"]), weights_file=weights,
            extra={k: v for k, v in record.items() if k not in FOLD_RECORD_OWN_KEYS},
        ))
    return out
