"""`kit plan`: estimated accelerator hours per kernel against the weekly quota, calibrated by finished runs."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from kernels.config import from_dict, to_dict
from kernels.contracts import MANIFEST_FILE, read_manifest
from kit.cli import main as kit_main
from kit.config import load_experiment
from kit.console import console
from kit.kaggle.plan import (
    EFFECTIVE_TFLOPS,
    ImageCounts,
    calibrate,
    estimate,
    estimate_seconds,
    fold_images,
    forward_gflops,
    image_counts,
    trained_per_epoch,
    tta_views,
)
from kit.run.preflight import preflight, preflight_overrides

REPO = Path(__file__).resolve().parents[1]
B6 = REPO / "experiments" / "effnet-b6-384.toml"


@pytest.fixture
def kit(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[int, str, str]]:
    """Run `kit` in this process from the repository root: (exit code, stdout, stderr)."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(console, "width", 200)

    def run(*args: str) -> tuple[int, str, str]:
        code = kit_main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_the_kaggle_ensemble_is_planned_against_the_weekly_quota(tmp_path: Path, kit: Callable) -> None:
    code, out, err = kit("plan", "kaggle-top", "--runs", str(tmp_path / "none"))
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if line.startswith("kaggle-")]
    assert len(rows) >= 8 and all(r[1] == "tpu" and r[2].startswith("efficientnet") for r in rows)
    assert {"384", "448", "512", "640", "768"} <= {r[3] for r in rows}  # the image size column
    assert "of the 20 h weekly quota (fits in one week" in out and "calibration: none" in out


def test_external_images_train_in_every_fold_and_validation_is_counted() -> None:
    exp = load_experiment(REPO / "experiments" / "kaggle-b4-640.toml")
    counts = image_counts(exp)
    assert len(counts.train_files) == 15 and len(counts.external_files) == 30  # the re-packs' files
    folds = fold_images(exp, counts)
    assert all(f.external == 25331 for f in folds)  # 30 external files != 15 train files: all, in every fold
    assert sum(f.validation for f in folds) == 33126
    train, _, _, per_epoch = estimate_seconds(exp, counts)
    batch = exp.train.batch_size * 8
    assert per_epoch == min((f.train + f.external) // batch for f in folds) * batch
    no_val = forward_gflops(exp.model.backbone, exp.data.image_size) * 1e9 * 33126 * exp.train.epochs / 20e12
    assert train == pytest.approx(5 * 3 * no_val / 33126 * per_epoch + no_val)  # 5 folds' training + validation


PLAN_TOML = {
    "name": "plan-vs-run", "kaggle": {"accelerator": "none"},
    "data": {"dataset": "someone/melanoma-32", "external": "someone/external-32", "external_labels": "train.csv",
             "folds": 3, "metadata": True, "metadata_file_size": True},
    "augment": {"ops": ["dihedral"]},
    "model": {"backbone": "scratch", "head": "diagnosis", "scratch": {"stages": 2, "width": 8}},
    "train": {"epochs": 2, "batch_size": 8, "tta": 1, "tta_dihedral": True},
}


def test_the_plan_counts_what_a_preflight_run_trained_and_predicted(tmp_path: Path) -> None:
    exp = from_dict(PLAN_TOML)
    result = preflight(exp, workdir=tmp_path)
    assert result.passed, result.line
    manifest = read_manifest(tmp_path / "out" / MANIFEST_FILE)
    rehearsed = {**to_dict(exp)}
    for key, value in preflight_overrides(exp, "").items():
        rehearsed[key] = {**rehearsed[key], **value}
    rehearsed["data"].update(dataset=str(tmp_path / "data"), external=str(tmp_path / "external"))
    planned = from_dict(rehearsed)
    counts = image_counts(planned)
    assert counts.source == "files"
    folds = fold_images(planned, counts)
    assert len(folds) == len(manifest["folds"]) == 2
    for fold, record in zip(folds, manifest["folds"], strict=True):
        images = record["images"]
        assert images["train_per_epoch"] == fold.train + fold.external and fold.external > 0
        assert images["trained_per_epoch"] == trained_per_epoch(planned, folds) == estimate(planned).images_per_epoch
        assert images["validation"] == fold.validation == record["n_val"]
        assert images["validation_passes"] == planned.train.epochs
        assert images["predicted"] == tta_views(planned) * (fold.validation + counts.test)
        assert min(record["train_classes"].values()) > 0  # all 9 outputs trained, external labels from the CSV


def test_cost_grows_with_pixels_epochs_and_tta() -> None:
    exp = load_experiment(B6)
    counts = image_counts(exp)
    assert counts.source == "known" and counts.train == 33126 and counts.external == 25331
    base = estimate_seconds(exp, counts)
    twice = dataclasses.replace(exp, train=dataclasses.replace(exp.train, epochs=2 * exp.train.epochs))
    assert estimate_seconds(twice, counts)[0] == pytest.approx(2 * base[0])
    assert forward_gflops("efficientnet_b6", 768) == pytest.approx(4 * forward_gflops("efficientnet_b6", 384))
    no_tta = dataclasses.replace(exp, train=dataclasses.replace(exp.train, tta_dihedral=False))
    assert estimate_seconds(no_tta, counts)[1] == pytest.approx(base[1] / 8)


def test_a_finished_run_calibrates_the_estimate(tmp_path: Path, kit: Callable) -> None:
    exp = load_experiment(B6)
    train, predict, overhead, _ = estimate_seconds(exp, image_counts(exp))
    run = tmp_path / "runs" / exp.name / "v1"
    run.mkdir(parents=True)
    manifest = {"schema": "kit.manifest/1", "experiment": exp.name, "config": to_dict(exp),
                "hardware": {"kind": "tpu"}, "timings": {"total_s": 3 * (train + predict + overhead)},
                "folds": [{"fold": k, "n_val": 6625} for k in range(5)], "n_oof": 33126}
    (run / "manifest.json").write_text(json.dumps(manifest))
    cal = calibrate([run])
    assert cal["tpu"].factor == pytest.approx(3.0, rel=0.01) and cal["tpu"].runs == (f"{exp.name}/v1",)
    assert estimate(exp, cal).total_h == pytest.approx(3 * estimate(exp).total_h, rel=0.01)
    code, out, err = kit("plan", str(B6), "--runs", str(tmp_path / "runs"))
    assert code == 0, err
    assert "tpu calibration: x3.00" in out


def test_an_unknown_target_is_one_line(tmp_path: Path, kit: Callable) -> None:
    code, _, err = kit("plan", "no-such-thing", "--runs", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "no-such-thing" in err


def test_a_cached_frozen_backbone_costs_its_feature_passes_once() -> None:
    exp = load_experiment(REPO / "experiments" / "demo-lite0.toml")  # frozen Lite0, feature_cache = "on"
    counts = ImageCounts(train=447, test=110, external=0, source="assumed")
    train, predict, _, _ = estimate_seconds(exp, counts)
    g = forward_gflops("efficientnet_lite0", 224) * 1e9
    assert predict == 0.0 and train == pytest.approx(g * 557 * 8 / (EFFECTIVE_TFLOPS["tpu"] * 1e12))
    longer = dataclasses.replace(exp, train=dataclasses.replace(exp.train, epochs=4 * exp.train.epochs))
    assert estimate_seconds(longer, counts)[0] == train  # the head's epochs on cached features are free
    off = dataclasses.replace(exp, train=dataclasses.replace(exp.train, feature_cache="off"))
    assert estimate_seconds(off, counts)[0] > 10 * train
