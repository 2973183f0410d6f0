"""The demo's pieces wired end to end on tiny data: data -> render -> local run -> blend -> submission + report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from kernels.contracts import read_manifest, read_oof, read_test_pred, verify_files

REPO = Path(__file__).resolve().parents[1]


def test_tiny_demo_runs_the_whole_loop(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kit.demo", "--data", "synth", "--root", str(tmp_path), "--tiny"],
        capture_output=True, text=True, cwd=REPO, timeout=900, env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = tmp_path / "data" / "synth-64"
    sample = pd.read_csv(data / "sample_submission.csv")
    runs = sorted(tmp_path.glob("runs/*/v1"))
    assert [r.parent.name for r in runs] == ["baseline", "demo-mobilenet", "demo-scratch"]
    baseline, runs = runs[0], runs[1:]
    manifest = read_manifest(baseline / "manifest.json")
    verify_files(baseline, manifest)
    assert manifest["role"] == "baseline" and len(read_oof(baseline / "oof.csv")) == len(pd.read_csv(data / "train.csv"))
    for run in runs:
        manifest = read_manifest(run / "manifest.json")
        verify_files(run, manifest)  # sizes and sha256 as the kernel recorded them
        assert manifest["config"]["data"]["image_size"] == 64 and len(manifest["folds"]) == 2
        oof = read_oof(run / "oof.csv")
        assert len(oof) == len(pd.read_csv(data / "train.csv"))
        assert json.loads((run / "run.json").read_text())["source"] == "local"
        assert (run / "history.png").stat().st_size > 0 and (run / "fold0.weights.h5").exists()
        assert (tmp_path / "build" / "kernels" / f"kit-{run.parent.name}" / "kernel.py").exists()
    out = tmp_path / "ensembles" / "demo"
    sub = read_test_pred(out / "submission.csv", expected_names=sample["image_name"])
    assert list(sub.columns) == ["image_name", "target"]
    blend = json.loads((out / "blend.json").read_text())
    assert 0.0 <= blend["oof_auc"] <= 1.0 and len(blend["runs"]) == 3  # the two models and the baseline
    report = (out / "report.md").read_text()
    assert "## Leaderboard" in report and "OOF AUC" in report and "demo-scratch/v1" in report
    assert (out / "report.html").exists() and list(out.glob("*.png"))
    assert "demo results" in proc.stdout and "held-out AUC" in proc.stdout and "blend (greedy)" in proc.stdout
    assert "baseline (the floor)" in proc.stdout and "blend minus baseline on the held-out split" in proc.stdout
