"""`kit blend` and `kit report` end to end: recipe -> checked inputs -> scored blend -> files.

In:  a `Recipe` (and overrides: runs root, dataset folder, output folder).
Out: in the output folder (default ``ensembles/<name>/``): ``submission.csv`` (competition format,
     validated against sample_submission.csv when the dataset is known), ``blend.json`` (fields in
     `kit.blend.saved`), ``report.md``, ``report.html`` and the PNGs; the report on the console.

Everything is computed and checked before anything is written; files are written into a
temporary folder beside the output and renamed into place, so a failed blend leaves the previous
outputs untouched and never a half-written file. `write_blend=False` (kit report) replaces only
the report files.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kernels.contracts import (
    HISTORY_FILE,
    OOF_FILE,
    SUBMISSION_COLUMNS,
    TEST_PRED_FILE,
    atomic_write_text,
    file_digest,
    validate_test_pred,
    write_csv,
)
from kernels.metrics import (
    CI_LEVEL,
    AucInterval,
    auc,
    auc_columns,
    bootstrap_auc_ci,
    bootstrap_auc_matrix,
    interval_from_replicates,
    paired_bootstrap_test,
    paired_from_replicates,
)
from kit.blend import analysis, plots
from kit.blend.calibrate import CalibrationReport, apply_calibration, calibrate
from kit.blend.inputs import SAMPLE_SUBMISSION, BlendInputs, align_runs, read_expected_test
from kit.blend.memo import Memo
from kit.blend.methods import GREEDY_PATHS, METHODS, apply_blend
from kit.blend.nested import BlendScore, score_method
from kit.blend.painter import Painter, painter, painter_count
from kit.blend.recipe import NO_CALIBRATION, Recipe
from kit.blend.report import BlendSection, MethodRow, Report, Versus, print_console, to_html, to_markdown
from kit.blend.saved import BLEND_FILE, BLEND_SCHEMA, reference_quantiles
from kit.errors import KitError
from kit.run.folders import Run, load_run, select_runs

SUBMISSION_FILE = "submission.csv"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
PLOT_FILES = {
    "leaderboard": "leaderboard.png",
    "roc": "roc.png",
    "correlation": "correlation.png",
    "weights": "weights.png",
    "coefficients": "coefficients.png",
    "histogram": "histogram.png",
    "learning": "learning_curves.png",
    "subgroups": "subgroups.png",
    "calibration": "calibration.png",
}
# One BLAS thread per product: the blend runs its own threads (runs, fits) and plot workers beside them, and
# BLAS's extra threads only spin against those (the subgroup intervals took 1.5 CPU s for 0.8 s, 0.85 with one).
BLAS_THREADS = 1
RUN_THREADS = 2  # runs read, or their own statistics computed, at once (`_each`)
MAX_ROC_RUNS = 10  # the ROC plot draws the best runs (and the baseline) beside the blend, not all fifty
HEADLINE_KEYS = {True: "nested_cv", False: "in_sample"}  # blend.json oof_auc_headline, by "method learns"
REPORT_FILES = (REPORT_MD, REPORT_HTML, *PLOT_FILES.values())


@dataclass(frozen=True)
class BlendOutcome:
    """What a blend produced: the output folder, the report model and the blend.json dict (if any)."""

    out_dir: Path
    report: Report
    blend: dict[str, Any] | None
    reused: str = ""  # what came from kit's cache (`Memo.summary`), '' when nothing did


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def _each(progress: Progress, label: str, items: Sequence[Any], fn: Callable[[Any], Any], threads: int = 1) -> list[Any]:
    """``[fn(item) for item in items]`` behind a progress bar, in the items' order (the first error raised is
    the first failing item's). ``threads`` > 1 runs that many items at once: reading a run (hashing, CSV
    parsing) and its statistics (sorts, searches, BLAS products) release the GIL for much of their time, so
    two runs at once fill two cores better than one (measured on 2 cores: 50 runs read about 20 % sooner,
    their first statistics about 15 %)."""

    task = progress.add_task(label, total=len(items))
    workers = max(1, min(threads, os.cpu_count() or 1, len(items)))
    out = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        ahead = pool.map(fn, items) if workers > 1 else None  # started at once; read back in order below
        for item in items:
            progress.update(task, description=f"{label}: {getattr(item, 'run_id', item)}")
            out.append(next(ahead) if ahead is not None else fn(item))
            progress.advance(task)
    progress.update(task, description=label)
    return out


def resolve_dataset(override: str | None, recipe: Recipe, runs: Sequence[Run]) -> str | None:
    """The dataset folder: --dataset, else the recipe's, else the runs' shared data.dataset when
    it is a local folder holding sample_submission.csv; None when unknown."""
    if override:
        return override
    if recipe.dataset:
        return recipe.dataset
    sets = {str(analysis.config_value(r.info.config, "data", "dataset", default="")) for r in runs}
    if len(sets) == 1:
        (candidate,) = sets
        if candidate and (Path(candidate) / SAMPLE_SUBMISSION).is_file():
            return candidate
    return None


def _method_row(score: BlendScore, chosen: bool, ci: AucInterval, versus: tuple[Versus | None, Versus | None]
                ) -> MethodRow:
    nested = [v for v in score.nested_fold_auc.values() if not np.isnan(v)]
    spread = (min(nested), max(nested)) if nested else (float("nan"), float("nan"))
    return MethodRow(score.method, METHODS[score.method].summary, score.learned, ci, score.in_sample_auc,
                     score.nested_pooled_auc, score.in_sample_fold_mean, score.nested_auc, spread,
                     score.fitted.weights, score.fitted.link == "sigmoid", chosen, *versus)


def best_model_column(inputs: BlendInputs) -> int:
    """Index of the best single run by OOF AUC among the blended runs that are not the baseline."""
    base = baseline_column(inputs.runs)
    aucs = auc_columns(inputs.y, inputs.oof)
    if base >= 0:
        aucs[base] = -np.inf
    return int(np.argmax(aucs)) if len(aucs) > (base >= 0) else -1


def headline_ci(score: BlendScore, groups: np.ndarray | None, n_boot: int, seed: int) -> AucInterval:
    """Patient-bootstrap interval of a method's headline AUC (rows without a nested score left out)."""
    scores = score.headline_scores
    ok = ~np.isnan(scores)
    return bootstrap_auc_ci(score.y[ok], scores[ok], None if groups is None else groups[ok], n_boot, seed=seed)


