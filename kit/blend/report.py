"""Render a blend / runs report three ways from one model: rich console, Markdown, HTML.

In:  a `Report` (built by `kit.blend.build`): leaderboard rows, answers, blend scores,
     calibration, subgroups, notes and the file names of the PNG plots beside it.
Out: `sections(report)` (titles, paragraphs, tables as strings, images), rendered by
     `to_markdown`, `to_html` (self-contained apart from the PNGs it references) and
     `print_console`. Rendering is pure: the caller writes the text where it belongs.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rich.console import Console

from kernels.metrics import AucInterval, PairedResult
from kit.blend.analysis import ALPHA, Answer, RunRow, SubgroupRow, fmt_diff
from kit.blend.calibrate import CalibrationReport
from kit.console import MUST, Col, Grid, print_grid

NA = "—"
SELECTED_MARK = " †"  # a run whose OOF epochs were chosen on the OOF rows (train.keep = best)
MAX_WEIGHTS_SHOWN = 8  # more runs than this: the table lists the largest weights only
TOP_WEIGHTS_SHOWN = 4


@dataclass(frozen=True)
class Versus:
    """A blend's headline scores against one run on the same rows (paired patient bootstrap)."""

    run_id: str
    test: PairedResult


@dataclass(frozen=True)
class MethodRow:
    """One blend method scored both ways."""

    method: str
    summary: str
    learned: bool  # learns from the OOF labels: the headline is then the nested-CV figure
    headline: AucInterval  # pooled headline AUC (nested CV when learned) with its patient-bootstrap interval
    in_sample: float  # pooled OOF AUC, weights learned on the same rows
    nested_pooled: float  # pooled nested-CV AUC
    in_sample_fold_mean: float
    nested: float  # mean over folds of the nested-CV fold AUC
    nested_range: tuple[float, float]  # lowest and highest nested fold AUC
    weights: tuple[float, ...]
    coefficients: bool  # the weights are logistic-regression coefficients, not shares summing to 1
    chosen: bool
    vs_best: Versus | None = None  # against the best single (non-baseline) run
    vs_baseline: Versus | None = None  # against the baseline run


@dataclass(frozen=True)
class BlendSection:
    """The blend part of a report."""

    name: str
    method: str
    run_ids: tuple[str, ...]
    rows: tuple[MethodRow, ...]
    ci: AucInterval
    fold_auc: Mapping[int, float]
    fold_auc_nested: Mapping[int, float]
    calibration: CalibrationReport | None
    n_oof: int
    n_test: int
    patients: bool


