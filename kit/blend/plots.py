"""The report's PNG plots (matplotlib, Agg canvas, no pyplot state).

In:  plain arrays and the dataclasses of `kit.blend.analysis`; an output path per plot.
Out: PNG files written atomically: ROC curves of runs and blend, Spearman correlation heatmap,
     blend weights per method (shares) and stacking coefficients (a plot of their own), AUC per
     subgroup with intervals, reliability (calibration) curve, histograms of the blend's
     predictions by class, learning curves per fold of each run (history.json), and the
     leaderboard as AUCs with their intervals, the baseline as a floor line.

ROC corners come from `kernels.metrics.roc_points` (as scikit-learn's `roc_curve`), reliability bins from
scikit-learn's `calibration_curve`. Colours: `run_colors` gives
each run one colour used by every plot (the baseline always red, the blend always black). The plots that
a caller may inspect return their `Figure` (already written).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from kernels.contracts import atomic_write_bytes
from kit.blend.analysis import RunRow, SubgroupRow

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 110
LABEL_MAX = 32  # characters of a run id shown on an axis
RELIABILITY_BINS = 10
HIST_BINS = 30
WIDE = (7.5, 4.5)
SQUARE = (6.0, 5.5)
ROW_INCH = 0.38  # height per leaderboard / heatmap row
CELL_INCH = 0.62  # width and height of a correlation cell
MAX_CELL_TEXT = 16  # more runs than this: the heatmap's cells carry no numbers
MAX_HEATMAP_INCH = 12.0  # the correlation heatmap's side at most: cells shrink past ~15 runs
LABEL_POINTS = 8.0  # tick-label size at most; smaller cells take labels of half their height
POINTS_PER_INCH = 72
MAX_LEARNING_RUNS = 12  # learning curves of at most this many runs (best first)
BASELINE_COLOR = "tab:red"
BLEND_COLOR = "black"
RUN_PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
               "tab:cyan", "tab:gray")  # every tableau colour but the baseline's red
OUTLIER_IQR = 3.0  # learning-curve values beyond the quartiles by this many IQRs are drawn clipped at the edge
LIMIT_PAD = 0.06  # share of the y-range added above and below a learning-curve panel
FOLD_SHADE = 0.55  # the lightest fold shade: this share of white mixed into the run's colour


def run_colors(runs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """One colour per run id, the same in every plot: `runs` is (run_id, role) in a stable order; the
    baseline role is red, the others take the palette in order (cycling past nine runs)."""
    out: dict[str, str] = {}
    others = 0
    for run_id, role in runs:
        if role == "baseline":
            out[run_id] = BASELINE_COLOR
        else:
            out[run_id] = RUN_PALETTE[others % len(RUN_PALETTE)]
            others += 1
    return out


def robust_limits(values: Sequence[float]) -> tuple[float, float]:
    """y-limits that keep a single spike from flattening the rest: the data's range, shrunk to the
    quartiles +- OUTLIER_IQR interquartile ranges where a value lies beyond them, padded by LIMIT_PAD."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size == 0:
        return 0.0, 1.0
    q1, q3 = np.percentile(v, [25, 75])
    spread = q3 - q1
    lo, hi = max(float(v.min()), q1 - OUTLIER_IQR * spread), min(float(v.max()), q3 + OUTLIER_IQR * spread)
    pad = (hi - lo) * LIMIT_PAD or max(abs(hi), 1.0) * LIMIT_PAD
    return lo - pad, hi + pad


def _shade(color: str, share: float) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(color)
    return (r + (1 - r) * share, g + (1 - g) * share, b + (1 - b) * share)


def _plot_clipped(ax: object, values: Sequence[float], limits: tuple[float, float], **style: object) -> int:
    """Plot values per epoch; points beyond `limits` sit on the edge as a triangle labelled with their
    value (a clipped spike shown as clipped). Returns how many were clipped."""
    lo, hi = limits
    x = np.arange(1, len(values) + 1)
    v = np.asarray(values, dtype=float)
    ax.plot(x, np.clip(v, lo, hi), **style)  # type: ignore[attr-defined]
    clipped = 0
    for xi, vi in zip(x, v, strict=True):
        if vi > hi or vi < lo:
            edge = hi if vi > hi else lo
            ax.plot([xi], [edge], marker="^" if vi > hi else "v", ms=7, color=style.get("color"),  # type: ignore[attr-defined]
                    clip_on=False)
            ax.annotate(f"{vi:.3g} (clipped)", (xi, edge), textcoords="offset points",  # type: ignore[attr-defined]
                        xytext=(4, -10 if vi > hi else 4), fontsize="x-small")
            clipped += 1
    return clipped


