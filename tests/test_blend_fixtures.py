"""The blend-test builders (tests/helpers/blend_fixtures.py) write run folders that pass the contracts and
predictions whose AUC follows the asked-for signal strength."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.blend_fixtures import make_cohort, make_run, signal_preds

from kernels.contracts import MANIFEST_FILE, read_manifest, verify_files
from kernels.metrics import auc


def test_make_run_writes_a_valid_run(tmp_path: Path) -> None:
    cohort = make_cohort(n=60, n_test=20)
    oof, test = signal_preds(cohort, 1.0, seed=1)
    folder = make_run(tmp_path, "exp-a", cohort, oof, test)
    manifest = read_manifest(folder / MANIFEST_FILE)
    verify_files(folder, manifest)
    assert json.loads((folder / "run.json").read_text())["version"] == 1
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "oof.csv", "run.json", "test_pred.csv"]


def test_signal_strength_orders_auc() -> None:
    cohort = make_cohort(n=2000, n_test=10)
    weak = auc(cohort.y, signal_preds(cohort, 0.3, seed=2)[0])
    strong = auc(cohort.y, signal_preds(cohort, 2.0, seed=2)[0])
    noise = auc(cohort.y, signal_preds(cohort, 0.0, seed=2)[0])
    assert abs(noise - 0.5) < 0.06 < weak - 0.5 and strong > weak + 0.1