def headline_figures(score: BlendScore, inputs: BlendInputs, groups: np.ndarray | None, columns: Sequence[int],
                     n_boot: int, seed: int) -> tuple[AucInterval, list[Versus | None]]:
    """Patient-bootstrap interval of a method's headline AUC and its paired comparison with each
    run column (-1: none), all on the same replicates (rows without a nested score left out)."""
    scores = score.headline_scores
    ok = ~np.isnan(scores)
    y, g = inputs.y[ok], None if groups is None else groups[ok]
    wanted = [c for c in columns if c >= 0]
    n_groups = int(np.unique(g).size) if g is not None else int(ok.sum())
    point = auc(y, scores[ok])
    if math.isnan(point) or n_boot <= 0:
        return AucInterval(point, math.nan, math.nan, CI_LEVEL, 0, n_groups), [
            None if c < 0 else Versus(inputs.run_ids[c], paired_bootstrap_test(y, scores[ok], inputs.oof[ok, c], g,
                                                                               n_boot=n_boot, seed=seed))
            for c in columns]
    reps = bootstrap_auc_matrix(y, np.vstack([scores[ok], *(inputs.oof[ok, c] for c in wanted)]), g, n_boot, seed)
    versus: list[Versus | None] = []
    for c in columns:
        if c < 0:
            versus.append(None)
            continue
        j = 1 + wanted.index(c)
        versus.append(Versus(inputs.run_ids[c], paired_from_replicates(point, auc(y, inputs.oof[ok, c]), reps[:, 0],
                                                                       reps[:, j], n_groups)))
    return interval_from_replicates(point, reps[:, 0], n_groups), versus


