"""The demo's pieces wired end to end on tiny data: data -> render -> local run -> blend -> submission + report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.widths import PIPE_WIDTH, problems

from kernels.contracts import read_manifest, read_oof, read_test_pred, verify_files
from kit.demo import held_out_interval, held_out_margin, margin_text

REPO = Path(__file__).resolve().parents[1]


def test_tiny_demo_runs_the_whole_loop(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kit.demo", "--data", "synth", "--root", str(tmp_path), "--tiny"],
        capture_output=True, text=True, cwd=REPO, timeout=900,
        env={k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")},  # a pipe: 80 columns, as `make demo | tee`
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not problems(proc.stdout, PIPE_WIDTH, set()), problems(proc.stdout, PIPE_WIDTH, set())
    printed = " ".join(proc.stdout.split())  # lines wrapped at 80 columns, joined
    data = tmp_path / "data" / "synth-64"
    sample = pd.read_csv(data / "sample_submission.csv")
    runs = sorted(tmp_path.glob("runs/*/v1"))
    assert [r.parent.name for r in runs] == ["baseline", "demo-lite0", "demo-scratch"]
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
    assert "demo results" in printed and "held-out AUC" in printed and "blend (greedy)" in printed
    assert "baseline (the floor)" in printed
    assert "Do ImageNet-pretrained weights beat training from random initialisation here?** Pretrained " \
           "efficientnet_lite0 (demo-lite0/v1)" in report  # the first answer
    assert report.index("ImageNet-pretrained") < report.index("Which backbone works best")
    for a, b in (("demo-lite0", "demo-scratch"), (r"demo-(lite0|scratch)", "baseline")):
        assert re.search(rf"{a} minus {b}, out of fold: [+-]\d\.\d{{4}} AUC \[[+-]\d\.\d{{3}}, [+-]\d\.\d{{3}}\] "
                         r"\(paired patient bootstrap over \d+ patients", printed), proc.stdout[-2000:]
    assert re.search(r"blend minus baseline on the held-out split \(\d+ images: noisy, see the OOF margins\): "
                     r"[+-]\d\.\d{4} AUC \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] "
                     r"\(paired patient bootstrap over \d+ patients, p = \d\.\d\d\)", printed), proc.stdout[-2000:]
    figures = json.loads((out / "demo-figures.json").read_text())  # what the README's demo figures come from
    assert [r["name"] for r in figures["runs"]] == ["baseline", "demo-lite0", "demo-scratch"]
    assert figures["blend"]["method"] == "greedy" and f"{figures['blend']['oof_auc']:.4f}" in printed
    assert figures["margin"]["patients"] > 0 and figures["minutes"] > 0
    assert ("demo-lite0", "demo-scratch") in {(m["a"], m["b"]) for m in figures["oof_margins"]}


def _held_out_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A dataset folder's test.csv + solution.csv (40 images of 20 patients) and two prediction CSVs:
    one informative, one noise."""
    rng = np.random.default_rng(0)
    names = [f"ISIC_{i:07d}" for i in range(40)]
    target = np.tile([0, 0, 0, 1], 10)
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame({"image_name": names, "patient_id": [f"IP_{i // 2}" for i in range(40)]}).to_csv(data / "test.csv", index=False)
    pd.DataFrame({"image_name": names, "target": target}).to_csv(data / "solution.csv", index=False)
    good, noise = tmp_path / "good.csv", tmp_path / "noise.csv"
    pd.DataFrame({"image_name": names, "target": target + rng.normal(0, 0.6, 40)}).to_csv(good, index=False)
    pd.DataFrame({"image_name": names, "target": rng.random(40)}).to_csv(noise, index=False)
    return data, good, noise


def test_held_out_margin_is_the_difference_of_the_two_held_out_aucs_with_a_paired_interval(tmp_path: Path) -> None:
    data, good, noise = _held_out_files(tmp_path)
    margin = held_out_margin(good, noise, data)
    assert margin.diff == pytest.approx(held_out_interval(good, data).auc - held_out_interval(noise, data).auc)
    assert margin.low < margin.diff < margin.high and margin.n_groups == 20
    assert margin.diff > 0.2 and margin.p < 0.05  # an informative score against noise
    same = held_out_margin(good, good, data)
    assert (same.diff, same.low, same.high, same.p) == (0.0, 0.0, 0.0, 1.0)
    assert margin_text(same) == "+0.0000 AUC [+0.000, +0.000] (paired patient bootstrap over 20 patients, p = 1.00)"