@dataclass(frozen=True)
class Report:
    """Everything a report shows; `plots` maps a plot key to its PNG file name."""

    title: str
    created_at: str
    leaderboard: tuple[RunRow, ...]
    answers: tuple[Answer, ...]
    blend: BlendSection | None
    subgroups: Mapping[str, Sequence[SubgroupRow]]
    subgroup_source: str
    plots: Mapping[str, str]
    notes: tuple[str, ...] = ()
    outputs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TableSpec:
    """A table as strings: title, header and rows. A "\n" in a cell starts a new line on the console
    (an interval under its AUC) and is a space in the files. `console`: the console's columns (short
    headers, legends, priorities; see kit.console), one per header."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    console: tuple[Col, ...] = ()
    heading: int = 1  # leading columns that name a row (the console's record layout)


@dataclass(frozen=True)
class Section:
    """A report section: paragraphs, tables and images (caption, file name)."""

    title: str
    paragraphs: tuple[str, ...] = ()
    tables: tuple[TableSpec, ...] = ()
    images: tuple[tuple[str, str], ...] = ()


def _f(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    return f"{value:.{digits}f}"


def _ci(ci: AucInterval | None) -> str:
    if ci is None or math.isnan(ci.low):
        return NA
    return f"[{ci.low:.3f}, {ci.high:.3f}]"


def _auc_ci(auc: float | None, ci: AucInterval | None) -> str:
    """"0.709\n[0.650, 0.760]": the AUC, its interval on the next line (a space in the files)."""
    return f"{_f(auc)}\n{_ci(ci)}"


def _diff_lines(test: PairedResult) -> str:
    """A paired difference over its interval over its p-value: "+0.012", "[-0.004, +0.029]", "p = 0.14"."""
    return f"{test.diff:+.3f}\n[{test.low:+.3f}, {test.high:+.3f}]\np = {test.p:.2g}"


def _signed(value: float | None) -> str:
    return NA if value is None or math.isnan(value) else f"{value:+.3f}"


def _versus_baseline(r: RunRow) -> str:
    if r.is_baseline:
        return "the floor"
    if r.vs_baseline is None:
        return NA
    return _diff_lines(r.vs_baseline) + ("" if r.beats_baseline else "\n⚠ does not beat\nthe baseline")


RUN_COLS = (Col("#", keep=MUST, right=True), Col("run", keep=MUST, wrap=True))
AUC_COL = Col("AUC", "OOF AUC over its 95 % interval", keep=MUST)
VS_BASE_COL = Col("vs base", "AUC minus the baseline's over its 95 % interval and p (paired bootstrap)", keep=8)


def monte_carlo_text(cis: Sequence[AucInterval]) -> str:
    """" 1000 replicates; Monte Carlo error of an interval end at most ±0.004." ("" without replicates):
    how far a rerun with another seed could move the shown interval ends (one standard error)."""
    used = [ci for ci in cis if ci.n_boot > 0 and not math.isnan(ci.mc_error)]
    if not used:
        return ""
    counts = sorted({ci.n_boot for ci in used})
    drawn = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return (f" {drawn} replicates; Monte Carlo error of an interval end at most ±{max(ci.mc_error for ci in used):.3f}"
            " (one standard error: how far another seed could move it).")


def _leaderboard(report: Report) -> Section:
    header = ("#", "run", "backbone / architecture", "weights", "size", "epochs", "OOF AUC [95 % interval]",
              "vs baseline: Δ AUC [95 %] p", "TTA gain", "s / epoch")
    cols = (*RUN_COLS, Col("model", "backbone or architecture", keep=6, wrap=True),
            Col("weights", keep=1, wrap=True), Col("px", "image size", keep=3, right=True),
            Col("ep", "epochs", keep=2, right=True), AUC_COL, VS_BASE_COL,
            Col("TTA", "AUC gain of test-time augmentation", keep=4, right=True),
            Col("s/ep", "seconds per epoch", keep=0, right=True))
    rows = tuple(
        (str(i + 1), r.run_id + (" (baseline)" if r.is_baseline else "") + (SELECTED_MARK if r.selected else ""),
         r.architecture,
         NA if r.is_baseline else r.weights + (" (pretrained)" if r.pretrained else ""),  # it loads no weights
         str(r.image_size or NA), str(r.epochs or NA),
         _auc_ci(r.auc, r.ci), _versus_baseline(r), _signed(r.tta_gain), _f(r.sec_per_epoch, 1))
        for i, r in enumerate(report.leaderboard)
    )
    patients = all(r.patients for r in report.leaderboard)
    text = ["Intervals: percentile bootstrap, " + ("patients resampled." if patients else
            "images resampled (some OOF files carry no patient_id, so images count as patients).")
            + monte_carlo_text([r.ci for r in report.leaderboard] + ([report.blend.ci] if report.blend else []))
            + " TTA gain: mean over folds of AUC with minus without test-time augmentation."]
    if any(r.selected for r in report.leaderboard):
        text.append(f"{SELECTED_MARK.strip()} selected: each fold kept its best epoch by its own validation AUC "
                    "(train.keep = best), so its OOF AUC and TTA gain are optimistic; keep = swa or last is not.")
    base = next((r for r in report.leaderboard if r.is_baseline), None)
    if base is None:
        text.append("No baseline run (a run whose manifest has role = baseline, written by `kit baseline`): "
                    "nothing shows whether these models beat colour statistics.")
    else:
        losers = [r.run_id for r in report.leaderboard if not r.is_baseline and r.beats_baseline is False]
        text.append(f"Floor: baseline {base.run_id} ({base.architecture}), OOF AUC {_f(base.auc)} {_ci(base.ci)}. "
                    "vs baseline: the run's AUC minus the baseline's on the same images, paired patient "
                    f"bootstrap; a run beats the baseline when Δ > 0 with p < {ALPHA}. "
                    + (f"Flagged (do not beat the baseline): {', '.join(losers)}." if losers else
                       "Every compared run beats the baseline."))
    images = tuple((cap, report.plots[key]) for key, cap in (
        ("leaderboard", "OOF AUC with 95 % intervals"), ("learning", "Learning curves per fold")) if key in report.plots)
    return Section("Leaderboard", tuple(text), (TableSpec("Runs", header, rows, cols, heading=2),), images)


def _answers(report: Report) -> Section:
    paragraphs: list[str] = []
    tables = []
    for ans in report.answers:
        paragraphs.append(f"**{ans.question}** {ans.verdict}")
        paragraphs.extend(f"Caveat: {c}." for c in ans.caveats)
        if ans.ranking:
            rows = tuple((str(i + 1), r.architecture, "yes" if r.pretrained else "no", r.run_id,
                          _auc_ci(r.auc, r.ci), _versus_baseline(r))
                         for i, r in enumerate(ans.ranking))
            kind = {"backbone": "backbones", "scratch": "from-scratch architectures"}.get(ans.family)
            title = f"Ranking ({kind}): best run each" if kind else "Best pretrained run and best run from random init"
            cols = (Col("#", keep=MUST, right=True), Col("model", "architecture", keep=MUST, wrap=True),
                    Col("pre", "pretrained", keep=3), Col("best run", keep=6, wrap=True), AUC_COL, VS_BASE_COL)
            tables.append(TableSpec(title, ("#", "architecture", "pretrained", "best run", "OOF AUC [95 % interval]",
                                            "vs baseline: Δ AUC [95 %] p"), rows, cols, heading=2))
    return Section("Answers", tuple(paragraphs), tuple(tables))


def _folds(report: Report) -> Section:
    folds = sorted({k for r in report.leaderboard for k in r.fold_auc}
                   | set(report.blend.fold_auc if report.blend else ()))
    header = ("run", *(f"fold {k}" for k in folds), "overall")
    cols = (Col("run", keep=MUST, wrap=True), *(Col(f"f{k}", keep=MUST - 1, right=True) for k in folds),
            Col("all", "all OOF rows pooled; f<k>: AUC on fold k", keep=MUST, right=True))
    rows = [(r.run_id, *(_f(r.fold_auc.get(k)) for k in folds), _f(r.auc)) for r in report.leaderboard]
    if report.blend:
        b = report.blend
        chosen = next(m for m in b.rows if m.chosen)
        rows.append((f"blend {b.name} ({b.method}, nested CV)", *(_f(b.fold_auc_nested.get(k)) for k in folds),
                     _f(chosen.nested_pooled)))
        rows.append((f"blend {b.name} ({b.method}, in-sample)", *(_f(b.fold_auc.get(k)) for k in folds),
                     _f(chosen.in_sample)))
    text = ("Overall: the AUC of all OOF rows pooled, for runs and blends alike (a run's OOF pools its fold "
            "models; the nested-CV blend pools its per-fold fits).",) if report.blend else ()
    return Section("OOF AUC per fold", text, (TableSpec("Per-fold AUC", header, tuple(rows), cols),))


def _weights_text(weights: Sequence[float], run_ids: Sequence[str]) -> str:
    """All weights in run order when few; else the largest ones by run id and how many are non-zero."""
    if len(weights) <= MAX_WEIGHTS_SHOWN:
        return " ".join(f"{w:.2f}" for w in weights)
    top = sorted(((w, r) for w, r in zip(weights, run_ids, strict=True) if w != 0), key=lambda p: -abs(p[0]))
    top = top[:TOP_WEIGHTS_SHOWN]
    nonzero = sum(1 for w in weights if w != 0)
    rest = f" and {nonzero - len(top)} more" if nonzero > len(top) else ""
    return ", ".join(f"{r} {w:.2f}" for w, r in top) + f"{rest} ({nonzero} of {len(weights)} non-zero)"


def _blend(report: Report) -> list[Section]:
    b = report.blend
    if b is None:
        return []
    header = ("method", "headline OOF AUC [95 %]", "headline is", "vs best run: Δ [95 %] p", "in-sample AUC",
              "fold mean: nested / in-sample", "nested fold range", "optimism", "weights", "")
    cols = (Col("method", keep=MUST, wrap=True), Col("AUC", "headline OOF AUC over its 95 % interval", keep=MUST),
            Col("scored", "how the headline is scored", keep=5, wrap=True),
            Col("vs best", "AUC minus the best run's over its 95 % interval and p", keep=8),
            Col("in-sample", "in-sample AUC", keep=2, right=True),
            Col("folds", "fold mean, nested / in-sample", keep=1),
            Col("range", "nested fold range", keep=0),
            Col("optimism", "in-sample minus nested fold mean", keep=4, right=True),
            Col("weights", "blend weights in run order", keep=0, wrap=True),
            Col("", keep=MUST, wrap=True))
    rows = tuple(
        (m.method, _auc_ci(m.headline.auc, m.headline), "nested CV" if m.learned else "in-sample (learns nothing)",
         NA if m.vs_best is None else _diff_lines(m.vs_best.test), _f(m.in_sample),
         f"{_f(m.nested)} / {_f(m.in_sample_fold_mean)}",
         NA if math.isnan(m.nested_range[0]) else f"{m.nested_range[0]:.3f}–{m.nested_range[1]:.3f}",
         _signed(m.in_sample_fold_mean - m.nested),
         ("coef " if m.coefficients else "") + _weights_text(m.weights, b.run_ids),
         "submitted" if m.chosen else "")
        for m in b.rows
    )
    chosen = next(m for m in b.rows if m.chosen)
    if chosen.learned and math.isnan(b.ci.auc):
        head = (f"Blend **{b.name}** of {len(b.run_ids)} run(s) with **{b.method}** ({chosen.summary}): no honest "
                f"OOF AUC: nested CV needs two folds holding both classes, and the OOF has fewer. In-sample "
                f"{_f(chosen.in_sample)} (weights learned and scored on the same rows) is optimistic; prefer a "
                "method that learns nothing (rank_mean) here.")
    elif chosen.learned:
        head = (f"Blend **{b.name}** of {len(b.run_ids)} run(s) with **{b.method}** ({chosen.summary}): OOF AUC "
                f"{_f(b.ci.auc)} {_ci(b.ci)} by nested CV (weights learned on the other folds; patient-bootstrap "
                f"interval); in-sample {_f(chosen.in_sample)} (weights learned and scored on the same rows, "
                f"optimistic). Fold means: nested {_f(chosen.nested)} vs in-sample {_f(chosen.in_sample_fold_mean)}.")
    else:
        head = (f"Blend **{b.name}** of {len(b.run_ids)} run(s) with **{b.method}** ({chosen.summary}): OOF AUC "
                f"{_f(b.ci.auc)} {_ci(b.ci)} (the method learns nothing from the labels, so in-sample is honest; "
                f"patient-bootstrap interval); fold mean {_f(chosen.in_sample_fold_mean)}.")
    versus = []
    for v, what in ((chosen.vs_best, "the best single run"), (chosen.vs_baseline, "the baseline")):
        if v is not None:
            verdict = ("better" if v.test.diff > 0 else "worse") if v.test.p < ALPHA else "not separable from it"
            versus.append(f"Against {what} ({v.run_id}): {fmt_diff(v.test)} (paired patient bootstrap, "
                          f"headline scores): {verdict}.")
    text = [
        head + f" {b.n_oof} OOF images, {b.n_test} test images." + (" " + " ".join(versus) if versus else ""),
        "Headline: for a method that learns from the OOF labels, the nested-CV AUC pooled over the OOF rows "
        "(each fold scored by weights learned on the other folds), as a run's OOF AUC pools its fold models; "
        "for a method that learns nothing, its in-sample AUC (the same figure). In-sample: weights learned and "
        "scored on the same rows. Optimism = in-sample fold mean - nested fold mean: how much of the in-sample "
        "score is fitted noise. Stacking's weights are logistic-regression coefficients (coef), not shares.",
        "Runs (weight order): " + ", ".join(b.run_ids) + ".",
    ]
    images = tuple((cap, report.plots[key]) for key, cap in (
        ("roc", "ROC curves of runs and blend"), ("weights", "Blend weights"),
        ("coefficients", "Stacking coefficients"), ("histogram", "Blend predictions by class"),
        ("correlation", "Correlation of run predictions")) if key in report.plots)
    sections = [Section("Blend", tuple(text), (TableSpec("Methods", header, rows, cols),), images)]
    cal = b.calibration
    cal_text = ("No calibration (recipe calibration.method = none): submitted values are blend scores, "
                "ranked correctly but not probabilities." if cal is None else
                f"{cal.method} calibration fitted on OOF. Brier score (lower is better): raw {_f(cal.brier_raw, 4)}, "
                f"calibrated in-sample {_f(cal.brier_in_sample, 4)}, cross-fitted {_f(cal.brier_cross_fitted, 4)}.")
    cal_images = (("Reliability curve", report.plots["calibration"]),) if "calibration" in report.plots else ()
    cal_lines = (cal_text,) if cal_images else (
        cal_text, f"No reliability curve: {b.method}'s scores are not probabilities (ranks, or a blend of them), "
                  "so a curve of them would mislead; a calibrated blend (calibration.method = platt or isotonic) "
                  "gets one.")
    sections.append(Section("Calibration", cal_lines, (), cal_images))
    return sections


def _subgroups(report: Report) -> Section:
    if not report.subgroups:
        return Section("Subgroups", (f"No subgroup metadata ({report.subgroup_source}).",))
    tables = tuple(
        TableSpec(f"AUC by {dim}", (dim, "images", "malignant", "AUC [95 % interval]"),
                  tuple((label, str(n), str(p), _auc_ci(ci.auc, ci)) for label, n, p, ci in rows),
                  (Col(dim, keep=MUST, wrap=True), Col("images", keep=MUST, right=True),
                   Col("malignant", keep=MUST, right=True), AUC_COL))
        for dim, rows in report.subgroups.items()
    )
    images = (("AUC per subgroup", report.plots["subgroups"]),) if "subgroups" in report.plots else ()
    return Section("Subgroups", (f"AUC of the submitted blend's headline OOF scores per subgroup "
                                 f"({report.subgroup_source}), with patient-bootstrap intervals: a subgroup with few "
                                 "malignant cases has a wide interval, and a gap between subgroups is a finding "
                                 "only where the intervals say so.",),
                   tables, images)


def sections(report: Report) -> list[Section]:
    """The report as ordered sections (shared by every renderer)."""
    out = [_leaderboard(report), _answers(report), _folds(report), *_blend(report)]
    if report.blend is not None:
        out.append(_subgroups(report))
    tail = list(report.notes)
    if report.outputs:
        tail.append("Outputs: " + ", ".join(f"{k}: {v}" for k, v in report.outputs.items()))
    if tail:
        out.append(Section("Notes", tuple(tail)))
    return out


def _md_cell(text: str) -> str:
    return text.replace("\n", " ").replace("|", "\\|")


def to_markdown(report: Report) -> str:
    """The report as Markdown, images referenced by file name."""
    lines = [f"# {report.title}", "", f"_Generated {report.created_at}._", ""]
    for sec in sections(report):
        lines += [f"## {sec.title}", ""]
        for p in sec.paragraphs:
            lines += [p, ""]
        for t in sec.tables:
            lines += [f"**{t.title}**", "", "| " + " | ".join(map(_md_cell, t.header)) + " |",
                      "|" + "---|" * len(t.header)]
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in t.rows]
            lines.append("")
        for caption, name in sec.images:
            lines += [f"![{caption}]({name})", ""]
    return "\n".join(lines)


# A phone's width: the page never scrolls sideways; a wide table scrolls inside its own box, long words
# (paths) break, images shrink to the column.
HTML_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
p{overflow-wrap:anywhere}.table{overflow-x:auto;margin:.5em 0 1.5em}
table{border-collapse:collapse}.caption{margin:1em 0 .25em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2}td{font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:.5em;max-width:100%}img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.9em;color:#555}.id{white-space:nowrap}
@media (max-width:600px){body{margin:1em auto;padding:0 .5em}figure{margin:.5em 0}td{white-space:nowrap}}"""
_HTML_WHOLE = re.compile(r"(\S*[-/]\S*)")  # run ids, names like d1-1-1-1, signed numbers: never broken in a cell