def _blend_json(recipe: Recipe, inputs: BlendInputs, score: BlendScore, ci: AucInterval,
                calibration: dict[str, Any] | None, cal_report: CalibrationReport | None) -> dict[str, Any]:
    fitted = score.fitted
    runs = []
    for j, run in enumerate(inputs.runs):
        runs.append({
            "run_id": run.run_id, "experiment": run.info.experiment, "version": run.info.version,
            "folder": str(run.info.folder), "weight": fitted.weights[j],
            "oof_sha256": file_digest(run.info.folder / OOF_FILE)["sha256"],
            "test_sha256": file_digest(run.info.folder / TEST_PRED_FILE)["sha256"],
            "reference": {"quantiles": reference_quantiles(inputs.test[:, j]), "n": int(inputs.test.shape[0])},
        })
    brier = None if cal_report is None else {"raw": cal_report.brier_raw, "calibrated": cal_report.brier_in_sample,
                                             "cross_fitted": cal_report.brier_cross_fitted}
    return {
        "schema": BLEND_SCHEMA,
        "name": recipe.name,
        "recipe": str(recipe.path),
        "recipe_hash": recipe.digest,
        "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "method": fitted.method,
        "params": dict(fitted.params),
        "transform": fitted.transform,
        "link": fitted.link,
        "weights": list(fitted.weights),
        "bias": fitted.bias,
        "runs": runs,
        "calibration": calibration,
        "oof_auc": score.headline_auc,
        "oof_auc_ci": [ci.low, ci.high],
        "oof_auc_headline": HEADLINE_KEYS[score.learned],
        "oof_auc_in_sample": score.in_sample_auc,
        "oof_auc_nested": score.nested_pooled_auc,
        "scores": {
            "oof_auc": score.headline_auc,
            "oof_auc_ci": [ci.low, ci.high],
            "oof_auc_in_sample": score.in_sample_auc,
            "oof_auc_nested": score.nested_pooled_auc,
            "fold_mean_in_sample": score.in_sample_fold_mean,
            "fold_mean_nested": score.nested_auc,
            "fold_auc": {str(k): v for k, v in score.in_sample_fold_auc.items()},
            "fold_auc_nested": {str(k): v for k, v in score.nested_fold_auc.items()},
            "brier": brier,
        },
        "n_oof": int(inputs.oof.shape[0]),
        "n_test": int(inputs.test.shape[0]),
        "info": _jsonable(fitted.info),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def baseline_column(runs: Sequence[Run]) -> int:
    """Index of the first run whose manifest has role "baseline" among the blended runs; -1 if none."""
    return next((j for j, run in enumerate(runs) if analysis.run_role(run) == analysis.BASELINE_ROLE), -1)


def method_overrides(method: str, params: dict[str, Any] | None, baseline: int) -> dict[str, Any] | None:
    """The params a method is fitted with: cv_weighted learns its floor from the baseline run
    among the inputs unless the recipe sets a `baseline` column (>= 0) itself."""
    if method != "cv_weighted" or baseline < 0 or int((params or {}).get("baseline", -1)) >= 0:
        return params
    return {**(params or {}), "baseline": baseline}


def _subgroups(inputs: BlendInputs, scores: np.ndarray, ok: np.ndarray, dataset: str | None,
               n_boot: int, seed: int, memo: Memo) -> tuple[dict[str, Any], str]:
    labels = analysis.subgroup_labels(inputs.meta)
    source = "OOF metadata columns"
    if not labels and dataset:
        meta = analysis.metadata_from_dataset(dataset, list(inputs.image_names))
        if meta is not None:
            labels = analysis.subgroup_labels(meta)
            source = f"metadata from {Path(dataset) / 'train.csv'}"
    if not labels:
        return {}, "the OOF files carry no sex/age/site columns and no dataset train.csv was found"
    groups = analysis.patient_groups(inputs.meta)
    args = (inputs.y[ok], scores[ok], {k: v[ok] for k, v in labels.items()}, None if groups is None else groups[ok],
            n_boot, seed)
    return memo.get("figures", ("subgroups", args), lambda: analysis.subgroup_aucs(*args)), source


def read_histories(runs: Sequence[Run], order: Sequence[str]) -> dict[str, dict[str, Any]]:
    """history.json of each run that has one, in `order` (leaderboard order); unreadable ones skipped."""
    by_id = {r.run_id: r for r in runs}
    out: dict[str, dict[str, Any]] = {}
    for run_id in order:
        path = by_id[run_id].info.folder / HISTORY_FILE if run_id in by_id else None
        if path is None or not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("folds"), list):
            out[run_id] = data
    return out


PROBABILITY_TRANSFORMS = frozenset({"prob", "power", "logit"})  # methods whose inputs are probabilities
PROBABILITY_LINKS = frozenset({"sigmoid"})  # links whose output is a probability (a logistic model)


