"""The floor every model must beat: colour/texture statistics + metadata -> logistic regression.

In:  a dataset folder of competition TFRecords (the files the kernels read) and the experiment whose folds to
     copy (``data.folds``, ``data.fold_seed``, ``data.train_glob``/``test_glob``, ``data.image_size``).
Out: an ordinary run folder ``<runs>/baseline/v<N>/`` in the contracts of `kernels.contracts` -- oof.csv,
     test_pred.csv, test_pred_folds.csv, manifest.json (with ``"role": "baseline"``) and run.json -- so the
     baseline is scored, blended and reported by the same engine as every kernel run.

How: each record is decoded by the kernel's own decoder (`kernels.data.data_decoder`, at ``data.image_size``),
in `kernels.data.read_records_meta` order; `image_features` turns every image into per-channel mean and spread
over the whole image and its centre, centre-minus-border contrast, 8-bin histograms per channel and a few
gradient (texture) statistics; `metadata_features` adds sex, age and site one-hots when the data has them.
Folds are exactly the kernels' (`kernels.data.fold_splits` over the train files). Per fold a standardised
L2 logistic regression is fitted, its C chosen by an inner stratified CV on the training part (ROC AUC);
validation files get OOF predictions, the test files one prediction per fold (test_pred = their mean).
Everything is seeded: the same data gives the same files.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kernels.config import Experiment, ModelSection, to_dict
from kernels.contracts import (
    MANIFEST_FILE,
    MANIFEST_ROLE_KEY,
    MANIFEST_SCHEMA,
    OOF_COLUMNS,
    OOF_FILE,
    TEST_FOLDS_FILE,
    TEST_PRED_FILE,
    atomic_write_text,
    file_digest,
    validate_manifest,
    validate_oof,
    validate_test_pred,
    write_csv,
)
from kernels.metrics import auc
from kernels.schema import SEXES, SITES

BASELINE_NAME = "baseline"  # the experiment name of the baseline run folder (runs/baseline/v<N>/)
ROLE_KEY = MANIFEST_ROLE_KEY  # manifest key telling the baseline run from model runs
ROLE_BASELINE = "baseline"
MODEL_FILE = "baseline_model.json"  # per fold: standardisation and coefficients (what `kit predict` applies)
MODEL_SCHEMA = "kit.run.baseline/1"
BASELINE_BACKBONE = "baseline-logreg"  # config model.backbone of the baseline (no kernel builds it)
HIST_BINS = 8  # histogram bins per channel
CENTRE_FRACTION = 0.5  # the centre window: the middle half of each side (where the lesion usually is)
C_GRID = tuple(float(c) for c in np.logspace(-3, 1, 9))  # inverse L2 strengths tried by the inner CV
INNER_FOLDS = 3  # inner CV folds choosing C
MIN_INNER_FOLDS = 2
MAX_ITER = 5000
DECODE_BATCH = 64  # records decoded per tf.data batch
PIXEL_MAX = 255.0
AGE_SCALE = 90.0
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma
STD_EPS = 1e-6  # keeps the centre/whole spread ratio finite on a flat image


# ---------------------------------------------------------------- features (pure numpy)


def feature_names() -> list[str]:
    """Names of the `image_features` columns, in order."""
    names = []
    for region in ("all", "centre"):
        for stat in ("mean", "std"):
            names += [f"{region}_{stat}_{c}" for c in "rgb"]
    names += [f"contrast_{c}" for c in "rgb"]
    names += [f"hist_{c}{b}" for c in "rgb" for b in range(HIST_BINS)]
    names += ["grad_mean_all", "grad_std_all", "grad_mean_centre", "grad_std_centre", "lap_absmean_all",
              "grey_std_centre_over_all"]
    return names


def _baseline_centre(images: np.ndarray) -> np.ndarray:
    size = images.shape[1]
    lo = int(round(size * (1 - CENTRE_FRACTION) / 2))
    return images[:, lo:size - lo, lo:size - lo]


def image_features(images: np.ndarray) -> np.ndarray:
    """uint8 or float images [n, s, s, 3] (0..255) -> float64 [n, len(feature_names())]."""
    x = np.asarray(images, dtype=np.float64) / PIXEL_MAX
    n = len(x)
    centre = _baseline_centre(x)
    border_mask = np.ones(x.shape[1:3], bool)
    size, inner = x.shape[1], centre.shape[1]
    lo = (size - inner) // 2
    border_mask[lo:lo + inner, lo:lo + inner] = False
    flat, cflat = x.reshape(n, -1, 3), centre.reshape(n, -1, 3)
    border = x[:, border_mask]
    parts = [flat.mean(1), flat.std(1), cflat.mean(1), cflat.std(1), cflat.mean(1) - border.mean(1)]
    edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
    bins = np.clip(np.digitize(flat, edges[1:-1]), 0, HIST_BINS - 1)  # [n, pixels, 3]
    hists = [np.stack([(bins[:, :, c] == b).mean(1) for b in range(HIST_BINS)], axis=1) for c in range(3)]
    parts += hists
    grey = x @ np.asarray(GREY_WEIGHTS)
    gy, gx = np.gradient(grey, axis=(1, 2))
    grad = np.hypot(gx, gy)
    cgrad = _baseline_centre(grad[..., None])[..., 0]
    lap = (np.roll(grey, 1, 1) + np.roll(grey, -1, 1) + np.roll(grey, 1, 2) + np.roll(grey, -1, 2) - 4 * grey)[:, 1:-1, 1:-1]
    cgrey = _baseline_centre(grey[..., None])[..., 0]
    texture = np.stack([
        grad.reshape(n, -1).mean(1), grad.reshape(n, -1).std(1), cgrad.reshape(n, -1).mean(1),
        cgrad.reshape(n, -1).std(1), np.abs(lap).reshape(n, -1).mean(1),
        cgrey.reshape(n, -1).std(1) / (grey.reshape(n, -1).std(1) + STD_EPS),
    ], axis=1)
    parts.append(texture)
    return np.concatenate(parts, axis=1)


def age_fill(meta: pd.DataFrame) -> float:
    """The scaled age given to images without one: the mean age/90 of ``meta`` (0 when none has an age)."""
    age = meta["age_approx"].to_numpy(float)
    return float(np.mean(age[np.isfinite(age)]) / AGE_SCALE) if np.isfinite(age).any() else 0.0


def metadata_features(meta: pd.DataFrame, fill: float | None = None) -> tuple[np.ndarray, list[str]]:
    """`read_records_meta` rows -> (float64 [n, k], names): sex one-hot, age/90 (missing -> ``fill``, default
    `age_fill` of these rows) with a missing flag, site one-hot. A field missing for every row is left out."""
    cols: dict[str, np.ndarray] = {}
    if (meta["sex"] != "missing").any():
        for sex in SEXES:
            cols[f"sex_{sex}"] = (meta["sex"] == sex).to_numpy(float)
    age = meta["age_approx"].to_numpy(float)
    if np.isfinite(age).any():
        cols["age"] = np.where(np.isfinite(age), age / AGE_SCALE, age_fill(meta) if fill is None else fill)
        cols["age_missing"] = (~np.isfinite(age)).astype(float)
    site = meta["anatom_site_general_challenge"]
    if (site != "missing").any():
        for name in SITES:
            cols[f"site_{name}"] = (site == name).to_numpy(float)
    if not cols:
        return np.zeros((len(meta), 0)), []
    return np.stack(list(cols.values()), axis=1), list(cols)


# ---------------------------------------------------------------- reading the kernel's records


def read_images(files: Sequence[str], exp: Experiment) -> np.ndarray:
    """Every record's image of ``files`` (file order, record order: `read_records_meta`'s rows), decoded and
    sized as the kernel does, uint8 [n, size, size, 3]."""
    import tensorflow as tf

    from kernels.data import data_decoder, data_options

    if not files:
        size = exp.data.image_size
        return np.zeros((0, size, size, 3), np.uint8)
    decoder = data_decoder(files, exp)
    spec = {"image": tf.io.FixedLenFeature([], tf.string)}
    ds = tf.data.TFRecordDataset(list(files)).map(lambda r: decoder(tf.io.parse_single_example(r, spec)["image"]))
    ds = ds.batch(DECODE_BATCH).with_options(data_options(deterministic=True))
    return np.concatenate([b.numpy() for b in ds], axis=0)


@dataclasses.dataclass(frozen=True)
class Table:
    """Records of some files: metadata rows (`read_records_meta`) and their feature matrix."""

    meta: pd.DataFrame
    features: np.ndarray


def missing_metadata_row(use_meta: Sequence[str], fill: float) -> np.ndarray:
    """The ``use_meta`` columns of an image that comes without metadata (a user's image in `kit predict`)."""
    values = {"sex_missing": 1.0, "age": fill, "age_missing": 1.0, "site_missing": 1.0}
    return np.asarray([values.get(name, 0.0) for name in use_meta], dtype=float)


def read_table(files: Sequence[str], exp: Experiment, labelled: bool, use_meta: Sequence[str] | None,
               fill: float = 0.0) -> Table:
    """Features of every record in ``files``; ``use_meta`` = the metadata columns to keep (None: none);
    ``fill`` = the scaled age of images without one."""
    from kernels.data import read_records_meta

    meta = read_records_meta(list(files), labelled=labelled) if files else pd.DataFrame()
    images = image_features(read_images(files, exp))
    if use_meta is None or not len(meta):
        return Table(meta, images)
    extra, names = metadata_features(meta, fill)
    chosen = np.zeros((len(meta), len(use_meta)))
    for i, name in enumerate(use_meta):
        if name in names:
            chosen[:, i] = extra[:, names.index(name)]
    return Table(meta, np.concatenate([images, chosen], axis=1))


# ---------------------------------------------------------------- the model


def make_model(seed: int, minority: int = INNER_FOLDS) -> Any:
    """Standardise -> L2 logistic regression with C chosen by inner stratified CV on ROC AUC (as many inner
    folds as the minority class allows, at most INNER_FOLDS; C = 1 when it has fewer than 2 images)."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if minority < MIN_INNER_FOLDS:
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER))
    inner = StratifiedKFold(n_splits=min(INNER_FOLDS, minority), shuffle=True, random_state=seed)
    options: dict[str, Any] = {}
    if "use_legacy_attributes" in inspect.signature(LogisticRegressionCV).parameters:  # scikit-learn >= 1.8
        options = {"l1_ratios": (0.0,), "use_legacy_attributes": False}
    return make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=list(C_GRID), cv=inner, scoring="roc_auc",
                                                               max_iter=MAX_ITER, **options))


@dataclasses.dataclass(frozen=True)
class BaselineResult:
    """What `fit_baseline` gives: the OOF frame, per-fold test predictions and per-fold records."""

    oof: pd.DataFrame
    test_names: list[str]
    test_folds: dict[int, np.ndarray]
    folds: list[dict[str, Any]]
    features: list[str]
    model: dict[str, Any]  # MODEL_FILE's content: what `predict_probabilities` needs


def fit_baseline(exp: Experiment, files: Any, metadata: bool = True) -> BaselineResult:
    """Fit the baseline on the kernel's folds of ``files`` (`kernels.data.DataFiles`)."""
    from kernels.data import fold_splits, read_records_meta
    from kernels.outputs import oof_frame

    names = feature_names()
    use_meta: list[str] | None = None
    fill = 0.0
    if metadata:
        train_meta = read_records_meta(list(files.train), labelled=True)
        fill = age_fill(train_meta)
        _, use_meta = metadata_features(train_meta, fill)
        names += use_meta
    per_file = [read_table([f], exp, True, use_meta, fill) for f in files.train]
    test = read_table(list(files.test), exp, False, use_meta, fill)
    splits = fold_splits(len(files.train), exp.data.folds, exp.data.fold_seed)
    run = list(exp.data.run_folds) or list(range(exp.data.folds))
    oofs, test_folds, records, models = [], {}, [], []
    for fold in run:
        train_idx, val_idx = splits[fold]
        start = time.monotonic()
        x = np.concatenate([per_file[i].features for i in train_idx])
        y = np.concatenate([per_file[i].meta["target"].to_numpy() for i in train_idx])
        model = make_model(exp.seed + fold, int(min(y.sum(), len(y) - y.sum()))).fit(x, y)
        val_meta = pd.concat([per_file[i].meta for i in val_idx], ignore_index=True)
        val_x = np.concatenate([per_file[i].features for i in val_idx])
        pred = model.predict_proba(val_x)[:, 1]
        frame = oof_frame(val_meta, pred, fold)
        oofs.append(frame)
        if len(test.features):
            test_folds[fold] = model.predict_proba(test.features)[:, 1]
        last = model[-1]
        chosen_c = float(np.ravel(last.C_)[0]) if hasattr(last, "C_") else float(last.C)
        scaler = model[0]
        models.append({"fold": fold, "mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(),
                       "coef": np.ravel(last.coef_).tolist(), "intercept": float(np.ravel(last.intercept_)[0])})
        records.append({
            "fold": fold, "auc": auc(frame["target"].to_numpy(), pred), "best_epoch": 0, "epochs_run": 0,
            "epoch_times_s": [], "n_val": len(frame), "n_val_malignant": int(frame["target"].sum()),
            "train_s": round(time.monotonic() - start, 3), "C": chosen_c,
        })
    oof = pd.concat(oofs, ignore_index=True)
    oof = oof[[*OOF_COLUMNS, *[c for c in oof.columns if c not in OOF_COLUMNS]]]
    test_names = [str(n) for n in test.meta["image_name"]] if len(test.meta) else []
    model_doc = {"schema": MODEL_SCHEMA, "image_size": exp.data.image_size, "features": names,
                 "metadata": list(use_meta or []), "age_fill": fill, "folds": models}
    return BaselineResult(oof, test_names, test_folds, records, names, model_doc)


def baseline_experiment(like: Experiment) -> Experiment:
    """The config recorded in the baseline's manifest: the data section of ``like`` (same folds, size,
    files; raw colours, no colour constancy: colour is what it measures), named and tagged ``baseline``,
    with a model section naming the logistic regression."""
    return dataclasses.replace(
        like, name=BASELINE_NAME, tags=(BASELINE_NAME,), data=dataclasses.replace(like.data, shades_of_gray=0),
        description="colour/texture statistics + metadata -> logistic regression (the floor)",
        model=ModelSection(backbone=BASELINE_BACKBONE, weights="none"),
    )


def write_baseline(out: Path, exp: Experiment, result: BaselineResult, total_s: float) -> dict[str, Any]:
    """Write the run folder's contract files and the manifest (``role: baseline``); return the manifest."""
    from kernels.outputs import test_frames

    validate_oof(result.oof, OOF_FILE)
    test_pred, per_fold = test_frames(result.test_names, result.test_folds)
    validate_test_pred(test_pred, TEST_PRED_FILE)
    write_csv(result.oof, out / OOF_FILE)
    write_csv(test_pred, out / TEST_PRED_FILE)
    write_csv(per_fold, out / TEST_FOLDS_FILE)
    atomic_write_text(out / MODEL_FILE, json.dumps(result.model) + "\n")
    import sklearn

    manifest = {
        "schema": MANIFEST_SCHEMA,
        ROLE_KEY: ROLE_BASELINE,
        "experiment": exp.name,
        "config": to_dict(exp),
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__,
                     "sklearn": sklearn.__version__},
        "seed": exp.seed,
        "hardware": {"kind": "cpu", "replicas": 1, "backend": "sklearn"},
        "folds": result.folds,
        "oof_auc": auc(result.oof["target"].to_numpy(), result.oof["pred"].to_numpy()),
        "n_oof": len(result.oof),
        "timings": {"total_s": round(total_s, 3)},
        "baseline": {"model": "StandardScaler + LogisticRegressionCV (L2, C by inner CV on ROC AUC)",
                     "features": result.features, "c_grid": list(C_GRID), "inner_folds": INNER_FOLDS},
        "files": {name: file_digest(out / name) for name in (OOF_FILE, TEST_PRED_FILE, TEST_FOLDS_FILE, MODEL_FILE)},
    }
    validate_manifest(manifest, MANIFEST_FILE)
    atomic_write_text(out / MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n")
    return manifest


def run_baseline(like: Experiment, data: str, runs_root: Path, metadata: bool = True) -> Path:
    """Fit the baseline on ``data`` with ``like``'s folds and write ``<runs_root>/baseline/v<N>/``."""
    from kit.quiet import native_stderr_silenced

    with native_stderr_silenced():  # TensorFlow's start-up chatter
        from kernels.data import discover_files
    from kit.run.folders import next_version_dir, write_run_record

    start = time.monotonic()
    exp = baseline_experiment(dataclasses.replace(like, data=dataclasses.replace(like.data, dataset=data)))
    result = fit_baseline(exp, discover_files(exp), metadata=metadata)
    out = next_version_dir(runs_root, exp.name, create=True)
    write_baseline(out, exp, result, time.monotonic() - start)
    write_run_record(out, experiment=exp.name, version=int(out.name[1:]), source="local", kernel=None,
                     content_hash="", finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return out


def read_model(folder: Path) -> dict[str, Any]:
    """A baseline run's MODEL_FILE (one line naming the file when it is missing or not this schema)."""
    from kernels.contracts import ContractError, read_json

    doc = read_json(folder / MODEL_FILE)
    if not isinstance(doc, dict) or doc.get("schema") != MODEL_SCHEMA:
        raise ContractError(f"{folder / MODEL_FILE}: expected a JSON object with schema {MODEL_SCHEMA!r}")
    return doc


def predict_probabilities(images: np.ndarray, model: dict[str, Any]) -> np.ndarray:
    """P(malignant) [n, folds] of images without metadata (prepared at ``model["image_size"]``, 0..255):
    each fold's standardisation and logistic regression applied to `image_features` + the missing-metadata row."""
    x = image_features(images)
    if model["metadata"]:
        row = missing_metadata_row(model["metadata"], float(model["age_fill"]))
        x = np.concatenate([x, np.repeat(row[None, :], len(x), axis=0)], axis=1)
    out = []
    for fold in model["folds"]:
        z = (x - np.asarray(fold["mean"])) / np.asarray(fold["scale"])
        out.append(1.0 / (1.0 + np.exp(-(z @ np.asarray(fold["coef"]) + fold["intercept"]))))
    return np.stack(out, axis=1)


def is_baseline(manifest: Any) -> bool:
    """True when a run manifest is the baseline's (``role: baseline``)."""
    return isinstance(manifest, dict) and manifest.get(ROLE_KEY) == ROLE_BASELINE
