"""The whole kernel on tiny synthetic data: in-process under TensorFlow, as a rendered script under JAX
(a subprocess, through the local backend), and the quality bar of the small recipe (OOF AUC >= 0.95)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import pytest

from kernels.config import from_dict, to_dict
from kernels.contracts import (
    HISTORY_FILE,
    HISTORY_PLOT_FILE,
    MANIFEST_FILE,
    OOF_OPTIONAL_COLUMNS,
    TEST_FOLDS_FILE,
    ContractError,
    read_manifest,
    read_oof,
    read_test_pred,
    verify_files,
)
from kernels.data import META_DIM, discover_files, eval_dataset, fold_splits, read_records_meta
from kernels.main import fold_files, kernel_main
from kernels.metrics import auc
from kernels.models import build_model, load_model_weights, model_prediction
from kernels.outputs import FoldOutput, oof_frame, write_outputs
from kernels.strategy import Hardware, detect_hardware
from kit.config import load_experiment
from kit.data.synth import SynthSpec, write_synth
from kit.render.kernel import render_script
from kit.run.local import run_kernel

REPO = Path(__file__).resolve().parents[1]
SMOKE_RECIPE = REPO / "experiments" / "smoke-scratch.toml"
QUALITY_AUC = 0.95
QUALITY_TRAIN, QUALITY_TEST = 600, 64  # synthetic images (10 % malignant, the synth default)
TINY = SynthSpec(n_train=160, n_test=48, size=32, shards=4, seed=7, malignant_rate=0.2)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_config(**sections: dict[str, Any]) -> dict[str, Any]:
    """A fast experiment: 32 px, 2 folds, 2 epochs, a 2-stage scratch CNN."""
    config: dict[str, Any] = {
        "name": "tiny",
        "seed": 3,
        "data": {"dataset": "synthetic", "image_size": 32, "folds": 2, "shuffle_buffer": 64},
        "augment": {"ops": ["dihedral", "color"]},
        "model": {"backbone": "scratch", "weights": "none", "dropout": 0.1,
                  "scratch": {"stages": 2, "width": 8, "block": "residual"}},
        "train": {"epochs": 2, "batch_size": 16, "lr": 2e-3, "warmup_epochs": 0.5, "verbose": 0,
                  "tta": 1, "tta_dihedral": True},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return to_dict(from_dict(config))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    write_synth(out, TINY)
    return out


def check_outputs(out: Path, data: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Every contract file is there and valid, and the numbers agree with each other."""
    manifest = read_manifest(out / MANIFEST_FILE)
    verify_files(out, manifest)
    train_csv = pd.read_csv(data / "train.csv")
    test_csv = pd.read_csv(data / "test.csv")
    oof = read_oof(out / "oof.csv")
    run_folds = config["data"]["run_folds"] or list(range(config["data"]["folds"]))
    if len(run_folds) == config["data"]["folds"]:
        assert sorted(oof["image_name"]) == sorted(train_csv["image_name"])  # every train image once, out of fold
    else:
        assert set(oof["image_name"]) < set(train_csv["image_name"]) and sorted(oof["fold"].unique()) == run_folds
    assert set(OOF_OPTIONAL_COLUMNS) <= set(oof.columns)
    merged = oof.merge(train_csv, on="image_name", suffixes=("", "_csv"))
    assert (merged["target"] == merged["target_csv"]).all()
    assert (merged["sex"] == merged["sex_csv"].fillna("missing")).all()
    read_test_pred(out / "test_pred.csv", expected_names=test_csv["image_name"])
    folds = pd.read_csv(out / TEST_FOLDS_FILE)
    assert list(folds.columns) == ["image_name", *(f"fold_{k}" for k in run_folds)]
    assert manifest["config"] == config and manifest["seed"] == config["seed"]
    assert set(manifest["files"]) == {"oof.csv", "test_pred.csv", TEST_FOLDS_FILE, HISTORY_FILE, HISTORY_PLOT_FILE,
                                      *(f"fold{k}.weights.h5" for k in run_folds)}
    assert manifest["oof_auc"] == pytest.approx(auc(oof["target"], oof["pred"]))
    history = json.loads((out / HISTORY_FILE).read_text())
    epochs = config["train"]["epochs"]
    for record, fold_history in zip(manifest["folds"], history["folds"], strict=True):
        part = oof[oof["fold"] == record["fold"]]
        assert record["auc"] == pytest.approx(auc(part["target"], part["pred"]))
        assert 0.0 <= record["auc_no_tta"] <= 1.0 and record["n_val"] == len(part)
        assert len(record["epoch_times_s"]) == record["epochs_run"] == epochs
        assert all(len(fold_history[k]) == epochs for k in ("loss", "val_loss", "auc", "val_auc", "lr", "epoch_time_s"))
        assert all(math.isfinite(v) for v in fold_history["loss"] + fold_history["lr"])
        best = np.nanargmax if config["train"]["monitor"] == "val_auc" else np.nanargmin
        assert record["best_epoch"] == 1 + int(best(fold_history[config["train"]["monitor"]]))
    assert (out / HISTORY_PLOT_FILE).read_bytes()[:8] == PNG_MAGIC
    assert manifest["timings"]["total_s"] > 0 and manifest["versions"]["keras"]
    return manifest


