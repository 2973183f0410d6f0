"""The baseline run as the floor of every ranking: leaderboard, answers, cv_weighted, plots.

A baseline run is an ordinary run folder whose manifest says ``"role": "baseline"`` (as
`kit baseline` writes it); the runs here are synthetic (`test_blend_fixtures`).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.blend_fixtures import (
    experiment_config,
    make_baseline_run,
    make_cohort,
    make_run,
    make_sample_submission,
    signal_preds,
)

from kernels.metrics import auc
from kit.blend.methods import fit_blend
from kit.cli import main

RECIPE = """
[runs]
globs = ["*"]
[method]
name = "cv_weighted"
[calibration]
method = "none"
[report]
compare = ["rank_mean", "stacking"]
bootstrap = 300
"""


@pytest.fixture(scope="module")
def blended(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("baseline")
    cohort = make_cohort(n=1600, n_test=60, prevalence=0.2, seed=5)
    runs = tmp / "runs"
    for i, (name, backbone, weights, strength) in enumerate((
            ("strong", "efficientnet_b3", "imagenet", 1.6), ("weak", "resnet50", "none", 0.55),
            ("cnn", "scratch", "none", 1.0))):
        oof, test = signal_preds(cohort, strength, seed=i)
        make_run(runs, name, cohort, oof, test, config=experiment_config(name, backbone, weights=weights),
                 history=True)
    make_baseline_run(runs, cohort, 0.6)
    ens = tmp / "ensembles"
    ens.mkdir()
    (ens / "b.toml").write_text(RECIPE)
    data = make_sample_submission(tmp / "data", cohort)
    assert main(["blend", "b", "--ensembles", str(ens), "--runs", str(runs), "--dataset", str(data)]) == 0
    out = ens / "b"
    return {"out": out, "md": (out / "report.md").read_text(), "blend": json.loads((out / "blend.json").read_text()),
            "cohort": cohort}


def _row(md: str, run_id: str) -> str:
    return next(line for line in md.splitlines() if line.startswith("| ") and f"| {run_id}" in line)


def test_leaderboard_shows_the_floor_and_flags_runs_that_do_not_beat_it(blended: dict) -> None:
    md = blended["md"]
    assert "the floor" in _row(md, "baseline/v1 (baseline)")
    assert "does not beat the baseline" in _row(md, "weak/v1")
    assert "does not beat" not in _row(md, "strong/v1") and "p = " in _row(md, "strong/v1")
    assert "Flagged (do not beat the baseline): weak/v1." in md
    assert "Floor: baseline baseline/v1 (baseline: colour statistics + logistic regression)" in md


def test_answers_state_baseline_margin_and_separability(blended: dict) -> None:
    md = blended["md"]
    backbone = next(line for line in md.splitlines() if line.startswith("**Which backbone"))
    assert "efficientnet_b3 (pretrained backbone) leads" in backbone
    assert "Margin over the runner-up +" in backbone and "separable at 0.05" in backbone
    assert "Baseline (baseline: colour statistics" in backbone and "the leader beats it." in backbone
    assert "DeLong" not in backbone  # four images per patient: no image-level second opinion
    scratch = next(line for line in md.splitlines() if line.startswith("**Which from-scratch"))
    assert "Too few runs" in scratch and "margin over it" in scratch
    assert "| efficientnet_b3 | yes |" in md and "| resnet50 | no |" in md  # pretrained only with weights


def test_cv_weighted_weights_runs_by_their_lift_over_the_baseline(blended: dict) -> None:
    blend = blended["blend"]
    ids = [r["run_id"] for r in blend["runs"]]
    weights = dict(zip(ids, blend["weights"], strict=True))
    assert weights["baseline/v1"] == 0.0
    assert weights["strong/v1"] > weights["cnn/v1"] > weights["weak/v1"] >= 0.0
    assert blend["params"]["baseline"] == ids.index("baseline/v1")
    assert blend["info"]["floor"] == pytest.approx(blend["info"]["oof_auc"][ids.index("baseline/v1")])
    assert blend["oof_auc_headline"] == "nested_cv" and abs(sum(blend["weights"]) - 1) < 1e-12


def test_blends_are_compared_with_the_best_run_and_the_baseline(blended: dict) -> None:
    md = blended["md"]
    assert "Against the best single run (strong/v1): +" in md
    assert "Against the baseline (baseline/v1): +" in md and "(paired patient bootstrap, headline scores): better" in md
    rank_mean = _row(md, "rank_mean")
    assert rank_mean.count("p = ") == 1  # its own paired test against strong/v1


def test_cv_weighted_without_a_baseline_uses_chance_and_refuses_a_bad_column() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.3).astype(int)
    P = np.column_stack([rng.random(400), y + rng.normal(size=400), 1 - y + rng.normal(size=400)])
    fitted = fit_blend("cv_weighted", P, y, np.zeros(400, int))
    lifts = np.clip([auc(y, P[:, j]) - 0.5 for j in range(3)], 0, None)
    np.testing.assert_allclose(fitted.weights, lifts / lifts.sum())
    assert fitted.weights[2] == 0.0 and fitted.info["floor"] == 0.5
    with pytest.raises(Exception, match="baseline column 5 but only 3 runs"):
        fit_blend("cv_weighted", P, y, np.zeros(400, int), {"baseline": 5})


def test_subgroups_carry_intervals_and_the_plots_are_apart(blended: dict) -> None:
    md, out = blended["md"], blended["out"]
    assert "| age band | images | malignant | AUC [95 % interval] |" in md
    site = next(line for line in md.splitlines() if line.startswith("| torso |"))
    assert site.count("[") == 1 and "," in site.split("[")[1]
    names = {p.name for p in out.iterdir()}
    assert {"weights.png", "coefficients.png", "histogram.png", "learning_curves.png", "leaderboard.png"} <= names
    assert "| stacking |" in md and "coef " in md  # stacking's weights are labelled coefficients
    html = (out / "report.html").read_text()
    assert "max-width:520px" not in html and "learning_curves.png" in html


def test_spearman_matrix_is_scipys_for_two_and_more_runs() -> None:
    import pandas as pd

    from kit.blend.analysis import spearman

    rng = np.random.default_rng(1)
    P = rng.random((200, 3))
    P[:, 1] = P[:, 0] ** 3 + 0.1 * rng.random(200)
    for cols in (slice(0, 2), slice(0, 3)):
        expected = pd.DataFrame(P[:, cols]).corr(method="spearman").to_numpy()
        np.testing.assert_allclose(spearman(P[:, cols]), expected, atol=1e-12)
    assert spearman(P[:, :1]).tolist() == [[1.0]]
