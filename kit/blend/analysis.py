"""The numbers a report shows: leaderboard, the two answers, subgroups, correlations (pure functions).

In:  loaded runs (`kit.run.folders.Run`), blended scores and metadata frames.
Out: plain dataclasses that `kit.blend.report` renders and `kit.blend.plots` draws:
- `RunRow` per run: role (model or baseline, manifest ``role``), backbone or from-scratch
  architecture, whether it loaded pretrained weights, image size, epochs, OOF AUC with a bootstrap
  interval (patients resampled when the OOF has patient_id), per-fold AUC, TTA gain (manifest
  folds' auc - auc_no_tta), seconds per epoch, and its paired comparison with the baseline run.
- `Answer` per research question (best backbone, best from-scratch architecture): the ranking,
  the baseline and the leader's margin over it, the leader's margin over the runner-up with a
  paired patient-bootstrap test (DeLong beside it only when every patient holds one image), and
  a verdict in plain words, including "too few runs" when there is nothing to compare.
- subgroup AUCs with patient-bootstrap intervals (sex, age band, anatomical site) and the
  Spearman correlation of run predictions.

Significance: a paired patient bootstrap (`kernels.metrics.paired_bootstrap_test`): both runs
scored on the same resampled patients, so the correlation of their errors and the clustering of
images within patients are both kept. An image-level DeLong test ignores the clustering and
rejects true nulls far more often than its level when a patient holds several images.
"""

from __future__ import annotations

import dataclasses
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
    PairedResult,
    age_bands,
    auc_by_group,
    bootstrap_auc_ci,
    delong_test,
    paired_bootstrap_test,
)
from kernels.schema import SEXES, SITES
from kit.run.folders import Run

ALPHA = 0.05  # significance level of the paired tests
FAMILIES = ("backbone", "scratch")
BASELINE_ROLE = "baseline"  # manifest "role" of the baseline run (absent: "model")
MODEL_ROLE = "model"
ROLE_KEY = "role"
NO_WEIGHTS = "none"  # config model.weights of a run that loaded no pretrained weights
QUESTIONS = {
    "backbone": "Which backbone works best on this data?",
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
    role: str = MODEL_ROLE  # "model" | "baseline"
    vs_baseline: PairedResult | None = None  # this run minus the baseline (paired patient bootstrap)

    @property
    def pretrained(self) -> bool:
        """Whether the run loaded pretrained weights (a backbone with model.weights != "none")."""
        return self.family == "backbone" and self.weights not in (NO_WEIGHTS, "?")

    @property
    def is_baseline(self) -> bool:
        return self.role == BASELINE_ROLE

    @property
    def beats_baseline(self) -> bool | None:
        """True when it beats the baseline (higher AUC, paired p < ALPHA); None without a comparison."""
        if self.vs_baseline is None or math.isnan(self.vs_baseline.p):
            return None
        return self.vs_baseline.diff > 0 and self.vs_baseline.p < ALPHA


@dataclass(frozen=True)
class Answer:
    """The answer to one research question, with its evidence."""

    family: str
    question: str
    ranking: tuple[RunRow, ...]  # best run of each architecture, best first
    delong: DelongResult | None  # second opinion, only when every patient holds one image
    verdict: str
    caveats: tuple[str, ...] = field(default_factory=tuple)
    test: PairedResult | None = None  # leader minus runner-up, paired patient bootstrap
    baseline: RunRow | None = None


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


def run_role(run: Run) -> str:
    """The run's role: "baseline" when its manifest says so, else "model"."""
    return str(run.info.manifest.get(ROLE_KEY, MODEL_ROLE))


def run_row(run: Run, n_boot: int, seed: int = 0) -> RunRow:
    """The leaderboard line of one run, from its own OOF file and manifest."""
    cfg = run.info.config
    family, arch, weights = architecture(cfg)
    role = run_role(run)
    if role == BASELINE_ROLE:
        family = BASELINE_ROLE
        described = run.info.manifest.get(BASELINE_ROLE)
        if isinstance(described, Mapping) and described.get("model"):
            arch = f"baseline: {described['model']}"
        else:
            arch = f"baseline: {arch}"
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
        role=role,
    )