def _short(label: str) -> str:
    return label if len(label) <= LABEL_MAX else "…" + label[-(LABEL_MAX - 1):]


def _figure(**kwargs: Any) -> Figure:
    """A new matplotlib Figure (matplotlib is imported on the first plot, not with this module: a blend's
    plots are drawn in worker processes, `kit.blend.painter`, and the blend itself never needs it)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save(fig: Figure, path: str | os.PathLike[str], tight: bool = True) -> None:
    """PNG of `fig`, cropped to its artists (``bbox_inches="tight"``); `tight` also spaces several panels
    apart (``tight_layout``: a second layout pass, which one panel does not need)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    if tight and len(fig.axes) > 1:
        fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    atomic_write_bytes(path, buf.getvalue())


def plot_roc(path: str | os.PathLike[str], y: np.ndarray, curves: Mapping[str, tuple[np.ndarray, float]],
             highlight: str | None = None, colors: Mapping[str, str] | None = None) -> Figure:
    """ROC curve per run / blend (`kernels.metrics.roc_points`); `curves` maps a label to (scores,
    AUC); rows with a NaN score (no nested-CV score) are left out of that curve. Each run in `colors`
    (from `run_colors`) gets its colour; the highlighted blend is black."""
    from kernels.metrics import roc_points

    fig = _figure(figsize=SQUARE)
    ax = fig.add_subplot()
    y = np.asarray(y, dtype=int)
    for label, (scores, value) in curves.items():
        s = np.asarray(scores, dtype=float)
        ok = ~np.isnan(s)
        if np.unique(y[ok]).size < 2:  # no nested-CV scores (fewer than two folds): no curve
            continue
        fpr, tpr = roc_points(y[ok], s[ok])
        bold = label == highlight
        ax.plot(fpr, tpr, lw=2.5 if bold else 1.2, color=BLEND_COLOR if bold else (colors or {}).get(label),
                label=f"{_short(label)} ({value:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curves (OOF)", xlim=(0, 1),
           ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize="small")
    _save(fig, path)
    return fig


def plot_correlation(path: str | os.PathLike[str], labels: Sequence[str], matrix: np.ndarray) -> None:
    """Heatmap of the Spearman correlation of run predictions (OOF); cell text white on dark cells."""
    n = len(labels)
    side = min(max(4.5, 2.5 + CELL_INCH * n), MAX_HEATMAP_INCH)
    points = min(LABEL_POINTS, 0.5 * POINTS_PER_INCH * (side - 2.5) / max(n, 1))  # half a cell tall at most
    fig = _figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    im = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(n), [_short(x) for x in labels], rotation=45 if n <= MAX_CELL_TEXT else 90,
                  ha="right" if n <= MAX_CELL_TEXT else "center", fontsize=points)
    ax.set_yticks(range(n), [_short(x) for x in labels], fontsize=points)
    if n <= MAX_CELL_TEXT:
        for i in range(n):
            for j in range(n):
                v = matrix[i, j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize="small",
                        color="white" if abs(v) > 0.6 else "black")
    ax.set_title("Spearman correlation\nof OOF predictions", fontsize="medium")
    fig.colorbar(im, ax=ax, shrink=0.8)
    _save(fig, path, tight=False)  # one panel and its colour bar: the crop to the artists is layout enough


def _bars(ax: object, labels: Sequence[str], values: Mapping[str, Sequence[float]]) -> None:
    n, k = len(labels), max(len(values), 1)
    width = 0.8 / k
    for i, (method, w) in enumerate(values.items()):
        ax.bar(np.arange(n) + (i - (k - 1) / 2) * width, w, width, label=method)  # type: ignore[attr-defined]
    ax.axhline(0, color="black", lw=0.8)  # type: ignore[attr-defined]
    ax.set_xticks(range(n), [_short(x) for x in labels], rotation=30, ha="right",  # type: ignore[attr-defined]
                  fontsize="small")
    ax.legend(fontsize="small")  # type: ignore[attr-defined]


def plot_weights(path: str | os.PathLike[str], labels: Sequence[str], weights: Mapping[str, Sequence[float]]) -> None:
    """Grouped bars: each method's weight per run (shares of the blend, summing to 1)."""
    fig = _figure(figsize=(max(5.5, 1.5 + 0.9 * len(labels)), 4.5))
    ax = fig.add_subplot()
    _bars(ax, labels, weights)
    ax.set(ylabel="weight (share of the blend)", title="Blend weights per run")
    _save(fig, path)


