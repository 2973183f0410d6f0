"""The numbers a report shows: leaderboard, the two answers, subgroups, correlations (pure functions).

In:  loaded runs (`kit.runs.Run`), blended scores and metadata frames.
Out: plain dataclasses that `kit.blend.report` renders and `kit.blend.plots` draws:
- `RunRow` per run: backbone or from-scratch architecture, image size, epochs, OOF AUC with a
  bootstrap interval (patients resampled when the OOF has patient_id), per-fold AUC, TTA gain
  (manifest folds' auc - auc_no_tta), seconds per epoch.
- `Answer` per research question (best pretrained backbone, best from-scratch architecture):
  the ranking, the leader's margin, DeLong p-value and intervals, and a verdict in plain words,
  including "too few runs" when there is nothing to compare.
- subgroup AUCs (sex, age band, anatomical site) and the Spearman correlation of run predictions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kernels.contracts import OOF_OPTIONAL_COLUMNS
from kernels.metrics import (
    AGE_BAND_LABELS,
    AGE_MISSING_LABEL,
    AucInterval,
    DelongResult,
    age_bands,
    auc_by_group,
    bootstrap_auc_ci,
    delong_test,
)
from kernels.schema import SEXES, SITES
from kit.blend.methods import rank01
from kit.runs import Run

ALPHA = 0.05  # significance level of the DeLong test
FAMILIES = ("backbone", "scratch")
QUESTIONS = {
    "backbone": "Which pretrained backbone works best on this data?",
    "scratch": "Which from-scratch architecture maximises AUC?",
}
SUBGROUPS = (  # (title, OOF/train.csv column)
    ("sex", "sex"),
    ("age band", "age_approx"),
    ("anatomical site", "anatom_site_general_challenge"),
)
MISSING = "missing"


@dataclass(frozen=True)
class RunRow:
    """One leaderboard line."""

    run_id: str
    family: str  # "backbone" | "scratch"
    architecture: str
    weights: str
    image_size: int | None
    epochs: int | None
    folds: int
    auc: float
    ci: AucInterval
    fold_auc: Mapping[int, float]
    tta_gain: float | None
    sec_per_epoch: float | None
    kernel_auc: float | None  # the manifest's own oof_auc, for cross-checking
    patients: bool  # whether the interval resampled patients


@dataclass(frozen=True)
class Answer:
    """The answer to one research question, with its evidence."""

    family: str
    question: str
    ranking: tuple[RunRow, ...]  # best run of each architecture, best first
    delong: DelongResult | None
    verdict: str
    caveats: tuple[str, ...] = field(default_factory=tuple)


def config_value(mapping: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    """A nested config value (``config_value(cfg, "data", "image_size")``) or `default`."""
    node: Any = mapping
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def architecture(config: Mapping[str, Any]) -> tuple[str, str, str]:
    """(family, architecture label, weights) of a run's config."""
    backbone = str(config_value(config, "model", "backbone", default="?"))
    weights = str(config_value(config, "model", "weights", default="?"))
    if backbone != "scratch":
        return "backbone", backbone, weights
    s = config_value(config, "model", "scratch", default={}) or {}
    stages = int(s.get("stages", 0))
    depth = list(s.get("depth", [1])) or [1]
    depth = depth * stages if len(depth) == 1 else depth
    label = f"scratch {s.get('block', '?')} {stages}x{s.get('width', '?')} d{'-'.join(map(str, depth))}"
    if s.get("se"):
        label += " +se"
    return "scratch", label, "none"


def _mean_or_none(values: Sequence[float]) -> float | None:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def tta_gain(manifest: Mapping[str, Any]) -> float | None:
    """Mean over folds of auc - auc_no_tta; None when the manifest has no no-TTA AUC."""
    diffs = []
    for fold in manifest.get("folds", []):
        a, b = fold.get("auc"), fold.get("auc_no_tta")
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            diffs.append(a - b)
    return _mean_or_none(diffs)


