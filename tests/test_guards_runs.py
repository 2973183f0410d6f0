"""Guards on finished runs: a manifest is a finished run only when the kernel marked it `complete: true`
in its last write. A kernel that died after its last fold (every planned fold recorded, the marker still
false) left an unfinished run: never listed, loaded or blended, and a selection does not reach past it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.blend_fixtures import experiment_config, make_cohort, make_run, signal_preds

from kernels.contracts import COMPLETE_KEY, FOLDS_PLANNED_KEY, MANIFEST_FILE, incomplete_reason
from kit.errors import KitError
from kit.run.folders import incomplete_runs, latest_runs, list_runs, select_runs


def _runs(tmp_path: Path, marker: object) -> Path:
    """runs/cnn/v1 finished; runs/cnn/v2 with every planned fold recorded and `complete` = marker."""
    cohort = make_cohort(n=40, n_test=10)
    oof, test = signal_preds(cohort, 1.0, seed=0)
    runs = tmp_path / "runs"
    for version, extra in ((1, {COMPLETE_KEY: True}), (2, {COMPLETE_KEY: marker})):
        folder = make_run(runs, "cnn", cohort, oof, test, version, experiment_config("cnn", "scratch"),
                          manifest_extra=extra)
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        manifest[FOLDS_PLANNED_KEY] = sorted(int(f["fold"]) for f in manifest["folds"])
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return runs


@pytest.mark.parametrize("marker", [False, None, "true", 1])
def test_all_folds_present_without_the_complete_marker_is_not_a_finished_run(tmp_path: Path, marker: object) -> None:
    runs = _runs(tmp_path, marker)
    manifest = json.loads((runs / "cnn" / "v2" / MANIFEST_FILE).read_text())
    assert manifest[FOLDS_PLANNED_KEY] == [int(f["fold"]) for f in manifest["folds"]]  # no fold is missing
    reason = incomplete_reason(manifest)
    assert reason is not None and f"did not mark it {COMPLETE_KEY}" in reason

    assert [r.run_id for r in list_runs(runs)] == ["cnn/v1"]
    assert [(p.name, f"did not mark it {COMPLETE_KEY}" in why) for p, why in incomplete_runs(runs)] == [("v2", True)]
    assert [r.run_id for r in latest_runs(runs)] == ["cnn/v1"]
    with pytest.raises(KitError, match=r"cnn/v2: incomplete: the kernel did not mark it complete"):
        select_runs(runs, names=["cnn"])  # v1 never silently stands in for the unfinished v2


def test_the_complete_marker_true_with_every_fold_is_a_finished_run(tmp_path: Path) -> None:
    runs = _runs(tmp_path, True)
    assert [r.run_id for r in list_runs(runs)] == ["cnn/v1", "cnn/v2"]
    assert incomplete_runs(runs) == []
    assert [r.run_id for r in select_runs(runs, names=["cnn"])] == ["cnn/v2"]