def plot_coefficients(path: str | os.PathLike[str], labels: Sequence[str], coefs: Mapping[str, Sequence[float]]) -> None:
    """Stacking's logistic-regression coefficients per run (on rank features; not shares)."""
    fig = _figure(figsize=(max(5.5, 1.5 + 0.9 * len(labels)), 4.5))
    ax = fig.add_subplot()
    _bars(ax, labels, coefs)
    ax.set(ylabel="coefficient (logit per unit rank)", title="Stacking coefficients per run")
    _save(fig, path)


def plot_subgroups(path: str | os.PathLike[str], groups: Mapping[str, Sequence[SubgroupRow]]) -> None:
    """AUC per subgroup with its 95 % interval, one panel per dimension (n and positives annotated)."""
    dims = list(groups) or ["(no metadata)"]
    fig = _figure(figsize=(7.5, 1.2 + sum(0.38 * max(len(groups.get(d, [])), 1) + 0.7 for d in dims)))
    heights = [max(len(groups.get(d, [])), 1) for d in dims]
    axes = fig.subplots(len(dims), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)[:, 0]
    for ax, dim in zip(axes, dims, strict=True):
        rows = groups.get(dim, [])
        for i, (_, n, npos, ci) in enumerate(rows):
            if np.isnan(ci.auc):
                ax.text(0.02, i, f"n/a (one class)  n={n}, pos={npos}", va="center", fontsize="x-small")
                continue
            err = ([[ci.auc - ci.low], [ci.high - ci.auc]] if np.isfinite(ci.low) else None)
            ax.errorbar([ci.auc], [i], xerr=err, fmt="o", color="tab:blue", capsize=3)
            ax.text(1.01, i, f"{ci.auc:.3f}  n={n}, pos={npos}", va="center", fontsize="x-small",
                    transform=ax.get_yaxis_transform())
        ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize="small")
        ax.set_ylim(max(len(rows), 1) - 0.5, -0.5)
        ax.axvline(0.5, color="grey", ls=":", lw=1)
        ax.set_xlim(0, 1)
        ax.set_title(f"AUC by {dim} (95 % patient-bootstrap interval)", fontsize="medium")
    fig.subplots_adjust(right=0.75, hspace=0.5)
    _save(fig, path, tight=False)


def plot_calibration(path: str | os.PathLike[str], y: np.ndarray, curves: Mapping[str, np.ndarray]) -> None:
    """Reliability diagram of one or more probability vectors (OOF; scikit-learn's calibration_curve
    with equal-count bins, which low prevalence needs). Only probabilities belong here (a calibrated
    blend, a single model's sigmoid, a blend whose link gives probabilities): the caller chooses them
    (`kit.blend.build.calibration_curves`); values outside 0..1 are a ValueError, never clipped."""
    from sklearn.calibration import calibration_curve

    fig = _figure(figsize=SQUARE)
    ax = fig.add_subplot()
    for label, p in curves.items():
        probs = np.asarray(p, dtype=float)
        if probs.size and (np.nanmin(probs) < 0 or np.nanmax(probs) > 1):
            raise ValueError(f"calibration plot: {label} holds values outside 0..1; not probabilities")
        obs, pred = calibration_curve(y, probs, n_bins=RELIABILITY_BINS, strategy="quantile")
        ax.plot(pred, obs, marker="o", label=label)
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfect")
    ax.set(xlabel="mean predicted probability", ylabel="observed malignant rate",
           title="Reliability (OOF, equal-count bins)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize="small")
    _save(fig, path)


def plot_histogram(path: str | os.PathLike[str], y: np.ndarray, scores: np.ndarray, title: str) -> None:
    """Histograms of the blend's OOF scores, benign and malignant apart (each normalised to its class)."""
    y = np.asarray(y, dtype=bool)
    s = np.asarray(scores, dtype=float)
    ok = ~np.isnan(s)
    y, s = y[ok], s[ok]
    fig = _figure(figsize=WIDE)
    ax = fig.add_subplot()
    bins = np.linspace(float(s.min()), float(s.max()), HIST_BINS + 1) if s.size else HIST_BINS
    for mask, color, name in ((~y, "tab:blue", "benign"), (y, "tab:red", "malignant")):
        if mask.any():  # an empty class (no nested-CV scores) draws nothing
            ax.hist(s[mask], bins=bins, density=True, alpha=0.6, color=color, label=f"{name} (n={int(mask.sum())})")
    ax.set(xlabel="blend score", ylabel="density (per class)", title=title)
    if s.size:
        ax.legend(fontsize="small")
    _save(fig, path)


def plot_learning_curves(path: str | os.PathLike[str], histories: Mapping[str, Mapping[str, object]],
                         colors: Mapping[str, str] | None = None) -> Figure:
    """Per run (row): loss and AUC per epoch for each fold, train dashed and validation solid, the
    checkpointed (best) epoch marked. Each run in its colour (`run_colors`), folds as shades of it; the
    legend sits outside the panels; y-limits are robust (`robust_limits`), a spike beyond them drawn
    clipped at the edge with its value. `histories` maps a run id to its history.json dict."""
    items = list(histories.items())[:MAX_LEARNING_RUNS]
    fig = _figure(figsize=(11.5, 0.6 + 2.6 * max(len(items), 1)))
    axes = fig.subplots(max(len(items), 1), 2, squeeze=False)
    for row, ((run_id, hist), (ax_loss, ax_auc)) in enumerate(zip(items, axes, strict=False)):
        folds = hist.get("folds", []) if isinstance(hist, Mapping) else []
        base = (colors or {}).get(run_id, RUN_PALETTE[row % len(RUN_PALETTE)])
        for ax, key in ((ax_loss, "loss"), (ax_auc, "auc")):
            every = [x for fold in folds for prefix in ("", "val_") for x in (fold.get(prefix + key) or [])]  # type: ignore[union-attr]
            limits = robust_limits(every)
            for i, fold in enumerate(folds):  # type: ignore[union-attr]
                color = _shade(base, FOLD_SHADE * i / max(len(folds) - 1, 1))
                for prefix, style in (("", "--"), ("val_", "-")):
                    values = fold.get(prefix + key) or []
                    if values:
                        _plot_clipped(ax, values, limits, ls=style, color=color, lw=1.2,
                                      label=f"fold {fold.get('fold', i)}" if prefix and key == "auc" else None)
                best = fold.get("best_epoch")
                values = fold.get("val_" + key) or []
                if isinstance(best, int) and 1 <= best <= len(values):
                    ax.plot([best], [float(np.clip(values[best - 1], *limits))], marker="*", ms=10, color=color)
            ax.set_ylim(*limits)
        ax_loss.set(title=f"{_short(run_id)}: loss", xlabel="epoch")
        ax_auc.set(title=f"{_short(run_id)}: AUC", xlabel="epoch")
        if folds:
            ax_auc.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                          title="solid: validation\ndashed: train\n*: kept epoch\n^: clipped", title_fontsize="x-small")
    _save(fig, path)
    return fig