def leaderboard_order(row: RunRow) -> tuple[float, str]:
    """Sort key: best OOF AUC first, NaN last, then by run id."""
    return (-row.auc if not math.isnan(row.auc) else math.inf, row.run_id)


@dataclass(frozen=True)
class Paired:
    """Two runs' OOF predictions on the same images: labels, both predictions, patient ids (or None)."""

    y: np.ndarray
    a: np.ndarray
    b: np.ndarray
    groups: np.ndarray | None

    @property
    def one_image_per_patient(self) -> bool:
        return self.groups is None or np.unique(self.groups).size == self.groups.size


def paired(a: Run, b: Run) -> Paired | None:
    """Labels, both runs' predictions (and patients) on the same images; None if their OOF images differ."""
    left = a.oof.set_index("image_name")
    right = b.oof.set_index("image_name")
    if len(left) != len(right) or not left.index.sort_values().equals(right.index.sort_values()):
        return None
    right = right.reindex(left.index)
    if not np.array_equal(left["target"].to_numpy(int), right["target"].to_numpy(int)):
        return None
    groups = patient_groups(left.reset_index())
    return Paired(left["target"].to_numpy(int), left["pred"].to_numpy(float), right["pred"].to_numpy(float), groups)


def compare(a: Run, b: Run, n_boot: int, seed: int = 0) -> PairedResult | None:
    """AUC(a) - AUC(b) by a paired patient bootstrap; None when they cover different images."""
    pair = paired(a, b)
    if pair is None:
        return None
    return paired_bootstrap_test(pair.y, pair.a, pair.b, pair.groups, n_boot=n_boot, seed=seed)


def with_baseline(rows: Sequence[RunRow], runs: Mapping[str, Run], n_boot: int, seed: int = 0) -> list[RunRow]:
    """Rows with `vs_baseline` filled: each model run against the best baseline run (paired test)."""
    baselines = sorted((r for r in rows if r.is_baseline), key=leaderboard_order)
    if not baselines:
        return list(rows)
    base = baselines[0]
    return [r if r.is_baseline else dataclasses.replace(
        r, vs_baseline=compare(runs[r.run_id], runs[base.run_id], n_boot, seed)) for r in rows]


def baseline_row(rows: Sequence[RunRow]) -> RunRow | None:
    """The best baseline run, or None."""
    return min((r for r in rows if r.is_baseline), key=leaderboard_order, default=None)


def fmt_diff(test: PairedResult) -> str:
    """"+0.012 [-0.004, +0.029], p = 0.14" (paired patient bootstrap)."""
    return f"{test.diff:+.3f} [{test.low:+.3f}, {test.high:+.3f}], p = {test.p:.2g}"


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


def _noun(family: str, row: RunRow | None = None) -> str:
    if family == "scratch":
        return "from-scratch architecture"
    if row is None:
        return "backbone"
    return "pretrained backbone" if row.pretrained else "backbone trained from random initialisation"


def _baseline_text(lead: RunRow, base: RunRow | None) -> tuple[str, bool | None]:
    if base is None:
        return " No baseline run (manifest role = baseline) to measure against: run `kit baseline`.", None
    if lead.vs_baseline is None:
        return (f" Baseline {base.run_id} {_fmt_ci(base)} covers other images, so no paired comparison.", None)
    beats = lead.beats_baseline
    word = "beats it" if beats else "does NOT beat it"
    return (f" Baseline ({base.architecture}, {base.run_id}): {_fmt_ci(base)}; the leader's margin over it "
            f"{fmt_diff(lead.vs_baseline)} (paired patient bootstrap): the leader {word}.", beats)