def seconds_per_epoch(manifest: Mapping[str, Any]) -> float | None:
    """Mean epoch time over every fold's epochs (manifest folds[].epoch_times_s)."""
    times: list[float] = []
    for fold in manifest.get("folds", []):
        times.extend(fold.get("epoch_times_s", []) or [])
    return _mean_or_none(times)


def patient_groups(oof: pd.DataFrame) -> np.ndarray | None:
    """Patient ids for the bootstrap, or None (then every image is its own patient)."""
    if "patient_id" not in oof.columns or oof["patient_id"].isna().any():
        return None
    return oof["patient_id"].astype(str).to_numpy()


def run_row(run: Run, n_boot: int, seed: int = 0) -> RunRow:
    """The leaderboard line of one run, from its own OOF file and manifest."""
    cfg = run.info.config
    family, arch, weights = architecture(cfg)
    y = run.oof["target"].to_numpy(int)
    pred = run.oof["pred"].to_numpy(float)
    groups = patient_groups(run.oof)
    ci = bootstrap_auc_ci(y, pred, groups, n_boot=n_boot, seed=seed)
    folds = run.oof["fold"].to_numpy(int)
    kernel_auc = run.info.manifest.get("oof_auc")
    return RunRow(
        run_id=run.run_id,
        family=family,
        architecture=arch,
        weights=weights,
        image_size=config_value(cfg, "data", "image_size"),
        epochs=config_value(cfg, "train", "epochs"),
        folds=int(np.unique(folds).size),
        auc=ci.auc,
        ci=ci,
        fold_auc={int(k): g.auc for k, g in auc_by_group(y, pred, folds).items()},
        tta_gain=tta_gain(run.info.manifest),
        sec_per_epoch=seconds_per_epoch(run.info.manifest),
        kernel_auc=float(kernel_auc) if isinstance(kernel_auc, (int, float)) else None,
        patients=groups is not None,
    )


def leaderboard_order(row: RunRow) -> tuple[float, str]:
    """Sort key: best OOF AUC first, NaN last, then by run id."""
    return (-row.auc if not math.isnan(row.auc) else math.inf, row.run_id)


def _paired(a: Run, b: Run) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Labels and both runs' predictions on the same images, or None if their OOF images differ."""
    left = a.oof.set_index("image_name")
    right = b.oof.set_index("image_name")
    if len(left) != len(right) or not left.index.sort_values().equals(right.index.sort_values()):
        return None
    right = right.reindex(left.index)
    if not np.array_equal(left["target"].to_numpy(int), right["target"].to_numpy(int)):
        return None
    return left["target"].to_numpy(int), left["pred"].to_numpy(float), right["pred"].to_numpy(float)


def _fmt_ci(row: RunRow) -> str:
    return f"{row.auc:.3f} [{row.ci.low:.3f}, {row.ci.high:.3f}]"


def _confounders(a: Run, b: Run) -> list[str]:
    notes = []
    for label, keys in (("image size", ("data", "image_size")), ("epochs", ("train", "epochs")),
                        ("dataset", ("data", "dataset")), ("external data", ("data", "external")),
                        ("weights", ("model", "weights"))):
        va, vb = config_value(a.info.config, *keys), config_value(b.info.config, *keys)
        if va != vb:
            notes.append(f"{label} differs ({va} vs {vb})")
    return notes


