"""`kit blend` / `kit report` end to end on synthetic run folders: outputs, reports, bad inputs.

Runs are written with the contract writers (no TensorFlow); the CLI runs in-process through
`kit.cli.main`, so errors are checked exactly as a user sees them (one `error:` line, exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.blend_fixtures import (
    Cohort,
    experiment_config,
    make_cohort,
    make_run,
    make_sample_submission,
    signal_preds,
)

from kernels.contracts import read_test_pred
from kit.blend.recipe import canonical_hash, load_recipe
from kit.blend.saved import apply_saved, read_blend
from kit.cli import main

RECIPE = """
description = "test blend"
[runs]
globs = ["*"]
[method]
name = "rank_mean"
[calibration]
method = "platt"
[report]
compare = ["mean", "greedy", "stacking"]
bootstrap = 200
"""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _workspace(tmp_path: Path, cohort: Cohort, specs: list[tuple[str, str, float]], recipe: str = RECIPE,
               **scratch: object) -> dict[str, Path]:
    runs = tmp_path / "runs"
    for i, (name, backbone, strength) in enumerate(specs):
        oof, test = signal_preds(cohort, strength, seed=i)
        cfg = experiment_config(name, backbone, scratch={"width": 16 * (i + 1), **scratch}, tta=2)
        make_run(runs, name, cohort, oof, test, config=cfg, tta_gain=0.004 * (i + 1), epoch_time=1.5 + i)
    ens = tmp_path / "ensembles"
    ens.mkdir()
    (ens / "t.toml").write_text(recipe)
    data = make_sample_submission(tmp_path / "data", cohort)
    return {"runs": runs, "ens": ens, "data": data, "out": ens / "t"}


SPECS = [("effb0", "efficientnet_b0", 1.2), ("resnet", "resnet50", 0.9), ("cnn-a", "scratch", 0.7),
         ("cnn-b", "scratch", 0.4)]


def _blend(ws: dict[str, Path], *extra: str) -> int:
    return main(["blend", "t", "--ensembles", str(ws["ens"]), "--runs", str(ws["runs"]), *extra])


def test_blend_writes_submission_blend_json_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cohort = make_cohort(n=500, n_test=120)
    ws = _workspace(tmp_path, cohort, SPECS)
    assert _blend(ws, "--dataset", str(ws["data"])) == 0
    printed = capsys.readouterr().out
    assert "Leaderboard" in printed and "nested CV" in printed and "t: rank_mean over 4 run(s)" in printed
    out = ws["out"]
    names = {p.name for p in out.iterdir()}
    assert {"submission.csv", "blend.json", "report.md", "report.html", "roc.png", "correlation.png",
            "weights.png", "subgroups.png", "calibration.png", "leaderboard.png"} <= names
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
    assert not list(ws["ens"].glob(".t.*"))  # no temp folders left behind
    sub = read_test_pred(out / "submission.csv", expected_names=cohort.test_names)
    assert list(sub["image_name"]) == list(cohort.test_names)  # sample_submission order
    assert sub["target"].between(0, 1).all()

    blend = read_blend(out / "blend.json")
    assert blend["method"] == "rank_mean" and blend["transform"] == "rank" and blend["weights"] == [0.25] * 4
    assert [r["run_id"] for r in blend["runs"]] == ["cnn-a/v1", "cnn-b/v1", "effb0/v1", "resnet/v1"]
    assert blend["recipe_hash"] == load_recipe(str(ws["ens"] / "t.toml")).digest
    assert blend["calibration"]["method"] == "platt" and blend["scores"]["brier"]["calibrated"] < 0.2
    assert 0.5 < blend["oof_auc"] < 1
    assert blend["oof_auc_headline"] == "in_sample"  # rank mean learns nothing: in-sample is the honest figure
    assert blend["oof_auc_nested"] == pytest.approx(blend["oof_auc"]) == pytest.approx(blend["oof_auc_in_sample"])
    assert blend["scores"]["fold_mean_nested"] == pytest.approx(np.mean(list(blend["scores"]["fold_auc"].values())))
    assert blend["scores"]["fold_auc_nested"] == pytest.approx(blend["scores"]["fold_auc"])  # rank mean learns nothing
    lo, hi = blend["scores"]["oof_auc_ci"]
    assert lo < blend["oof_auc"] < hi

    # kit predict's contract: the saved blend reproduces the submission from the runs' test predictions
    test = np.column_stack([pd.read_csv(Path(r["folder"]) / "test_pred.csv")["target"] for r in blend["runs"]])
    np.testing.assert_allclose(apply_saved(blend, test, reference="within"), sub["target"], atol=1e-12)
    stored = apply_saved(blend, test, reference="stored")
    assert np.abs(stored - sub["target"]).max() < 0.02
    one = apply_saved(blend, test[:1], reference="stored")  # a single new image is placed, not ranked alone
    assert one[0] == pytest.approx(stored[0])

    md = (out / "report.md").read_text()
    for needle in ("## Leaderboard", "## Answers", "(paired patient bootstrap)", "## OOF AUC per fold", "nested CV", "| stacking |",
                   "![ROC curves of runs and blend](roc.png)", "AUC by anatomical site", "platt calibration",
                   "efficientnet_b0", "scratch residual 4x48", "+0.004", "1.5"):
        assert needle in md, needle
    html = (out / "report.html").read_text()
    assert "<img src='roc.png'" in html and "<table>" in html and "<b>Which backbone" in html


def test_rerun_replaces_outputs_and_report_by_name_keeps_the_submission(tmp_path: Path) -> None:
    cohort = make_cohort(n=200, n_test=50)
    ws = _workspace(tmp_path, cohort, SPECS[:2])
    assert _blend(ws) == 0  # no dataset: test names checked against the first run
    first = (ws["out"] / "submission.csv").read_text()
    (ws["out"] / "stale.txt").write_text("from an older blend")
    (ws["ens"] / "t.toml").write_text(RECIPE.replace('name = "rank_mean"', 'name = "mean"'))
    assert _blend(ws) == 0
    assert not (ws["out"] / "stale.txt").exists()  # the folder was replaced as a whole
    assert json.loads((ws["out"] / "blend.json").read_text())["method"] == "mean"
    second = (ws["out"] / "submission.csv").read_text()
    assert second != first
    assert main(["report", "t", "--ensembles", str(ws["ens"]), "--runs", str(ws["runs"])]) == 0
    assert (ws["out"] / "submission.csv").read_text() == second
    assert "Report only: submission.csv and blend.json were not rewritten." in (ws["out"] / "report.md").read_text()
    assert "sample_submission.csv known" in (ws["out"] / "report.md").read_text()


def test_report_over_all_runs_answers_both_questions(tmp_path: Path) -> None:
    cohort = make_cohort(n=3000, n_test=20, prevalence=0.2)
    ws = _workspace(tmp_path, cohort, [("strong", "efficientnet_b3", 1.5), ("weak", "resnet50", 0.3),
                                       ("cnn", "scratch", 0.8)])
    out = tmp_path / "report"
    assert main(["report", "--runs", str(ws["runs"]), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert md.startswith("# Runs report")
    assert "efficientnet_b3 (backbone trained from random initialisation) leads with OOF AUC" in md
    assert "separable at 0.05" in md and "DeLong" not in md  # patients hold several images: no DeLong
    assert "Too few runs to answer: only one from-scratch architecture (scratch residual 4x48" in md
    assert not (out / "submission.csv").exists()


def test_report_says_when_there_is_nothing_to_compare(tmp_path: Path) -> None:
    cohort = make_cohort(n=300, n_test=20)
    ws = _workspace(tmp_path, cohort, [("a", "efficientnet_b0", 0.5), ("b", "efficientnet_b0", 0.45)])
    out = tmp_path / "report"
    assert main(["report", "--runs", str(ws["runs"]), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "Too few runs to answer: only one backbone (efficientnet_b0" in md
    assert "Too few runs to answer: no run uses a from-scratch architecture yet." in md


def test_report_on_runs_over_different_images_skips_the_blend(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for i, name in enumerate(("a", "b")):
        cohort = make_cohort(n=200, n_test=20, seed=i)
        if i:
            cohort = Cohort(**{**cohort.__dict__, "names": np.array([f"OTHER_{k}" for k in range(200)])})
        oof, test = signal_preds(cohort, 1.0, seed=i)
        make_run(runs, name, cohort, oof, test,
                 config=experiment_config(name, "efficientnet_b0" if i else "resnet50"))
    out = tmp_path / "report"
    assert main(["report", "--runs", str(runs), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "not blended" in md and "no paired test is possible" in md and "## Blend" not in md


def _corrupt(name: str):  # noqa: ANN202 - returns make_run keyword arguments
    def drop_last3(df: pd.DataFrame) -> pd.DataFrame:
        return df.iloc[:-3]

    def add_one(df: pd.DataFrame) -> pd.DataFrame:
        extra = df.iloc[:1].copy()
        extra["image_name"] = "ISIC_9999999"
        return pd.concat([df, extra])

    def repeat(df: pd.DataFrame) -> pd.DataFrame:
        return pd.concat([df, df.iloc[[5]]])

    def nan_pred(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        df.loc[7, "pred"] = np.nan
        return df

    def inf_pred(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        df.loc[3, "pred"] = np.inf
        return df

    def flip_targets(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        df.loc[[0, 4], "target"] = 1 - df.loc[[0, 4], "target"]
        return df

    def drop_test(df: pd.DataFrame) -> pd.DataFrame:
        return df.iloc[2:]

    return {
        "oof-misses": {"oof_edit": drop_last3}, "oof-adds": {"oof_edit": add_one},
        "oof-repeats": {"oof_edit": repeat}, "oof-nan": {"oof_edit": nan_pred}, "oof-inf": {"oof_edit": inf_pred},
        "targets": {"oof_edit": flip_targets}, "test-misses": {"test_edit": drop_test},
    }[name]


BAD_INPUTS = [
    ("oof-misses", False, "run b/v1: oof.csv misses 3 image(s) that a/v1 has, e.g. 'ISIC_0000117'"),
    ("oof-adds", False, "run b/v1: oof.csv adds 1 image(s) that a/v1 lacks, e.g. 'ISIC_9999999'"),
    ("oof-repeats", False, "b/v1/oof.csv: row 122: duplicate image_name 'ISIC_0000005'"),
    ("oof-nan", False, "b/v1/oof.csv: row 9: pred is "),  # kernels.contracts words the value
    ("oof-inf", False, "b/v1/oof.csv: row 5: pred is "),
    ("targets", False, "run b/v1: oof.csv target of 'ISIC_0000000' is 1 but a/v1 says 0 (2 image(s) disagree)"),
    ("test-misses", True, "run b/v1: test_pred.csv misses 2 test image(s) of sample_submission.csv, "
                          "e.g. 'ISIC_9000000'"),
    ("test-misses", False, "run b/v1: test_pred.csv misses 2 test image(s) of a/v1's test_pred.csv, "
                           "e.g. 'ISIC_9000000'"),
]


@pytest.mark.parametrize("case,with_dataset,message", BAD_INPUTS, ids=[f"{c}-{d}" for c, d, _ in BAD_INPUTS])
def test_bad_inputs_stop_with_one_line_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         case: str, with_dataset: bool, message: str) -> None:
    cohort = make_cohort(n=120, n_test=30)
    ws = _workspace(tmp_path, cohort, [])
    oof, test = signal_preds(cohort, 1.0, seed=0)
    make_run(ws["runs"], "a", cohort, oof, test)
    make_run(ws["runs"], "b", cohort, oof, test, **_corrupt(case))
    extra = ("--dataset", str(ws["data"])) if with_dataset else ()
    capsys.readouterr()
    assert _blend(ws, *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    if case.startswith("oof-nan") or case.startswith("oof-inf"):
        assert "expected a finite number" in err
    assert not ws["out"].exists() and not list(ws["ens"].glob(".t.*"))


def test_a_failed_blend_leaves_the_previous_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cohort = make_cohort(n=120, n_test=30)
    ws = _workspace(tmp_path, cohort, SPECS[:3])
    assert _blend(ws) == 0
    before = {p.name: p.read_bytes() for p in ws["out"].iterdir()}
    oof, test = signal_preds(cohort, 1.0, seed=9)
    make_run(ws["runs"], "effb0", cohort, oof, test, version=2, oof_edit=lambda df: df.iloc[1:])
    assert _blend(ws) == 2
    assert "run effb0/v2: oof.csv misses 1 image(s)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in ws["out"].iterdir()} == before


RECIPE_ERRORS = [
    ('[runs]\nglob = ["*"]\n', "t.toml: runs.glob: unknown key (expected one of exclude_globs, exclude_tags, globs, latest, names, root, tags)"),
    ('[method]\nname = "median"\n', "t.toml: method: unknown blend method 'median'"),
    ('[method]\nname = "greedy"\nparams = {steps = 3}\n', "t.toml: method.params.steps: unknown parameter of greedy"),
    ('[calibration]\nmethod = "beta"\n', "t.toml: calibration.method: got 'beta', expected one of none, platt, "
                                          "isotonic"),
    ('[report]\nbootstrap = "many"\n', "t.toml: report.bootstrap: got 'many', expected an integer"),
    ('[report]\ncompare = ["mean", "best"]\n', "t.toml: report.compare[1]: unknown blend method 'best'"),
    ('colour = "red"\n', "t.toml: colour: unknown key (expected one of description, [runs], [method]"),
    ('[runs]\nnames = ["nope"]\n', "no run named 'nope' (have: a)"),
    ("[runs\n", "t.toml: not valid TOML"),
]


@pytest.mark.parametrize("recipe,message", RECIPE_ERRORS)
def test_recipe_errors_name_file_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], recipe: str,
                                         message: str) -> None:
    cohort = make_cohort(n=40, n_test=10)
    ws = _workspace(tmp_path, cohort, [("a", "resnet50", 1.0)], recipe=recipe)
    capsys.readouterr()
    assert _blend(ws) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_unknown_recipe_lists_the_known_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "demo.toml").write_text("")
    assert main(["blend", "nope", "--ensembles", str(tmp_path)]) == 2
    assert "nope.toml: recipe not found (have: demo)" in capsys.readouterr().err


def test_recipe_hash_ignores_layout_but_not_settings(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('# comment\n[method]\nname = "greedy"\n')
    (tmp_path / "b.toml").write_text('[method]\nname   =   "greedy"  # same\n')
    (tmp_path / "c.toml").write_text('[method]\nname = "mean"\n')
    a, b, c = (load_recipe(str(tmp_path / f"{x}.toml")) for x in "abc")
    assert a.digest == b.digest != c.digest
    assert a.digest == canonical_hash({"method": {"name": "greedy"}})
    assert a.out_dir == tmp_path / "a" and a.method == "greedy" and a.params["max_steps"] == 50


def test_demo_recipe_is_valid() -> None:
    recipe = load_recipe("demo", Path(__file__).parents[1] / "ensembles")
    assert recipe.method == "greedy" and recipe.tags == ("demo", "baseline") and recipe.calibration == "platt"
    assert {"rank_mean", "stacking", "hill_climb"} <= set(recipe.compare)


def test_metadata_and_dataset_come_from_the_runs_config_when_oof_lacks_them(tmp_path: Path) -> None:
    cohort = make_cohort(n=200, n_test=40)
    data = make_sample_submission(tmp_path / "data", cohort)
    runs = tmp_path / "runs"
    for i, name in enumerate(("a", "b")):
        oof, test = signal_preds(cohort, 1.0, seed=i)
        make_run(runs, name, cohort, oof, test, with_meta=False,
                 config=experiment_config(name, dataset=str(data)))
    ens = tmp_path / "ensembles"
    ens.mkdir()
    (ens / "t.toml").write_text('[report]\nbootstrap = 100\n')
    assert main(["blend", "t", "--ensembles", str(ens), "--runs", str(runs)]) == 0
    md = (ens / "t" / "report.md").read_text()
    assert f"metadata from {data / 'train.csv'}" in md and "| female |" in md and "| 75+ |" in md
    assert "images resampled" in md  # no patient_id in the OOF files
    assert "sample_submission.csv known" not in md  # found through the runs' data.dataset