def calibration_curves(chosen: BlendScore, run_ids: Sequence[str], oof: np.ndarray,
                       final_oof: np.ndarray | None) -> dict[str, np.ndarray]:
    """The OOF scores that are probabilities, for the reliability plot: the calibrated blend, the raw blend
    when its method gives probabilities (a mean of probabilities, a sigmoid link), a single run's own
    sigmoid. A rank blend's raw scores are ranks and never appear; no entry at all means no plot."""
    curves: dict[str, np.ndarray] = {}
    if chosen.fitted.transform in PROBABILITY_TRANSFORMS or chosen.fitted.link in PROBABILITY_LINKS:
        curves[f"blend {chosen.method} (raw)"] = chosen.in_sample
    elif len(run_ids) == 1:
        curves[f"{run_ids[0]} (the model's sigmoid)"] = oof[:, 0]
    if final_oof is not None:
        curves[f"blend {chosen.method} (calibrated)"] = final_oof
    return curves


def _blend_label(scores: Sequence[BlendScore], blend_ci: AucInterval | None) -> dict[str, tuple[float, float, float]] | None:
    if not scores or blend_ci is None:
        return None
    kind = "nested CV" if scores[0].learned else "learns nothing"
    return {f"blend ({scores[0].method}, {kind})": (blend_ci.auc, blend_ci.low, blend_ci.high)}


