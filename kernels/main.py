"""The kernel's entry point: config dict in, every output file and the manifest out.

In:  `CONFIG`, the experiment as a plain dict (the rendered kernel's JSON literal), and the
     environment (KIT_DATA_DIR / KIT_OUTPUT_DIR locally; /kaggle/input and /kaggle/working on Kaggle).
Out: the files of kernels/contracts.py in `paths.output_dir()`; returns the manifest dict.

Steps: build the `Experiment`, seed everything, detect the hardware, find the TFRecords, split the
train files into folds (whole files, so no patient crosses folds), build and compile the model once
(`kernels.foldstart`: every fold reuses its compiled steps), then per fold: reset the model to its start
-> datasets -> fit with checkpointing -> OOF and test predictions with TTA -> weights -> all outputs
(rewritten after every fold, so finished folds survive a session that dies later). With a frozen backbone and
cacheable augmentation (train.feature_cache, `kernels.features`) the backbone's features are computed once per
run and every fold trains the head on them. The manifest's
`complete` marker turns true in the last write only. With KIT_RESUME=1 in the environment, the folds
an interrupted session of the same config left in the output folder are kept and only the rest train.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kernels.config import ConfigError, Experiment, feature_cache_on, from_dict
from kernels.data import (
    DataFiles,
    ExternalRows,
    check_records,
    count_examples,
    data_stored_shapes,
    discover_files,
    epoch_steps,
    eval_dataset,
    eval_rows,
    external_rows,
    fold_splits,
    meta_dim,
    read_records_meta,
    train_class_counts,
    train_dataset,
)
from kernels.features import (
    CachedRun,
    FeatureCacheError,
    bank_exact_validation,
    bank_inputs,
    bank_predict_tta,
    bank_train_dataset,
    build_cached_run,
)
from kernels.foldstart import FoldStart, restore_start, seed_fold, snapshot_start
from kernels.models import build_model, count_params
from kernels.outputs import FoldOutput, finished_folds, oof_frame, save_weights, write_outputs
from kernels.paths import DataLocationError, output_dir
from kernels.rehearsal import install_rehearsal_ops, quicken_gpu_rehearsal
from kernels.strategy import (
    Hardware,
    HardwareMismatch,
    detect_hardware,
    eval_batch_size,
    global_batch_size,
    prepare_devices,
    scaled_lr,
    strategy_scope,
)
from kernels.train import (
    NonFiniteLoss,
    compile_model,
    exact_validation,
    predict_tta,
    train_fold,
    with_known_batches,
)

CONFIG_LABEL = "CONFIG"
RESUME_ENV = "KIT_RESUME"  # "1": keep the folds a previous session finished in the output folder
CONFIG_OVERRIDES_ENV = "KIT_CONFIG_OVERRIDES"  # JSON merged over CONFIG (kit preflight shrinks a run with it)


def config_overrides(config: dict[str, Any], text: str | None) -> dict[str, Any]:
    """``config`` with the sections of a JSON object merged in (``{"train": {"epochs": 1}}``); unset: as is.
    Lets `kit preflight` run the exact rendered kernel on tiny data without editing it."""
    if not text:
        return config
    merged = {**config}
    for key, value in json.loads(text).items():
        merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    print(f"[kit] config overrides ({CONFIG_OVERRIDES_ENV}): {text}", flush=True)
    return merged


def fold_files(files: DataFiles, train_idx: Sequence[int], val_idx: Sequence[int]) -> tuple[list, list, list]:
    """(train, validation, external) files of one fold. External files join training only: those with
    the training files' indices when there are as many external as train files (the paired re-packs),
    else all of them."""
    train = [files.train[i] for i in train_idx]
    val = [files.train[i] for i in val_idx]
    if len(files.external) == len(files.train):
        external = [files.external[i] for i in train_idx]
    else:
        external = list(files.external)
    return train, val, external


def check_data(exp: Experiment, files: DataFiles) -> None:
    """The config checks that need the data, before any training: enough train files for the folds, a
    model size no larger than the stored images, and every record of every file readable."""
    d = exp.data
    if d.folds > len(files.train):
        raise ConfigError(f"{CONFIG_LABEL}: data.folds: got {d.folds}, expected at most {len(files.train)} "
                          f"(folds are whole files: {len(files.train)} train files match {d.train_glob!r})")
    try:
        stored = min(min(shape) for shape in data_stored_shapes(files.train[:1]))
    except tf.errors.OpError:
        check_records(files.train[:1])  # names the file and the record
        raise
    if d.image_size > stored:
        raise ConfigError(f"{CONFIG_LABEL}: data.image_size: got {d.image_size}, expected at most {stored} "
                          f"(the stored image size in {files.train[0]}; larger only upsamples)")
    check_records([*files.train, *files.test, *files.external])


def run_steps(exp: Experiment, hw: Hardware, files: DataFiles, splits: Sequence[tuple[Sequence[int], Sequence[int]]],
              run: Sequence[int]) -> int:
    """Training steps per epoch, one number for the whole run: the smallest fold's (their train files differ
    by a batch or two; `train.max_steps_per_epoch` caps it). One number lets one compiled model (and its
    learning-rate schedule) serve every fold (`kernels.foldstart`)."""
    steps = min(epoch_steps([*train, *external], exp, hw)
                for train, _, external in (fold_files(files, *splits[fold]) for fold in run))
    return min(steps, exp.train.max_steps_per_epoch or steps)


@dataclass(frozen=True)
class RunModel:
    """The run's one model, compiled once, and the state every fold starts from."""

    model: keras.Model
    start: FoldStart
    steps: int  # training steps per epoch (`run_steps`)
    peak_lr: float


