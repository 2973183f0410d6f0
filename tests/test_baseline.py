"""The baseline run on real dermoscopy images (the vendored data/isic-uda1 sample imported as `make demo` does):
its folder meets every run contract, its folds are the kernels' folds, and it learns something."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kernels.contracts import ContractError, read_manifest, read_oof, read_test_pred, validate_manifest, verify_files
from kernels.metrics import auc
from kit.cli import main as kit_main
from kit.run.baseline import feature_names, image_features
from kit.run.folders import list_runs

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "isic-uda1"
SIZE = "64"
FOLDS = 2


@pytest.fixture(scope="module")
def real_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uda") / "uda-64"
    code = kit_main(["data", "import", str(SAMPLE / "labels.csv"), str(SAMPLE / "images"), str(out), "--size", SIZE,
                     "--shards", "8", "--test-fraction", "0.2", "--seed", "42"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def baseline_run(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    code = kit_main(["baseline", "--data", str(real_data), "--size", SIZE, "--folds", str(FOLDS), "--runs", str(runs)])
    assert code == 0
    return runs / "baseline" / "v1"


def test_the_baseline_run_meets_the_run_contracts(baseline_run: Path, real_data: Path) -> None:
    manifest = read_manifest(baseline_run / "manifest.json")
    verify_files(baseline_run, manifest)
    assert manifest["role"] == "baseline" and manifest["experiment"] == "baseline"
    assert len(manifest["folds"]) == FOLDS
    oof = read_oof(baseline_run / "oof.csv")
    train = pd.read_csv(real_data / "train.csv")
    assert sorted(oof["image_name"]) == sorted(train["image_name"])
    assert oof.merge(train, on="image_name", suffixes=("", "_t")).eval("target == target_t").all()
    sample = pd.read_csv(real_data / "sample_submission.csv")
    read_test_pred(baseline_run / "test_pred.csv", expected_names=sample["image_name"])
    per_fold = pd.read_csv(baseline_run / "test_pred_folds.csv")
    assert list(per_fold.columns) == ["image_name", *[f"fold_{k}" for k in range(FOLDS)]]
    assert json.loads((baseline_run / "run.json").read_text())["experiment"] == "baseline"
    assert [r.run_id for r in list_runs(baseline_run.parents[1])] == ["baseline/v1"]  # blendable like any run


def test_the_baseline_uses_the_kernels_folds(baseline_run: Path, real_data: Path) -> None:
    from kernels.data import data_glob, fold_splits, read_records_meta

    files = data_glob(str(real_data), "train*.tfrec", "train")
    oof = read_oof(baseline_run / "oof.csv").set_index("image_name")
    for fold, (_, val_idx) in enumerate(fold_splits(len(files), FOLDS, 42)):
        names = read_records_meta([files[i] for i in val_idx], labelled=True)["image_name"]
        assert (oof.loc[names, "fold"] == fold).all()


def test_the_baseline_learns_from_real_images(baseline_run: Path, real_data: Path) -> None:
    oof = read_oof(baseline_run / "oof.csv")
    assert auc(oof["target"], oof["pred"]) > 0.6  # colour statistics separate melanoma from nevi (~0.75 here)
    solution = pd.read_csv(real_data / "solution.csv")
    test = read_test_pred(baseline_run / "test_pred.csv").merge(solution, on="image_name", suffixes=("", "_true"))
    assert auc(test["target_true"], test["target"]) > 0.6  # and on the held-out images it never saw


def test_image_features_are_finite_and_named() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    images[0] = 0  # a black image: no division by zero
    feats = image_features(images)
    assert feats.shape == (3, len(feature_names())) and np.isfinite(feats).all()
    hist = feats[:, [feature_names().index(f"hist_r{b}") for b in range(8)]]
    assert np.allclose(hist.sum(axis=1), 1.0)


def test_a_bad_role_is_one_clear_line(baseline_run: Path) -> None:
    manifest = json.loads((baseline_run / "manifest.json").read_text())
    with pytest.raises(ContractError, match="role is 'floor', expected one of model, baseline"):
        validate_manifest({**manifest, "role": "floor"})


def test_kit_predict_applies_the_baseline_as_its_run_did(baseline_run: Path, real_data: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import tensorflow as tf

    from kernels.schema import feature_spec

    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(real_data.glob("test*.tfrec"))[:1]:
        for record in tf.data.TFRecordDataset(str(path)):
            example = tf.io.parse_single_example(record, feature_spec(False))
            (images / f"{example['image_name'].numpy().decode()}.jpg").write_bytes(example["image"].numpy())
    runs = tmp_path / "runs"
    assert kit_main(["baseline", "--data", str(real_data), "--size", SIZE, "--folds", str(FOLDS), "--runs", str(runs),
                     "--no-metadata"]) == 0
    for run, tolerance in ((runs / "baseline" / "v1", 1e-6), (baseline_run, None)):
        out = tmp_path / "pred.csv"
        code = kit_main(["predict", str(images), "--run", str(run), "--runs", str(run.parents[1]), "--csv", str(out)])
        assert code == 0, capsys.readouterr().err
        ours = pd.read_csv(out, dtype={"image_name": str}).merge(read_test_pred(run / "test_pred.csv"),
                                                                 on="image_name", validate="1:1")
        assert len(ours) == len(list(images.iterdir())) > 20
        if tolerance:  # image statistics only: exactly what the run predicted for its test images
            assert np.abs(ours["probability"] - ours["target"]).max() < tolerance
        else:  # the run had the sample's metadata, a user's image has none: the same images, similar ranks
            assert np.corrcoef(ours["probability"].rank(), ours["target"].rank())[0, 1] > 0.6