def answer(family: str, rows: Sequence[RunRow], runs: Mapping[str, Run], alpha: float = ALPHA) -> Answer:
    """Best architecture of `family` and whether its lead over the runner-up is significant."""
    question = QUESTIONS[family]
    noun = "pretrained backbone" if family == "backbone" else "from-scratch architecture"
    best: dict[str, RunRow] = {}
    for row in sorted((r for r in rows if r.family == family), key=leaderboard_order):
        best.setdefault(row.architecture, row)
    ranking = tuple(best.values())
    if not ranking:
        return Answer(family, question, ranking, None, f"Too few runs to answer: no run uses a {noun} yet.")
    lead = ranking[0]
    if len(ranking) == 1:
        return Answer(family, question, ranking, None,
                      f"Too few runs to answer: only one {noun} ({lead.architecture}, OOF AUC {_fmt_ci(lead)}) "
                      f"has a run; add a run with another one to compare.")
    second = ranking[1]
    margin = lead.auc - second.auc
    caveats = _confounders(runs[lead.run_id], runs[second.run_id])
    if lead.weights == "none" and family == "backbone":
        caveats.append(f"{lead.architecture} was trained from random initialisation (weights = none)")
    paired = _paired(runs[lead.run_id], runs[second.run_id])
    head = (f"{lead.architecture} leads with OOF AUC {_fmt_ci(lead)} over {second.architecture} "
            f"{_fmt_ci(second)}, a margin of {margin:.3f}.")
    if paired is None:
        return Answer(family, question, ranking, None,
                      head + " Their OOF files cover different images, so no paired DeLong test is possible; "
                      "judge by the intervals alone.", tuple(caveats))
    test = delong_test(*paired)
    if test.p < alpha:
        verdict = head + f" DeLong p = {test.p:.3g} < {alpha}: the lead is significant."
    else:
        verdict = head + (f" DeLong p = {test.p:.3g} >= {alpha}: not significant; these runs cannot tell "
                          f"the two apart yet.")
    if len(ranking) > 2:
        caveats.append(f"{len(ranking)} {noun}s compared: the leader is picked after looking, so p is optimistic")
    return Answer(family, question, ranking, test, verdict, tuple(caveats))


def _decode(values: pd.Series, names: Sequence[str]) -> np.ndarray:
    """Category codes (int) or strings -> readable labels; NaN -> "missing"."""
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(MISSING)
        elif isinstance(v, (int, np.integer)) or (isinstance(v, float) and float(v).is_integer()):
            code = int(v)
            out.append(names[code] if 0 <= code < len(names) else str(code))
        else:
            out.append(str(v))
    return np.asarray(out, dtype=object)


def subgroup_labels(meta: pd.DataFrame) -> dict[str, np.ndarray]:
    """Subgroup label arrays (sex, age band, site) for the metadata columns present."""
    out: dict[str, np.ndarray] = {}
    for title, col in SUBGROUPS:
        if col not in meta.columns or meta[col].isna().all():
            continue
        if col == "age_approx":
            out[title] = age_bands(pd.to_numeric(meta[col], errors="coerce").to_numpy(float))
        else:
            out[title] = _decode(meta[col], SEXES if col == "sex" else SITES)
    return out


SUBGROUP_ORDER = {"sex": SEXES, "age band": (*AGE_BAND_LABELS, AGE_MISSING_LABEL), "anatomical site": SITES}


def subgroup_aucs(y: np.ndarray, scores: np.ndarray,
                  labels: Mapping[str, np.ndarray]) -> dict[str, list[tuple[str, int, int, float]]]:
    """Per subgroup dimension: (label, n, positives, AUC) rows in the schema's category order."""
    out = {}
    for title, lab in labels.items():
        order = SUBGROUP_ORDER.get(title, ())
        rows = [(str(k), g.n, g.n_pos, g.auc) for k, g in auc_by_group(y, scores, lab).items()]
        out[title] = sorted(rows, key=lambda r: (order.index(r[0]) if r[0] in order else len(order), r[0]))
    return out


def metadata_from_dataset(dataset: str, names: Sequence[str]) -> pd.DataFrame | None:
    """Metadata columns of ``<dataset>/train.csv`` for the given images (None when absent)."""
    path = Path(dataset) / "train.csv" if dataset else None
    if path is None or not path.exists():
        return None
    frame = pd.read_csv(path, dtype={"image_name": str}).set_index("image_name")
    cols = [c for c in OOF_OPTIONAL_COLUMNS if c in frame.columns]
    return frame.reindex(list(names))[cols].reset_index(names="image_name")


def spearman(P: np.ndarray) -> np.ndarray:
    """Spearman correlation matrix of the columns of P (Pearson of their ranks)."""
    if P.shape[1] == 1:
        return np.ones((1, 1))
    return np.corrcoef(rank01(P), rowvar=False)
