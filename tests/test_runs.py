"""kit.run.folders: discovering, selecting, versioning and loading run folders (real files, no mocks)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from helpers.blend_fixtures import experiment_config, make_cohort, make_run, signal_preds

from kernels.contracts import MANIFEST_FILE, OOF_FILE, ContractError
from kit.errors import KitError
from kit.run.folders import (
    RUN_JSON,
    incomplete_runs,
    latest_runs,
    list_runs,
    load_run,
    next_version_dir,
    run_from_folder,
    select_runs,
    write_run_record,
)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    cohort = make_cohort(n=40, n_test=10)
    oof, test = signal_preds(cohort, 1.0, seed=0)
    runs = tmp_path / "runs"
    make_run(runs, "effnet-b0", cohort, oof, test, 1, experiment_config("effnet-b0", tags=["pretrained"]))
    make_run(runs, "effnet-b0", cohort, oof, test, 2, experiment_config("effnet-b0", tags=["pretrained"]))
    make_run(runs, "effnet-b3", cohort, oof, test, 1, experiment_config("effnet-b3", "efficientnet_b3",
                                                                           tags=["pretrained", "big"]))
    make_run(runs, "cnn", cohort, oof, test, 1, experiment_config("cnn", "scratch", tags=["scratch"]))
    (runs / "cnn" / "v2").mkdir()  # started, never finished: no manifest
    (runs / "cnn" / "v3").mkdir()
    (runs / "cnn" / "v3" / MANIFEST_FILE).write_text("{not json")
    (runs / "cnn" / ".v4.partial").mkdir()  # a pull in progress is not a version
    (runs / "notes.txt").write_text("not a run")
    return runs


def test_list_and_latest_ignore_incomplete(root: Path) -> None:
    assert [r.run_id for r in list_runs(root)] == ["cnn/v1", "effnet-b0/v1", "effnet-b0/v2", "effnet-b3/v1"]
    assert [r.run_id for r in latest_runs(root)] == ["cnn/v1", "effnet-b0/v2", "effnet-b3/v1"]
    bad = incomplete_runs(root)
    assert [p.name for p, _ in bad] == ["v2", "v3"]
    assert "file not found" in bad[0][1] and "not valid JSON" in bad[1][1]
    run = latest_runs(root)[1]
    assert run.tags == ("pretrained",) and run.provenance["source"] == "local"
    assert run.config["model"]["backbone"] == "efficientnet_b0"
    assert list_runs(root.parent / "nowhere") == []


def test_select_by_name_tag_glob(root: Path) -> None:
    ids = lambda runs: [r.run_id for r in runs]  # noqa: E731
    assert ids(select_runs(root)) == ["cnn/v1", "effnet-b0/v2", "effnet-b3/v1"]
    assert ids(select_runs(root, names=["effnet-b0"])) == ["effnet-b0/v2"]
    assert ids(select_runs(root, names=["effnet-b0/v1"])) == ["effnet-b0/v1"]
    assert ids(select_runs(root, names=["effnet-b0"], latest=False)) == ["effnet-b0/v1", "effnet-b0/v2"]
    assert ids(select_runs(root, tags=["big"])) == ["effnet-b3/v1"]
    assert ids(select_runs(root, globs=["effnet-*"])) == ["effnet-b0/v2", "effnet-b3/v1"]
    assert ids(select_runs(root, globs=["*/v1"], latest=False)) == ["cnn/v1", "effnet-b0/v1", "effnet-b3/v1"]
    assert ids(select_runs(root, names=["cnn/v1"], tags=["big"])) == ["cnn/v1", "effnet-b3/v1"]
    assert ids(select_runs(root, globs=["*", "!cnn"])) == ["effnet-b0/v2", "effnet-b3/v1"]
    assert ids(select_runs(root, tags=["pretrained", "!big"])) == ["effnet-b0/v2"]
    assert ids(select_runs(root, tags=["!big"], globs=["!cnn*"])) == ["effnet-b0/v2"]


def test_selection_refuses_to_reach_past_an_incomplete_run(root: Path) -> None:
    # cnn's newest folders (v2, v3) never finished: taking cnn/v1 in their place would be silent.
    for kwargs in ({"names": ["cnn"]}, {"globs": ["*"]}, {"names": ["cnn/v3"]}):
        with pytest.raises(KitError) as info:
            select_runs(root, **kwargs)
        assert "cnn/v2: incomplete (manifest.json: file not found)" in str(info.value) or (
            "cnn/v3: incomplete (manifest.json: not valid JSON" in str(info.value))
        assert "--resume" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(KitError, match="every selected run is excluded"):
        select_runs(root, globs=["effnet-b3", "!effnet-*"])


@pytest.mark.parametrize("kwargs,message", [
    ({"names": ["resnet"]}, "no run named 'resnet' (have: cnn, effnet-b0, effnet-b3)"),
    ({"tags": ["nope"]}, "no run tagged 'nope'"),
    ({"globs": ["vit-*"]}, "no run matches the glob 'vit-*'"),
])
def test_select_errors_name_the_selector(root: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(KitError) as info:
        select_runs(root, **kwargs)
    assert str(info.value) == f"{root}: {message}"


def test_select_on_empty_root(tmp_path: Path) -> None:
    with pytest.raises(KitError, match="no complete runs"):
        select_runs(tmp_path)


def test_next_version_dir(root: Path, tmp_path: Path) -> None:
    assert next_version_dir(root, "cnn") == root / "cnn" / "v4"  # incomplete v2, v3 still count
    assert next_version_dir(root, "new-exp") == root / "new-exp" / "v1"
    assert not (root / "new-exp").exists()
    claimed: list[Path] = []
    threads = [threading.Thread(target=lambda: claimed.append(next_version_dir(tmp_path / "r", "x", create=True)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in claimed) == sorted(f"v{i}" for i in range(1, 9))
    with pytest.raises(KitError, match="cannot name a run folder"):
        next_version_dir(root, "a/b")


def test_load_run_validates(root: Path) -> None:
    run = load_run(root / "effnet-b0" / "v2")
    assert run.run_id == "effnet-b0/v2" and len(run.oof) == 40 and len(run.test) == 10
    assert load_run(latest_runs(root)[0], verify=True).run_id == "cnn/v1"
    oof = root / "effnet-b3" / "v1" / OOF_FILE
    oof.write_text(oof.read_text().replace("ISIC_0000003", "ISIC_0000004"))
    with pytest.raises(ContractError, match="oof.csv: sha256 differs from the manifest"):
        load_run(root / "effnet-b3" / "v1")
    with pytest.raises(KitError, match="not a run folder"):
        run_from_folder(root / "cnn")
    with pytest.raises(ContractError, match="manifest.json: file not found"):
        load_run(root / "cnn" / "v2")


def test_write_run_record(tmp_path: Path) -> None:
    record = write_run_record(tmp_path, experiment="e", version=3, source="kaggle", kernel="me/e",
                              content_hash="ab", finished_at="2026-01-01T00:00:00Z")
    assert json.loads((tmp_path / RUN_JSON).read_text()) == record
    assert record["kernel"] == "me/e" and record["version"] == 3
    with pytest.raises(KitError, match="run source 'cloud'"):
        write_run_record(tmp_path, experiment="e", version=1, source="cloud", kernel=None, content_hash="",
                         finished_at="")
