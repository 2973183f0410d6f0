"""`kit plan`: estimated accelerator hours per kernel against the weekly quota, calibrated by finished runs."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from kernels.config import to_dict
from kit.cli import main as kit_main
from kit.config import load_experiment
from kit.console import console
from kit.kaggle.plan import calibrate, estimate, estimate_seconds, forward_gflops, image_counts

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
    rows = [line for line in out.splitlines() if "│ kaggle-" in line]
    assert len(rows) >= 8 and all(" tpu " in r for r in rows)
    assert {"@256", "@384", "@512", "@768"} <= {w for r in rows for w in r.split() if w.startswith("@")}
    assert "of the 20 h weekly quota" in out and "calibration: none" in out


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