def build_run_model(exp: Experiment, hw: Hardware, steps: int) -> RunModel:
    """Build and compile the model under the run's seed (not a fold's: every fold starts from these weights)."""
    keras.utils.set_random_seed(exp.seed)
    peak_lr = scaled_lr(exp, hw)
    with strategy_scope(hw):
        model = build_model(exp, hw, meta_dim(exp), total_steps=steps * exp.train.epochs)
        compile_model(model, exp, hw, peak_lr, steps)
        start = snapshot_start(model)
    return RunModel(model=model, start=start, steps=steps, peak_lr=peak_lr)


def fold_class_line(exp: Experiment, train_files: Sequence[str], external: Sequence[str],
                    rows: ExternalRows | None) -> dict[str, int]:
    """The diagnosis head's training images per class (printed; {} for the binary head)."""
    if exp.model.head != "diagnosis":
        return {}
    counts = train_class_counts(read_records_meta(train_files, labelled=True), rows, external if rows else ())
    text = ", ".join(f"{k} {v}" for k, v in counts.items())
    source = f"external labels from {rows.source}" if rows else ("external codes" if external else "no external data")
    print(f"[kit] diagnosis head: training images per class ({source}): {text}", flush=True)
    return counts


def run_fold(
    exp: Experiment, hw: Hardware, files: DataFiles, fold: int, train_idx: Sequence[int], val_idx: Sequence[int],
    out_dir: str, run_model: RunModel, rows: ExternalRows | None = None, cached: CachedRun | None = None,
) -> FoldOutput:
    """Train one fold (the run's model, reset to its start) and predict its validation files and the test files.
    With ``cached`` (train.feature_cache) the head trains and predicts on the cached backbone features; the
    model holds the trained weights all the same (the head's layers are the model's)."""
    train_files, val_files, external = fold_files(files, train_idx, val_idx)
    seed_fold(exp.seed + fold)  # a fold's result does not depend on which folds ran before
    model, steps = run_model.model, run_model.steps
    with strategy_scope(hw):
        restore_start(model, run_model.start, fold)
        if cached is not None:
            restore_start(cached.head, cached.start, fold)
    classes = fold_class_line(exp, train_files, external, rows)
    n_val = count_examples(val_files)
    if cached is None:
        fit_model = model
        train_ds, _ = train_dataset(train_files, exp, hw, external=external, rows=rows)
        val_ds = with_known_batches(eval_dataset(val_files, exp, hw, labelled=True), n_val, eval_batch_size(exp, hw))
        exact = exact_validation(exp, hw, val_files)
    else:
        fit_model = cached.head
        train_ds = bank_train_dataset(cached.bank, train_files, exp, hw)
        val_ds = with_known_batches(bank_inputs(cached.bank, val_files, exp, hw, labelled=True), n_val,
                                    eval_batch_size(exp, hw))
        exact = bank_exact_validation(cached.bank, val_files, exp, hw)
    print(
        f"[kit] fold {fold}: {len(train_files)} train files (+{len(external)} external), {len(val_files)} validation "
        f"files; {steps} steps/epoch, peak lr {run_model.peak_lr:.2e}, {count_params(model):,} parameters"
        f"{'; the head on cached features' if cached else ''}",
        flush=True,
    )
    trained = train_fold(fit_model, exp, train_ds, steps, val_ds, label=f"fold {fold} ",
                         val_rows=(n_val, eval_rows(n_val, exp, hw)), exact=exact)
    print(f"[kit] fold {fold}: best epoch {trained.best_epoch} of {trained.epochs_run} "
          f"({exp.train.monitor} {'n/a' if trained.best_value is None else f'{trained.best_value:.4f}'}); "
          f"predicting with {trained.kept}", flush=True)
    start = time.monotonic()
    if cached is None:
        oof = predict_tta(model, val_files, exp, hw)  # unlabelled passes: validation and test share one traced step
        test_pred = predict_tta(model, files.test, exp, hw).tta if files.test else np.zeros(0)
    else:
        oof = bank_predict_tta(cached.head, cached.bank, val_files, exp, hw)
        test_pred = bank_predict_tta(cached.head, cached.bank, files.test, exp, hw).tta if files.test else np.zeros(0)
    predict_s = time.monotonic() - start
    weights = save_weights(model, out_dir, fold) if exp.train.save_weights else None
    result = FoldOutput(
        fold=fold, oof=oof_frame(read_records_meta(val_files, labelled=True), oof.tta, fold),
        oof_pred_no_tta=oof.plain, test_pred=test_pred, history=trained.history, best_epoch=trained.best_epoch,
        epochs_run=trained.epochs_run, train_s=trained.train_s, predict_s=predict_s, weights_file=weights,
        extra={"tta_views": oof.views, "kept": trained.kept, "train_classes": classes, "feature_cache": cached is not None,
               "images": {
            "train_per_epoch": count_examples([*train_files, *external]), "trained_per_epoch": steps * global_batch_size(exp, hw),
            "validation": n_val, "validation_passes": trained.epochs_run, "test": count_examples(files.test),
            "predicted": oof.views * n_val + (oof.views * count_examples(files.test) if files.test else 0)}},
    )
    return result