def _html_cell(text: str) -> str:
    return _HTML_WHOLE.sub(r"<span class='id'>\1</span>", html.escape(text.replace("\n", " ")))


def _html_text(text: str) -> str:
    escaped = html.escape(text)
    parts = escaped.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def to_html(report: Report) -> str:
    """The report as one HTML page with the PNGs beside the numbers."""
    out = ["<!doctype html><html><head><meta charset='utf-8'>",
           "<meta name='viewport' content='width=device-width, initial-scale=1'>",
           f"<title>{html.escape(report.title)}</title>",
           f"<style>{HTML_STYLE}</style></head><body>", f"<h1>{html.escape(report.title)}</h1>",
           f"<p><i>Generated {html.escape(report.created_at)}.</i></p>"]
    for sec in sections(report):
        out.append(f"<h2>{html.escape(sec.title)}</h2>")
        out.extend(f"<p>{_html_text(p)}</p>" for p in sec.paragraphs)
        for t in sec.tables:
            out.append(f"<p class='caption'><b>{html.escape(t.title)}</b></p><div class='table'><table><tr>"
                       + "".join(f"<th>{html.escape(h)}</th>" for h in t.header) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>" for row in t.rows)
            out.append("</table></div>")
        for caption, name in sec.images:
            out.append(f"<figure><img src='{html.escape(name)}' alt='{html.escape(caption)}'>"
                       f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def print_console(report: Report, console: Console, full_in: str = "report.md") -> None:
    """Paragraphs and width-aware tables on the console (kit.console: short headers and a legend, fewer
    columns or records when narrow, the full tables named in `full_in`); images are named, not shown."""
    console.rule(f"[bold]{report.title}")
    for sec in sections(report):
        console.print(f"\n[bold underline]{sec.title}[/]")
        for p in sec.paragraphs:
            console.print(p.replace("**", ""), markup=False)
        for t in sec.tables:
            cols = t.console or tuple(Col(h, keep=MUST, wrap=True) for h in t.header)
            print_grid(Grid(t.title, cols, t.rows, full_in=full_in, heading=t.heading), console)
        if sec.images:
            console.print("plots: " + ", ".join(name for _, name in sec.images), style="dim")
