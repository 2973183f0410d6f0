"""Plots that do not mislead, on the demo fixtures (tests/helpers/blend_fixtures.py: synthetic run folders).

- calibration: drawn only for scores that are probabilities (a calibrated blend, a blend whose method gives
  probabilities, a single model's sigmoid); a rank blend gets no reliability curve and the report says why;
- learning curves: the legend outside the panels, robust y-limits, a loss spike drawn clipped with its value;
- one colour per run across plots (the baseline always red, the blend black);
- subgroup panels only for metadata that varies;
- the baseline's leaderboard row without the training fields it does not have (weights, epochs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.blend_fixtures import (
    experiment_config,
    make_baseline_run,
    make_cohort,
    make_run,
    make_sample_submission,
    signal_preds,
)
from matplotlib.colors import to_hex

from kernels.schema import SITES
from kit.blend import plots
from kit.blend.analysis import subgroup_labels
from kit.cli import main

RECIPE = """
[runs]
globs = ["*"]
[method]
name = "{method}"
[calibration]
method = "{calibration}"
[report]
bootstrap = 100
"""
SPIKE = 2.4


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("plots")
    cohort = make_cohort(n=400, n_test=40, prevalence=0.2, seed=3)
    runs = tmp / "runs"
    for i, (name, strength) in enumerate((("alpha", 1.2), ("beta", 0.8))):
        oof, test = signal_preds(cohort, strength, seed=i)
        make_run(runs, name, cohort, oof, test, config=experiment_config(name, "efficientnet_b0"), history=True)
    make_baseline_run(runs, cohort, 0.5)
    data = make_sample_submission(tmp / "data", cohort)
    return {"tmp": tmp, "runs": runs, "data": data}


def _blend(ws: dict[str, Path], name: str, method: str, calibration: str) -> Path:
    ens = ws["tmp"] / "ensembles"
    ens.mkdir(exist_ok=True)
    (ens / f"{name}.toml").write_text(RECIPE.format(method=method, calibration=calibration))
    assert main(["blend", name, "--ensembles", str(ens), "--runs", str(ws["runs"]), "--dataset", str(ws["data"])]) == 0
    return ens / name


def test_a_rank_blend_gets_no_reliability_curve_and_the_report_says_why(workspace) -> None:
    out = _blend(workspace, "ranks", "rank_mean", "none")
    assert not (out / "calibration.png").exists()
    report = " ".join((out / "report.md").read_text().split())
    assert "No reliability curve: rank_mean's scores are not probabilities" in report
    calibrated = _blend(workspace, "ranks-platt", "rank_mean", "platt")
    assert (calibrated / "calibration.png").is_file()
    probabilities = _blend(workspace, "means", "mean", "none")  # a mean of sigmoids is a probability
    assert (probabilities / "calibration.png").is_file()


def test_calibration_curves_hold_only_probabilities() -> None:
    from kit.blend.build import calibration_curves
    from kit.blend.nested import score_method

    cohort = make_cohort(n=200, seed=1)
    oof = np.column_stack([signal_preds(cohort, s, seed=i)[0] for i, s in enumerate((1.0, 0.7))])
    ranked = score_method("rank_mean", oof, cohort.y, cohort.folds)
    assert calibration_curves(ranked, ["a", "b"], oof, None) == {}
    single = score_method("rank_mean", oof[:, :1], cohort.y, cohort.folds)
    assert list(calibration_curves(single, ["a"], oof[:, :1], None)) == ["a (the model's sigmoid)"]
    stacked = score_method("stacking", oof, cohort.y, cohort.folds)
    assert list(calibration_curves(stacked, ["a", "b"], oof, None)) == ["blend stacking (raw)"]
    with pytest.raises(ValueError, match="not probabilities"):
        plots.plot_calibration(Path("unused.png"), cohort.y, {"ranks": np.linspace(0, 2, cohort.y.size)})


def test_learning_curves_put_the_legend_outside_and_show_a_spike_clipped(tmp_path: Path) -> None:
    epochs = np.arange(1, 9)
    loss = (0.6 / epochs + 0.1).tolist()
    spiky = list(loss)
    spiky[3] = SPIKE
    history = {"folds": [{"fold": 0, "best_epoch": 6, "loss": loss, "val_loss": spiky, "auc": [0.6 + 0.03 * e for e in epochs],
                          "val_auc": [0.6 + 0.02 * e for e in epochs]},
                         {"fold": 1, "best_epoch": 7, "loss": loss, "val_loss": loss, "auc": [0.6 + 0.03 * e for e in epochs],
                          "val_auc": [0.58 + 0.02 * e for e in epochs]}]}
    fig = plots.plot_learning_curves(tmp_path / "learning.png", {"run/v1": history}, {"run/v1": "tab:green"})
    assert (tmp_path / "learning.png").stat().st_size > 0
    ax_loss, ax_auc = fig.axes[:2]
    low, high = ax_loss.get_ylim()
    assert high < SPIKE and high > max(loss)  # the spike does not flatten the rest, the rest is all there
    assert any("(clipped)" in t.get_text() and "2.4" in t.get_text() for t in ax_loss.texts)
    renderer = fig.canvas.get_renderer()
    legend = ax_auc.get_legend()
    assert legend is not None
    assert legend.get_window_extent(renderer).x0 >= ax_auc.get_window_extent(renderer).x1  # outside the data
    assert to_hex(ax_auc.lines[0].get_color()) == to_hex("tab:green")  # the run's colour (fold 0)


def test_robust_limits_keep_every_value_when_nothing_spikes() -> None:
    values = [0.5, 0.45, 0.4, 0.38, 0.36]
    low, high = plots.robust_limits(values)
    assert low < min(values) and high > max(values)
    assert plots.robust_limits([])[1] > plots.robust_limits([])[0]


def test_one_colour_per_run_in_every_plot(tmp_path: Path, workspace) -> None:
    colors = plots.run_colors([("alpha/v1", "model"), ("baseline/v1", "baseline"), ("beta/v1", "model")])
    assert colors["baseline/v1"] == plots.BASELINE_COLOR
    assert len(set(colors.values())) == 3
    cohort = make_cohort(n=200, seed=2)
    curves = {rid: (signal_preds(cohort, 1.0, seed=i)[0], 0.7) for i, rid in enumerate(colors)}
    curves["blend"] = (signal_preds(cohort, 1.2, seed=9)[0], 0.8)
    roc = plots.plot_roc(tmp_path / "roc.png", cohort.y, curves, highlight="blend", colors=colors)
    by_label = {line.get_label().split(" (")[0]: to_hex(line.get_color()) for line in roc.axes[0].lines}
    for rid, color in colors.items():
        assert by_label[rid] == to_hex(color)
    assert by_label["blend"] == to_hex(plots.BLEND_COLOR)
    # the leaderboard of a real blend uses the same map: the baseline red there too
    out = _blend(workspace, "colours", "rank_mean", "none")
    assert (out / "leaderboard.png").is_file() and (out / "roc.png").is_file()


def test_subgroup_panels_only_for_columns_that_vary() -> None:
    """The issue's case: a site panel that would hold only "missing" (the OOF's codes all say missing)."""
    missing_code = SITES.index("missing")
    meta = pd.DataFrame({"sex": ["male", "female", "male"], "age_approx": [35, 50, 70],
                         "anatom_site_general_challenge": [missing_code] * 3})
    assert set(subgroup_labels(meta)) == {"sex", "age band"}
    varied = meta.assign(anatom_site_general_challenge=["torso", "head/neck", None])
    assert set(subgroup_labels(varied)) == {"sex", "age band", "anatomical site"}


def test_the_baseline_row_has_no_weights_or_epochs(workspace) -> None:
    out = _blend(workspace, "rows", "rank_mean", "none")
    rows = [line for line in (out / "report.md").read_text().splitlines() if "(baseline)" in line and line.startswith("|")]
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    header = ["#", "run", "backbone / architecture", "weights", "size", "epochs"]
    row = dict(zip(header, cells[:6], strict=True))
    assert row["weights"] == "—" and row["epochs"] == "—"
    assert json.loads((out / "blend.json").read_text())["method"] == "rank_mean"