@dataclass(frozen=True)
class Canvas:
    """Where a blend's plots go, and what every plot shares: the painter, the leaderboard rows, run colours."""

    paint: Painter
    rows: Sequence[analysis.RunRow]
    colors: Mapping[str, str]

    def draw(self, key: str, plot: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.paint.draw(key, PLOT_FILES[key], plot, *args, **kwargs)

    def leaderboard(self, scores: Sequence[BlendScore], blend_ci: AucInterval | None) -> None:
        if self.rows:
            self.draw("leaderboard", plots.plot_leaderboard, self.rows, _blend_label(scores, blend_ci), self.colors)


def _run_plots(canvas: Canvas, runs: Sequence[Run], inputs: BlendInputs | None, memo: Memo) -> None:
    """The plots that depend on the runs alone (learning curves, the correlation heatmap): started before the
    blend is fitted, so the workers draw them meanwhile."""
    histories = read_histories(runs, [r.run_id for r in canvas.rows])
    if histories:
        canvas.draw("learning", plots.plot_learning_curves, histories, canvas.colors)
    if inputs is not None:
        matrix = memo.get("figures", ("spearman", inputs.oof), lambda: analysis.spearman(inputs.oof))
        canvas.draw("correlation", plots.plot_correlation, list(inputs.run_ids), matrix)


def _fit_plots(canvas: Canvas, inputs: BlendInputs, scores: Sequence[BlendScore]) -> None:
    """The plots of the fitted blend (ROC, score histogram, weights or coefficients), started as soon as the
    fits are done: the workers draw them while the blend's intervals and subgroups are computed."""
    chosen = scores[0]
    aucs = auc_columns(inputs.y, inputs.oof)
    shown = sorted(range(len(aucs)), key=lambda j: -np.nan_to_num(aucs[j], nan=-1.0))[:MAX_ROC_RUNS]
    base = baseline_column(inputs.runs)
    shown = sorted(set(shown) | ({base} if base >= 0 else set()))
    curves = {inputs.run_ids[j]: (inputs.oof[:, j], float(aucs[j])) for j in shown}
    kind = "nested CV" if chosen.learned else "in-sample"
    label = f"blend {chosen.method} ({kind})"
    curves[label] = (chosen.headline_scores, chosen.headline_auc)
    canvas.draw("roc", plots.plot_roc, inputs.y, curves, highlight=label, colors=canvas.colors)
    canvas.draw("histogram", plots.plot_histogram, inputs.y, chosen.headline_scores,
                f"Blend {chosen.method}: OOF scores by class ({kind})")
    shares = {s.method: s.fitted.weights for s in scores if s.fitted.link != "sigmoid"}
    coefs = {s.method: s.fitted.weights for s in scores if s.fitted.link == "sigmoid"}
    if shares:
        canvas.draw("weights", plots.plot_weights, list(inputs.run_ids), shares)
    if coefs:
        canvas.draw("coefficients", plots.plot_coefficients, list(inputs.run_ids), coefs)


def _swap_into_place(tmp: Path, out: Path, write_blend: bool) -> None:
    if write_blend:
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    for item in tmp.iterdir():
        os.replace(item, out / item.name)
    shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class BlendPart:
    """The blend half of a report: scores of every method, the submission and blend.json."""

    scores: tuple[BlendScore, ...]
    section: BlendSection
    submission: pd.DataFrame
    blend_json: dict[str, Any]
    final_oof: np.ndarray
    ci: AucInterval
    subgroups: dict[str, Any]
    subgroup_source: str


def _blend_part(recipe: Recipe, inputs: BlendInputs, expected: list[str] | None, data: str | None, out: Path,
                progress: Progress, memo: Memo, canvas: Canvas) -> BlendPart:
    """Fit the recipe's method (and the compared ones), calibrate, build and validate the submission; each
    plot is started on `canvas` as soon as what it shows is known."""
    methods = [recipe.method, *recipe.compare]
    baseline = baseline_column(inputs.runs)
    def fit(m: str) -> BlendScore:
        params = method_overrides(m, recipe.params if m == recipe.method else None, baseline)
        return memo.get("fit", (m, params, inputs.oof, inputs.y, inputs.folds),
                        lambda: score_method(m, inputs.oof, inputs.y, inputs.folds, params))

    scores = _each(progress, "fitting blends (in-sample + nested CV)", methods, fit)
    chosen = scores[0]
    _fit_plots(canvas, inputs, scores)
    groups = analysis.patient_groups(inputs.meta)
    columns = (best_model_column(inputs), baseline)
    ok = ~np.isnan(chosen.headline_scores)
    # the subgroup intervals (the slowest figures left) in a second thread, beside the headline interval
    side = ThreadPoolExecutor(max_workers=1)
    subgroups_pending = side.submit(_subgroups, inputs, chosen.headline_scores, ok, data, recipe.bootstrap,
                                    recipe.seed, memo)
    side.shutdown(wait=False)
    figures = [memo.get("figures", ("headline", s.method, s.fitted, s.headline_scores, inputs.y, inputs.oof,
                                    inputs.run_ids, groups, columns, recipe.bootstrap, recipe.seed),
                        lambda s=s: headline_figures(s, inputs, groups, columns, recipe.bootstrap, recipe.seed))
               for s in scores]
    ci = figures[0][0]
    canvas.leaderboard(scores, ci)
    test_scores = apply_blend(chosen.fitted, inputs.test)
    cal_json, cal_report, final_oof = None, None, chosen.in_sample
    if recipe.calibration != NO_CALIBRATION:
        cal, cal_report = calibrate(recipe.calibration, chosen.in_sample, inputs.y, inputs.folds)
        cal_json = cal.to_json()
        test_scores = apply_calibration(cal, test_scores)
        final_oof = apply_calibration(cal, chosen.in_sample)
    cal_curves = calibration_curves(chosen, inputs.run_ids, inputs.oof,
                                    final_oof if recipe.calibration != NO_CALIBRATION else None)
    if cal_curves:
        canvas.draw("calibration", plots.plot_calibration, inputs.y, cal_curves)
    submission = pd.DataFrame({SUBMISSION_COLUMNS[0]: inputs.test_names, SUBMISSION_COLUMNS[1]: test_scores})
    validate_test_pred(submission, f"{out / SUBMISSION_FILE}", expected)
    subgroups, subgroup_source = subgroups_pending.result()
    canvas.draw("subgroups", plots.plot_subgroups, subgroups)
    section = BlendSection(recipe.name, chosen.method, inputs.run_ids,
                           tuple(_method_row(s, i == 0, c, (v[0], v[1]))
                                 for i, (s, (c, v)) in enumerate(zip(scores, figures, strict=True))),
                           ci,
                           chosen.in_sample_fold_auc, chosen.nested_fold_auc, cal_report,
                           int(inputs.oof.shape[0]), int(inputs.test.shape[0]), groups is not None)
    return BlendPart(tuple(scores), section, submission, _blend_json(recipe, inputs, chosen, ci, cal_json, cal_report),
                     final_oof, ci, subgroups, subgroup_source)


def _write_outputs(tmp: Path, out: Path, report: Report, part: BlendPart | None, write_blend: bool) -> None:
    if part is not None and write_blend:
        write_csv(part.submission, tmp / SUBMISSION_FILE)
        atomic_write_text(tmp / BLEND_FILE, json.dumps(part.blend_json, indent=2) + "\n")
    atomic_write_text(tmp / REPORT_MD, to_markdown(report))
    atomic_write_text(tmp / REPORT_HTML, to_html(report))
    _swap_into_place(tmp, out, write_blend)


def run_blend(
    recipe: Recipe,
    root: str | None = None,
    dataset: str | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    write_blend: bool = True,
    console: Console | None = None,
    title: str | None = None,
    cache: bool = True,
) -> BlendOutcome:
    """Select, load, check, blend, score, calibrate, report; write outputs atomically (see module doc).
    `cache`: reuse fits, figures and plots stored by an earlier blend of identical inputs (`kit.blend.memo`)."""
    from threadpoolctl import threadpool_limits

    console = console or Console(quiet=True)
    memo = Memo.open(enabled=cache)
    token = GREEDY_PATHS.set(memo if memo.root is not None else None)
    try:
        with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
            return _run_blend(recipe, root, dataset, out_dir, write_blend, console, title, memo)
    finally:
        GREEDY_PATHS.reset(token)


def _run_blend(recipe: Recipe, root: str | None, dataset: str | None, out_dir: str | os.PathLike[str] | None,
               write_blend: bool, console: Console, title: str | None, memo: Memo) -> BlendOutcome:
    out = Path(out_dir) if out_dir else recipe.out_dir
    infos = select_runs(root or recipe.root, recipe.names, recipe.tags, recipe.globs, recipe.latest)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    # the plot workers are forked first, before any thread starts, and import matplotlib while the runs load
    with painter(tmp, memo, painter_count()) as paint, _progress(console) as progress:
        frames = memo if memo.root is not None else None
        runs = _each(progress, "loading runs", infos, lambda info: load_run(info, frames=frames), RUN_THREADS)
        data = resolve_dataset(dataset, recipe, runs)
        expected = read_expected_test(data) if data else None
        try:
            inputs: BlendInputs | None = align_runs(runs, expected)
        except KitError:
            if write_blend:
                raise
            inputs = None  # kit report over runs that cannot be blended: leaderboard and answers only
        rows = sorted(_each(progress, "bootstrap intervals per run", runs,
                            lambda r: analysis.run_row(r, recipe.bootstrap, recipe.seed), RUN_THREADS),
                      key=analysis.leaderboard_order)
        by_id = {r.run_id: r for r in runs}
        rows = analysis.with_baseline(rows, by_id, recipe.bootstrap, recipe.seed)
        answers = (analysis.pretrained_answer(rows, by_id, n_boot=recipe.bootstrap, seed=recipe.seed),
                   *(analysis.answer(f, rows, by_id, n_boot=recipe.bootstrap, seed=recipe.seed)
                     for f in analysis.FAMILIES))
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            canvas = Canvas(paint, rows, plots.run_colors([(r.run_id, r.role)
                                                           for r in sorted(rows, key=lambda r: r.run_id)]))
            _run_plots(canvas, runs, inputs, memo)
            part = (_blend_part(recipe, inputs, expected, data, out, progress, memo, canvas)
                    if inputs is not None else None)
            if part is None:
                canvas.leaderboard((), None)
            task = progress.add_task("plots and report", total=None)
            plot_files = paint.finish()
            notes = list(inputs.notes) if inputs else [
                "The runs cover different images or targets, so they are not blended; leaderboard and answers only."]
            if inputs is not None and expected is None:
                notes.append("No sample_submission.csv known (set data.dataset or --dataset): test image names were "
                             "checked against the reference run only.")
            if not write_blend and (out / BLEND_FILE).exists():
                notes.append("Report only: submission.csv and blend.json were not rewritten.")
            outputs = {"folder": str(out)}
            if part is not None and write_blend:
                outputs.update({"submission": str(out / SUBMISSION_FILE), "blend": str(out / BLEND_FILE)})
            report = Report(
                title=title or f"Ensemble {recipe.name}",
                created_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                leaderboard=tuple(rows), answers=answers, blend=part.section if part else None,
                subgroups=part.subgroups if part else {}, subgroup_source=part.subgroup_source if part else "",
                plots=plot_files, notes=tuple(notes), outputs=outputs,
            )
            _write_outputs(tmp, out, report, part, write_blend)
            progress.remove_task(task)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print_console(report, console, str(out / REPORT_MD))
    return BlendOutcome(out, report, part.blend_json if part and write_blend else None, memo.summary())