def answer(family: str, rows: Sequence[RunRow], runs: Mapping[str, Run], alpha: float = ALPHA,
           n_boot: int = 1000, seed: int = 0) -> Answer:
    """Best architecture of `family`, its margin over the baseline, and whether its lead over the
    runner-up is separable (paired patient bootstrap; DeLong as a second opinion only when every
    patient holds one image)."""
    question = QUESTIONS[family]
    base = baseline_row(rows)
    best: dict[str, RunRow] = {}
    for row in sorted((r for r in rows if r.family == family and not r.is_baseline), key=leaderboard_order):
        best.setdefault(row.architecture, row)
    ranking = tuple(best.values())
    if not ranking:
        return Answer(family, question, ranking, None,
                      f"Too few runs to answer: no run uses a {_noun(family)} yet.", baseline=base)
    lead = ranking[0]
    noun = _noun(family, lead)
    base_text, _ = _baseline_text(lead, base)
    if len(ranking) == 1:
        return Answer(family, question, ranking, None,
                      f"Too few runs to answer: only one {_noun(family)} ({lead.architecture}, {noun}, OOF AUC "
                      f"{_fmt_ci(lead)}) has a run; add a run with another one to compare." + base_text,
                      baseline=base)
    second = ranking[1]
    caveats = _confounders(runs[lead.run_id], runs[second.run_id])
    if family == "backbone" and not lead.pretrained:
        caveats.append(f"{lead.architecture} was trained from random initialisation (weights = none): "
                       "this ranks architectures, not pretrained backbones")
    head = (f"{lead.architecture} ({noun}) leads with OOF AUC {_fmt_ci(lead)} over {second.architecture} "
            f"{_fmt_ci(second)}.")
    pair = paired(runs[lead.run_id], runs[second.run_id])
    if pair is None:
        return Answer(family, question, ranking, None,
                      head + " Their OOF files cover different images, so no paired test is possible; "
                      "judge by the intervals alone." + base_text, tuple(caveats), baseline=base)
    test = paired_bootstrap_test(pair.y, pair.a, pair.b, pair.groups, n_boot=n_boot, seed=seed)
    margin = f" Margin over the runner-up {fmt_diff(test)} (paired patient bootstrap)"
    if test.p < alpha:
        verdict = head + margin + f": separable at {alpha}."
    else:
        verdict = head + margin + ": NOT separable; these runs cannot tell the two apart yet."
    delong = None
    if pair.one_image_per_patient:
        delong = delong_test(pair.y, pair.a, pair.b)
        verdict += f" DeLong (second opinion; one image per patient): p = {delong.p:.2g}."
    if len(ranking) > 2:
        caveats.append(f"{len(ranking)} {_noun(family)}s compared: the leader is picked after looking, "
                       "so p is optimistic")
    return Answer(family, question, ranking, delong, verdict + base_text, tuple(caveats), test, base)


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


SubgroupRow = tuple[str, int, int, AucInterval]  # label, images, positives, AUC with interval


def subgroup_aucs(y: np.ndarray, scores: np.ndarray, labels: Mapping[str, np.ndarray],
                  groups: np.ndarray | None = None, n_boot: int = 1000,
                  seed: int = 0) -> dict[str, list[SubgroupRow]]:
    """Per subgroup dimension: (label, n, positives, AUC with a patient-bootstrap interval) rows
    in the schema's category order (patients resampled within the subgroup)."""
    out = {}
    for title, lab in labels.items():
        order = SUBGROUP_ORDER.get(title, ())
        keys = np.asarray(lab).astype(str)
        rows = []
        for k, g in auc_by_group(y, scores, keys).items():
            mask = keys == k
            ci = bootstrap_auc_ci(y[mask], scores[mask], None if groups is None else groups[mask], n_boot, seed=seed)
            rows.append((str(k), g.n, g.n_pos, ci))
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
    """Spearman correlation matrix of the columns of P (scipy.stats.spearmanr)."""
    from scipy.stats import spearmanr

    if P.shape[1] == 1:
        return np.ones((1, 1))
    rho = spearmanr(P).statistic
    return np.array([[1.0, rho], [rho, 1.0]]) if np.ndim(rho) == 0 else np.asarray(rho)