def plot_leaderboard(path: str | os.PathLike[str], rows: Sequence[RunRow],
                     extra: Mapping[str, tuple[float, float, float]] | None = None,
                     colors: Mapping[str, str] | None = None) -> Figure:
    """OOF AUC of each run (and blends in `extra`: label -> (auc, low, high)) with 95 % intervals, each
    run in its colour (`run_colors`; default: from the rows' order), the blend black; the baseline run
    as a red floor line; runs that do not beat it marked with a cross."""
    colors = colors or run_colors([(r.run_id, r.role) for r in rows])
    items = [(r.run_id, r.auc, r.ci.low, r.ci.high, colors.get(r.run_id, "grey"), r.beats_baseline is False)
             for r in rows]
    items += [(label, a, lo, hi, BLEND_COLOR, False) for label, (a, lo, hi) in (extra or {}).items()]
    fig = _figure(figsize=(8.5, 1.6 + ROW_INCH * max(len(items), 1)))
    ax = fig.add_subplot()
    groups: dict[tuple[str, bool], list[int]] = {}  # one errorbar call per colour and marker, not per run
    for i, item in enumerate(items):
        groups.setdefault((item[4], item[5]), []).append(i)
    for (color, flagged), rows_ in groups.items():
        a = np.array([items[i][1] for i in rows_], dtype=float)
        lo = np.array([items[i][2] for i in rows_], dtype=float)
        hi = np.array([items[i][3] for i in rows_], dtype=float)
        known = np.isfinite(lo) & np.isfinite(hi)  # no interval: the point alone
        err = np.vstack([np.where(known, np.maximum(a - lo, 0.0), 0.0), np.where(known, np.maximum(hi - a, 0.0), 0.0)])
        ax.errorbar(a, rows_, xerr=err, fmt="x" if flagged else "o", ms=8 if flagged else 6, color=color, capsize=3)
    base = next((r for r in rows if r.is_baseline), None)
    if base is not None and np.isfinite(base.auc):
        ax.axvline(base.auc, color=BASELINE_COLOR, ls="--", lw=1)
    ax.set_yticks(range(len(items)), [_short(it[0]) for it in items], fontsize="small")
    ax.set_ylim(len(items) - 0.5, -0.5)
    ax.axvline(0.5, color="grey", ls=":", lw=1)
    ax.set_xlabel("OOF AUC (95 % patient-bootstrap interval)")
    ax.set_title("Runs and blend, each run in its colour in every plot: red baseline (dashed: its AUC, the floor),\n"
                 "black blend; x = does not beat the baseline", fontsize="small")
    _save(fig, path)
    return fig
