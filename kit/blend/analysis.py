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
from kit.blend.run_stats import RunStats, compare_stats, run_stats
from kit.run.folders import Run

ALPHA = 0.05  # significance level of the paired tests
FAMILIES = ("backbone", "scratch")
BASELINE_ROLE = "baseline"  # manifest "role" of the baseline run (absent: "model")
MODEL_ROLE = "model"
ROLE_KEY = "role"
NO_WEIGHTS = "none"  # config model.weights of a run that loaded no pretrained weights
PRETRAINED_QUESTION = "pretrained"  # the first answer: pretrained weights vs random initialisation
QUESTIONS = {
    PRETRAINED_QUESTION: "Do ImageNet-pretrained weights beat training from random initialisation here?",
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
    stats: RunStats | None = field(default=None, repr=False, compare=False)  # its cached figures and replicates
    selected: bool = False  # each fold kept its best epoch on its own OOF rows (train.keep = "best"): optimistic

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
    """The leaderboard line of one run, from its own OOF file and manifest; the OOF figures come
    from the run's statistics cache (`kit.blend.run_stats`), computed there on first use."""
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
    stats = run_stats(run, n_boot, seed)
    ci = stats.ci
    kernel_auc = run.info.manifest.get("oof_auc")
    return RunRow(
        run_id=run.run_id,
        family=family,
        architecture=arch,
        weights=weights,
        image_size=config_value(cfg, "data", "image_size"),  # the baseline decodes at it too
        epochs=None if role == BASELINE_ROLE else config_value(cfg, "train", "epochs"),  # it trains no epochs
        folds=len(stats.fold_auc),
        auc=ci.auc,
        ci=ci,
        fold_auc=dict(stats.fold_auc),
        tta_gain=tta_gain(run.info.manifest),
        sec_per_epoch=seconds_per_epoch(run.info.manifest),
        kernel_auc=float(kernel_auc) if isinstance(kernel_auc, (int, float)) else None,
        patients=stats.patients,
        role=role,
        stats=stats,
        selected=bool(run.info.manifest.get("oof_selected", False)),
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


def _kept_comparison(a: RunStats | None, b: RunStats | None, n_boot: int, seed: int) -> PairedResult | None:
    """The paired test from both runs' cached replicates when they were drawn with these settings."""
    if a is None or b is None or (a.n_boot, a.seed) != (n_boot, seed):
        return None
    return compare_stats(a, b)


def compare(a: Run, b: Run, n_boot: int, seed: int = 0, stats: tuple[RunStats | None, RunStats | None] = (None, None),
            ) -> PairedResult | None:
    """AUC(a) - AUC(b) by a paired patient bootstrap; None when they cover different images. With
    both runs' cached `stats` on the same images, targets and patients, their replicates give it."""
    kept = _kept_comparison(stats[0], stats[1], n_boot, seed)
    if kept is not None:
        return kept
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
        r, vs_baseline=compare(runs[r.run_id], runs[base.run_id], n_boot, seed, (r.stats, base.stats))) for r in rows]


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
    test = _kept_comparison(lead.stats, second.stats, n_boot, seed) or paired_bootstrap_test(
        pair.y, pair.a, pair.b, pair.groups, n_boot=n_boot, seed=seed)
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
    """Subgroup label arrays (sex, age band, site) for the metadata columns present that vary: a column
    with one value only (every site "missing") has no subgroups to compare and is left out."""
    out: dict[str, np.ndarray] = {}
    for title, col in SUBGROUPS:
        if col not in meta.columns or meta[col].isna().all():
            continue
        if col == "age_approx":
            labels = age_bands(pd.to_numeric(meta[col], errors="coerce").to_numpy(float))
        else:
            labels = _decode(meta[col], SEXES if col == "sex" else SITES)
        if np.unique(np.asarray(labels).astype(str)).size > 1:
            out[title] = labels
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
    """Spearman correlation matrix of the columns of P: Pearson's on their midranks (as scipy.stats.spearmanr)."""
    from kit.blend.methods import midranks

    if P.shape[1] == 1:
        return np.ones((1, 1))
    return np.atleast_2d(np.corrcoef(midranks(P), rowvar=False))


def pretrained_answer(rows: Sequence[RunRow], runs: Mapping[str, Run], alpha: float = ALPHA, n_boot: int = 1000,
                      seed: int = 0) -> Answer:
    """The best pretrained run against the best run from random initialisation (a scratch CNN or a backbone
    with weights = none), out of fold on the same images: AUC difference, paired patient bootstrap."""
    question = QUESTIONS[PRETRAINED_QUESTION]
    base = baseline_row(rows)
    models = sorted((r for r in rows if not r.is_baseline), key=leaderboard_order)
    pre = next((r for r in models if r.pretrained), None)
    scratch = next((r for r in models if not r.pretrained), None)
    if pre is None or scratch is None:
        missing = "a pretrained run (model.weights = imagenet or a file)" if pre is None else \
            "a run from random initialisation"
        return Answer(PRETRAINED_QUESTION, question, tuple(r for r in (pre, scratch) if r), None,
                      f"Too few runs to answer: no {missing} yet.", baseline=base)
    caveats = _confounders(runs[pre.run_id], runs[scratch.run_id])
    caveats += [f"{r.run_id} kept each fold's best epoch on that fold (train.keep = best): its OOF AUC is optimistic"
                for r in (pre, scratch) if r.selected]
    head = (f"Pretrained {pre.architecture} ({pre.run_id}) {_fmt_ci(pre)} against {scratch.architecture} from random "
            f"initialisation ({scratch.run_id}) {_fmt_ci(scratch)}.")
    test = compare(runs[pre.run_id], runs[scratch.run_id], n_boot, seed)
    if test is None:
        return Answer(PRETRAINED_QUESTION, question, (pre, scratch), None,
                      head + " Their OOF files cover different images: no paired test.", tuple(caveats), baseline=base)
    word = ("pretraining helps, a resolved margin" if test.diff > 0 and test.p < alpha else
            "pretraining is worse here, a resolved margin" if test.p < alpha else "NOT resolved by these runs")
    verdict = f"{head} Pretrained minus scratch: {fmt_diff(test)} (paired patient bootstrap, out of fold): {word}."
    return Answer(PRETRAINED_QUESTION, question, (pre, scratch), None, verdict, tuple(caveats), test, base)