def kernel_main(config: dict[str, Any]) -> dict[str, Any]:
    """Run the whole experiment (every fold in data.run_folds, or all) and write its outputs. The outputs
    are rewritten after every fold, so a session that dies later still leaves the finished folds."""
    start = time.monotonic()
    exp = from_dict(config_overrides(config, os.environ.get(CONFIG_OVERRIDES_ENV)), CONFIG_LABEL)
    prepare_devices()  # a GPU rehearsal (KIT_REHEARSE=gpu) splits the CPU before TensorFlow starts
    keras.utils.set_random_seed(exp.seed)
    print(f"[kit] experiment {exp.name!r}: backbone {exp.model.backbone}, {exp.data.image_size} px, "
          f"{exp.data.folds} folds, {exp.train.epochs} epochs", flush=True)
    try:
        hw = detect_hardware(exp)
    except HardwareMismatch as exc:  # on Kaggle without the asked-for accelerator: stop in the first minute
        raise SystemExit(str(exc)) from None
    if install_rehearsal_ops(hw):
        print("[kit] rehearsal: depthwise-convolution kernel gradients computed tap by tap (same values; XLA's CPU "
              "form is a channels x channels convolution, see kernels/rehearsal.py)", flush=True)
    if quicken_gpu_rehearsal(hw):
        print("[kit] rehearsal: TensorFlow's graph optimiser (Grappler) off: the same ops, unfused; a real GPU keeps it "
              "(see kernels/rehearsal.py)", flush=True)
    files = discover_files(exp)
    try:
        check_data(exp, files)
        rows = external_rows(exp, files)
    except (ConfigError, DataLocationError) as exc:  # one line, before any training
        raise SystemExit(f"error: {exc}") from None
    out_dir = output_dir()
    splits = fold_splits(len(files.train), exp.data.folds, exp.data.fold_seed)
    run = list(exp.data.run_folds) or list(range(exp.data.folds))
    test_names = [str(n) for n in read_records_meta(files.test, labelled=False)["image_name"]] if files.test else []
    print(f"[kit] {len(files.train)} train, {len(files.test)} test, {len(files.external)} external files; "
          f"folds {run}; outputs -> {out_dir}", flush=True)
    setup_s = time.monotonic() - start
    results: list[FoldOutput] = finished_folds(out_dir, exp, test_names) if os.environ.get(RESUME_ENV) == "1" else []
    if results:
        print(f"[kit] resuming: fold(s) {[r.fold for r in results]} already finished, kept", flush=True)
    manifest: dict[str, Any] = {}
    run_model: RunModel | None = None
    cached: CachedRun | None = None
    for fold in run:
        if any(r.fold == fold for r in results):
            continue
        train_idx, val_idx = splits[fold]
        fold_start = time.monotonic()
        try:
            if run_model is None:  # built once, when the first fold that trains needs it (the feature bank too)
                run_model = build_run_model(exp, hw, run_steps(exp, hw, files, splits, run))
                cached = (build_cached_run(run_model.model, exp, hw, files.train, files.test, meta_dim(exp),
                                           run_model.peak_lr, run_model.steps) if feature_cache_on(exp) else None)
            results.append(run_fold(exp, hw, files, fold, train_idx, val_idx, out_dir, run_model, rows, cached))
        except (NonFiniteLoss, FeatureCacheError) as exc:  # one line, a non-zero exit; finished folds stay as written
            raise SystemExit(str(exc)) from None
        timings = {
            "setup_s": setup_s,
            "train_s": sum(r.train_s for r in results),
            "predict_s": sum(r.predict_s for r in results),
            "total_s": time.monotonic() - start,
        }
        manifest = write_outputs(out_dir, exp, hw, global_batch_size(exp, hw), results, test_names, timings, run)
        print(f"[kit] fold {fold} done in {time.monotonic() - fold_start:.0f} s: AUC {manifest['folds'][-1]['auc']:.4f} "
              f"(no TTA {manifest['folds'][-1]['auc_no_tta']:.4f}); outputs written", flush=True)
    if not manifest:  # every fold was already finished: only the marker was missing
        manifest = write_outputs(out_dir, exp, hw, global_batch_size(exp, hw), results, test_names,
                                 {"setup_s": setup_s, "total_s": time.monotonic() - start}, run)
    folds_text = ", ".join(f"{f['auc']:.4f}" for f in manifest["folds"])
    print(f"[kit] OOF AUC {manifest['oof_auc']:.4f} (no TTA {manifest['oof_auc_no_tta']:.4f}; folds {folds_text}) "
          f"in {manifest['timings']['total_s']:.0f} s", flush=True)
    return manifest