def fake_fold(fold: int, names: list[str], rng: np.random.Generator, epochs: int = 3) -> FoldOutput:
    n = len(names)
    meta = pd.DataFrame({"image_name": names, "patient_id": np.arange(n), "sex": ["male"] * n,
                         "age_approx": [45.0] * n, "anatom_site_general_challenge": ["torso"] * n,
                         "target": (np.arange(n) % 4 == 0).astype(int)})
    history = {k: list(rng.random(epochs)) for k in ("loss", "val_loss", "auc", "val_auc", "lr", "epoch_time_s")}
    return FoldOutput(fold=fold, oof=oof_frame(meta, rng.random(n), fold), oof_pred_no_tta=rng.random(n),
                      test_pred=rng.random(5), history=history, best_epoch=2, epochs_run=epochs, train_s=1.0,
                      predict_s=0.5)


def test_write_outputs_checks_before_writing(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    hw = Hardware(kind="cpu", backend="tensorflow", replicas=1, devices=("CPU:0",))
    exp = from_dict(tiny_config())
    folds = [fake_fold(0, [f"ISIC_{i}" for i in range(8)], rng), fake_fold(1, [f"ISIC_{i}" for i in range(8, 16)], rng)]
    test_names = [f"ISIC_T{i}" for i in range(5)]
    manifest = write_outputs(str(tmp_path), exp, hw, 16, folds, test_names, {"total_s": 2.0})
    verify_files(tmp_path, read_manifest(tmp_path / MANIFEST_FILE))
    assert manifest["oof_auc"] == pytest.approx(auc(*[pd.concat([f.oof for f in folds])[c] for c in ("target", "pred")]))
    test = read_test_pred(tmp_path / "test_pred.csv", expected_names=test_names)
    np.testing.assert_allclose(test["target"], (folds[0].test_pred + folds[1].test_pred) / 2)
    assert manifest["hardware"]["global_batch"] == 16 and manifest["folds"][1]["n_val"] == 8

    broken = fake_fold(2, [f"ISIC_{i}" for i in range(16, 24)], rng)
    broken.oof.loc[3, "pred"] = np.nan
    empty = tmp_path / "broken"
    empty.mkdir()
    with pytest.raises(ContractError, match=r"oof.csv: row 5: pred is nan"):
        write_outputs(str(empty), exp, hw, 16, [broken], test_names, {"total_s": 1.0})
    assert list(empty.iterdir()) == []  # nothing half-written


def test_kernel_main_tensorflow_in_process(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert keras.backend.backend() == "tensorflow"
    monkeypatch.setenv("KIT_DATA_DIR", str(tiny_data))
    monkeypatch.setenv("KIT_OUTPUT_DIR", str(tmp_path))
    config = tiny_config(data={"metadata": True}, model={"head": "diagnosis"}, train={"tta_dihedral": False})
    manifest = kernel_main(config)
    assert manifest == read_manifest(tmp_path / MANIFEST_FILE)
    check_outputs(tmp_path, tiny_data, config)
    assert manifest["hardware"]["kind"] == "cpu" and manifest["versions"]["backend"] == "tensorflow"
    assert manifest["folds"][0]["tta_views"] == 1 + 1  # the plain pass + 1 augmented pass

    # The saved weights are the checkpointed model: reloaded, they give the manifest's no-TTA fold AUC.
    exp = from_dict(config)
    hw = detect_hardware(exp)
    files = discover_files(exp)
    train_idx, val_idx = fold_splits(len(files.train), exp.data.folds, exp.data.fold_seed)[1]
    _, val_files, _ = fold_files(files, train_idx, val_idx)
    model = build_model(exp, hw, META_DIM)
    load_model_weights(model, str(tmp_path / "fold1.weights.h5"))
    pred = model_prediction(model.predict(eval_dataset(val_files, exp, hw, labelled=True), verbose=0), exp)
    target = read_records_meta(val_files, labelled=True)["target"].to_numpy()
    assert auc(target, pred) == pytest.approx(manifest["folds"][1]["auc_no_tta"], abs=1e-6)


def test_rendered_kernel_under_jax(tiny_data: Path, tmp_path: Path) -> None:
    config = tiny_config(
        data={"run_folds": [1]},
        augment={"where": "device", "ops": ["dihedral", "affine"]},
        train={"loss": "focal", "optimizer": "adamw", "schedule": "exponential", "monitor": "val_loss", "tta": 0},
    )
    script = tmp_path / "kernel.py"
    script.write_text(render_script(from_dict(config)))
    out = tmp_path / "out"
    result = run_kernel(script, out, data_dir=str(tiny_data), extra_env={"KERAS_BACKEND": "jax"}, timeout_s=300)
    log = result.log_path.read_text()
    assert result.returncode == 0, log[-3000:]
    manifest = check_outputs(out, tiny_data, config)
    assert manifest["versions"]["backend"] == "jax" and manifest["hardware"]["augment_on_device"] is True
    assert manifest["folds"][0]["tta_views"] == 8  # the 8 dihedral views
    assert "[kit] OOF AUC" in log


def test_small_recipe_learns_the_planted_signal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = load_experiment(SMOKE_RECIPE)
    assert exp.model.backbone == "scratch"
    data = tmp_path / "synth"
    write_synth(data, SynthSpec(n_train=QUALITY_TRAIN, n_test=QUALITY_TEST, size=exp.data.image_size, seed=11))
    monkeypatch.setenv("KIT_DATA_DIR", str(data))
    monkeypatch.setenv("KIT_OUTPUT_DIR", str(tmp_path / "out"))
    manifest = kernel_main(to_dict(exp))
    print(f"small recipe: OOF AUC {manifest['oof_auc']:.4f}, folds "
          f"{[round(f['auc'], 4) for f in manifest['folds']]}, {manifest['timings']['total_s']:.0f} s")
    assert manifest["oof_auc"] >= QUALITY_AUC
