"""The report's PNG plots (matplotlib, Agg canvas, no pyplot state).

In:  plain arrays and the dataclasses of `kit.blend.analysis`; an output path per plot.
Out: PNG files written atomically: ROC curves of runs and blend, Spearman correlation heatmap,
     blend weights per method, AUC per subgroup, reliability (calibration) curve, and the
     leaderboard as AUCs with their intervals.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kernels.contracts import atomic_write_bytes
from kit.blend.analysis import RunRow

DPI = 110
LABEL_MAX = 32  # characters of a run id shown on an axis
RELIABILITY_BINS = 10
WIDE = (7.5, 4.5)
SQUARE = (5.5, 5.0)


def _short(label: str) -> str:
    return label if len(label) <= LABEL_MAX else "…" + label[-(LABEL_MAX - 1):]


def _save(fig: Figure, path: str | os.PathLike[str]) -> None:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())


def roc_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold (ties move diagonally)."""
    y = np.asarray(y, dtype=bool)
    s = np.asarray(s, dtype=float)
    order = np.argsort(-s, kind="stable")
    ys, ss = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(ss)), ys.size - 1]
    tp = np.cumsum(ys)[last]
    fp = np.cumsum(~ys)[last]
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


def plot_roc(path: str | os.PathLike[str], y: np.ndarray, curves: Mapping[str, tuple[np.ndarray, float]],
             highlight: str | None = None) -> None:
    """ROC curve per run / blend; `curves` maps a label to (scores, AUC)."""
    fig = Figure(figsize=SQUARE)
    ax = fig.add_subplot()
    for label, (scores, value) in curves.items():
        fpr, tpr = roc_points(y, scores)
        bold = label == highlight
        ax.plot(fpr, tpr, lw=2.5 if bold else 1.2, color="black" if bold else None,
                label=f"{_short(label)} ({value:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curves (OOF)", xlim=(0, 1),
           ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize="small")
    _save(fig, path)


def plot_correlation(path: str | os.PathLike[str], labels: Sequence[str], matrix: np.ndarray) -> None:
    """Heatmap of the Spearman correlation of run predictions (OOF)."""
    n = len(labels)
    fig = Figure(figsize=(max(4.0, 1.0 + 0.6 * n), max(3.5, 0.8 + 0.5 * n)))
    ax = fig.add_subplot()
    im = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(n), [_short(x) for x in labels], rotation=45, ha="right", fontsize="small")
    ax.set_yticks(range(n), [_short(x) for x in labels], fontsize="small")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize="x-small")
    ax.set_title("Spearman correlation of OOF predictions")
    fig.colorbar(im, ax=ax, shrink=0.8)
    _save(fig, path)


def plot_weights(path: str | os.PathLike[str], labels: Sequence[str], weights: Mapping[str, Sequence[float]]) -> None:
    """Grouped bars: each method's weight per run."""
    n, k = len(labels), max(len(weights), 1)
    fig = Figure(figsize=(max(5.0, 1.5 + 0.9 * n), 4.0))
    ax = fig.add_subplot()
    width = 0.8 / k
    for i, (method, w) in enumerate(weights.items()):
        ax.bar(np.arange(n) + (i - (k - 1) / 2) * width, w, width, label=method)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(n), [_short(x) for x in labels], rotation=30, ha="right", fontsize="small")
    ax.set(ylabel="weight", title="Blend weights per run")
    ax.legend(fontsize="small")
    _save(fig, path)


def plot_subgroups(path: str | os.PathLike[str], groups: Mapping[str, Sequence[tuple[str, int, int, float]]]) -> None:
    """Horizontal bars of AUC per subgroup, one panel per dimension (n and positives annotated)."""
    dims = list(groups) or ["(no metadata)"]
    fig = Figure(figsize=(7.0, 1.2 + sum(0.35 * max(len(groups.get(d, [])), 1) + 0.6 for d in dims)))
    heights = [max(len(groups.get(d, [])), 1) for d in dims]
    axes = fig.subplots(len(dims), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)[:, 0]
    for ax, dim in zip(axes, dims, strict=True):
        rows = groups.get(dim, [])
        labels = [r[0] for r in rows]
        values = [0.0 if np.isnan(r[3]) else r[3] for r in rows]
        ax.barh(range(len(rows)), values, color="tab:blue")
        ax.set_yticks(range(len(rows)), labels, fontsize="small")
        for i, (_, n, npos, value) in enumerate(rows):
            text = "n/a (one class)" if np.isnan(value) else f"{value:.3f}"
            ax.text(0.01, i, f"{text}  n={n}, pos={npos}", va="center", fontsize="x-small", color="white"
                    if not np.isnan(value) and value > 0.3 else "black")
        ax.invert_yaxis()
        ax.axvline(0.5, color="grey", ls=":", lw=1)
        ax.set_xlim(0, 1)
        ax.set_title(f"AUC by {dim}", fontsize="medium")
    _save(fig, path)


def reliability(y: np.ndarray, p: np.ndarray, bins: int = RELIABILITY_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Mean predicted vs observed rate in equal-count bins of p (low prevalence needs them)."""
    order = np.argsort(p, kind="stable")
    chunks = [c for c in np.array_split(order, min(bins, max(len(p), 1))) if c.size]
    return (np.array([p[c].mean() for c in chunks]), np.array([np.asarray(y, dtype=float)[c].mean() for c in chunks]))


def plot_calibration(path: str | os.PathLike[str], y: np.ndarray, curves: Mapping[str, np.ndarray]) -> None:
    """Reliability diagram of one or more probability vectors (OOF)."""
    fig = Figure(figsize=SQUARE)
    ax = fig.add_subplot()
    for label, p in curves.items():
        pred, obs = reliability(y, np.clip(np.asarray(p, dtype=float), 0, 1))
        ax.plot(pred, obs, marker="o", label=label)
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfect")
    ax.set(xlabel="mean predicted probability", ylabel="observed malignant rate",
           title="Reliability (OOF, equal-count bins)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize="small")
    _save(fig, path)


def plot_leaderboard(path: str | os.PathLike[str], rows: Sequence[RunRow],
                     extra: Mapping[str, tuple[float, float, float]] | None = None) -> None:
    """OOF AUC of each run (and blends in `extra`: label -> (auc, low, high)) with 95 % intervals."""
    items = [(r.run_id, r.auc, r.ci.low, r.ci.high, r.family) for r in rows]
    items += [(label, a, lo, hi, "blend") for label, (a, lo, hi) in (extra or {}).items()]
    colors = {"backbone": "tab:blue", "scratch": "tab:orange", "blend": "black"}
    fig = Figure(figsize=(7.0, 1.2 + 0.4 * max(len(items), 1)))
    ax = fig.add_subplot()
    for i, (_, a, lo, hi, fam) in enumerate(items):
        err = [[max(a - lo, 0.0)], [max(hi - a, 0.0)]] if np.isfinite(lo) and np.isfinite(hi) else None
        ax.errorbar([a], [i], xerr=err, fmt="o", color=colors.get(fam, "grey"), capsize=3)
    ax.set_yticks(range(len(items)), [_short(it[0]) for it in items], fontsize="small")
    ax.invert_yaxis()
    ax.axvline(0.5, color="grey", ls=":", lw=1)
    ax.set(xlabel="OOF AUC (95 % interval)", title="Runs (blue: backbone, orange: scratch) and blend")
    _save(fig, path)
