"""`kit plan`: estimated accelerator hours of each kernel of an ensemble or experiment, before anything is pushed.

In:  experiments (`kernels.config.Experiment`, sweeps expanded), the completed runs to calibrate against (run
     folders under a runs root and the ledger's pulled run folders: their manifests hold config, hardware and
     timings), and a local dataset folder or a known Kaggle dataset slug for the image counts.
Out: one `KernelCost` per kernel (hours for training and for prediction, total, share of the session limit)
     and a `Calibration` per hardware kind; `plan_table` renders them against the weekly quota.

The cost model (every constant named below, each with where it comes from) counts what the kernel does:
    forward GFLOPs per image  g = BACKBONE_GFLOPS[backbone] (published, at the backbone's native size)
                                  x (image_size / native size)^2            (conv FLOPs scale with pixels)
    training FLOPs            = TRAIN_FLOPS_PER_FORWARD x g x images trained per epoch x epochs   (per fold)
                                + g x validation images x epochs     (the per-epoch validation pass)
    prediction FLOPs          = g x (validation + test images) x TTA views                        (per fold)
    seconds                   = FLOPs / EFFECTIVE_TFLOPS[kind] + FOLD_OVERHEAD_S[kind] per fold
                                + COMPILE_S[kind] + KERNEL_OVERHEAD_S[kind] per kernel (start-up; the train and
                                predict steps compiled once: one compiled model serves every fold, kernels/foldstart.py)
    hours                     = seconds x calibration[kind] / 3600
With train.feature_cache on (a frozen backbone, kernels/features.py) training is g x (train + test images) x the
cached views (8 with dihedral augmentation or TTA, else 1), once per kernel: the backbone's only passes; the head's
epochs and predictions on the cached features are counted as free.
Images trained per epoch = what the kernel trains (kernels.main.run_steps): the fold's train files plus its external
files (kernels.main.fold_files: ALL external files in every fold, unless there are exactly as many external as train
files, then those of the training indices), // the global batch (batch_size x the kind's devices), the smallest
run fold's count, capped by train.max_steps_per_epoch; x the global batch. Upsampled malignant copies do not
lengthen an epoch (kernels.data.train_dataset). TTA views = 1 + 7 dihedral + train.tta. Per-fold counts are exact
for a local folder (its files' -COUNT names, the kernel's seeded KFold over files); for a known Kaggle slug the
files are taken as equal.
Calibration: for every completed run with timings on the same kind of hardware, the ratio of its measured
``timings.total_s`` to the model's estimate for its own config and data; the median ratio scales every estimate
of that kind (1.0, "uncalibrated", when there is none).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernels.accelerators import ACCELERATORS, accelerator_kind, accelerator_problem
from kernels.config import ConfigError, Experiment, feature_cache_on, from_dict
from kernels.schema import count_from_name

# Forward GFLOPs (multiply-adds x 1, as the papers report them) at the native input size.
# EfficientNet B0-B7: Tan & Le 2019, Table 2. EfficientNetV2: Tan & Le 2021, Table 7 (B0-B3 from the
# keras.applications model cards). MobileNetV3: Howard et al. 2019. ResNet-v2, DenseNet, Inception, Xception,
# ConvNeXt: their papers / the keras.applications tables. EfficientNet-Lite0/1/2: 407M / 631M / 899M multiply-adds
# (the lite README of tensorflow/tpu's models/official/efficientnet). "scratch": the demo's 4-stage SE CNN, measured
# against EfficientNet-B0 on this CPU (~5x faster per image, cpu-facts.md).
BACKBONE_GFLOPS: dict[str, tuple[float, int]] = {
    "efficientnet_b0": (0.39, 224), "efficientnet_b1": (0.70, 240), "efficientnet_b2": (1.0, 260),
    "efficientnet_b3": (1.8, 300), "efficientnet_b4": (4.2, 380), "efficientnet_b5": (9.9, 456),
    "efficientnet_b6": (19.0, 528), "efficientnet_b7": (37.0, 600),
    "efficientnetv2_b0": (0.72, 224), "efficientnetv2_b1": (1.2, 240), "efficientnetv2_b2": (1.7, 260),
    "efficientnetv2_b3": (3.0, 300), "efficientnetv2_s": (8.8, 384), "efficientnetv2_m": (24.0, 480),
    "efficientnetv2_l": (53.0, 480),
    "resnet50v2": (4.1, 224), "resnet101v2": (7.8, 224), "resnet152v2": (11.5, 224),
    "densenet121": (2.9, 224), "densenet169": (3.4, 224), "densenet201": (4.3, 224),
    "inception_v3": (5.7, 299), "xception": (8.4, 299),
    "convnext_tiny": (4.5, 224), "convnext_small": (8.7, 224), "convnext_base": (15.4, 224),
    "mobilenet_v3_small": (0.06, 224), "mobilenet_v3_large": (0.22, 224),
    "efficientnet_lite0": (0.41, 224), "efficientnet_lite1": (0.63, 240), "efficientnet_lite2": (0.90, 260),
    "scratch": (0.08, 224),
}
TRAIN_FLOPS_PER_FORWARD = 3.0  # forward + backward ~ 3x the forward pass (Kaplan et al. 2020, sec. 2.1)
DIHEDRAL_VIEWS = 8  # kernels.train: identity + 7 flips/transposes

# Sustained training throughput in TFLOP/s (forward-FLOP count x 3, as above) per hardware kind.
# cpu: measured here, EfficientNet-B0 at 128 px trains at ~38 img/s on 2 cores (cpu-facts.md):
#      0.39 x (128/224)^2 x 3 x 38 = 0.0145 TFLOP/s.
# tpu: TPU v5e-8, assumed ~1.3 % of its 8 x 197 bf16 TFLOP/s peak: EfficientNets' depthwise convolutions
#      use the matrix units poorly and the host feeds JPEG decoding; calibrate with a real run.
# gpu: 2 x T4 under MirroredStrategy in float16, assumed ~3 % of 2 x 65 TFLOP/s; calibrate likewise.
EFFECTIVE_TFLOPS: dict[str, float] = {"cpu": 0.0145, "tpu": 20.0, "gpu": 4.0}
KERNEL_OVERHEAD_S: dict[str, float] = {"cpu": 5.0, "tpu": 300.0, "gpu": 240.0}  # start, imports, weights, files
COMPILE_S: dict[str, float] = {"cpu": 21.0, "tpu": 120.0, "gpu": 60.0}  # graph tracing / XLA compile, once a run
# per fold: resetting the model, starting its datasets, writing its outputs (no compile: the run's model is kept)
FOLD_OVERHEAD_S: dict[str, float] = {"cpu": 3.0, "tpu": 20.0, "gpu": 10.0}
# Per hardware kind, from the one accelerator table (kernels/accelerators.py)
WEEKLY_QUOTA_H: dict[str, float] = {a.kind: a.weekly_hours for a in ACCELERATORS.values() if a.weekly_hours}
SESSION_LIMIT_H: dict[str, float] = {a.kind: a.session_hours for a in ACCELERATORS.values()}  # longest session
SECONDS_PER_HOUR = 3600.0

# Image counts of the Kaggle datasets the recipes use (train, test), by slug prefix: Chris Deotte's re-packs
# of the 2020 competition (33,126 train / 10,982 test) and of ISIC 2019 (which includes 2018; 25,331 train).
KNOWN_DATASETS: dict[str, tuple[int, int]] = {
    "cdeotte/melanoma-": (33126, 10982),
    "cdeotte/isic2019-": (25331, 0),
    "cdeotte/malignant-v2-": (60487, 0),
}
# Train files of those re-packs: 15 "triple stratified" 2020 files; the isic2019 re-pack's 30 (2018 even, 2019 odd:
# the public TFRecords notebook reads them as train%.2i with 2x / 2x+1). malignant-v2: not known (0: all per fold).
KNOWN_TRAIN_FILES: dict[str, int] = {"cdeotte/melanoma-": 15, "cdeotte/isic2019-": 30}
COMPETITION_COUNTS = KNOWN_DATASETS["cdeotte/melanoma-"]


@dataclass(frozen=True)
class ImageCounts:
    """Images a kernel reads: train (split into folds), test, external (training folds only)."""

    train: int
    test: int
    external: int
    source: str  # "files" (counted from -COUNT.tfrec names) | "known" | "assumed"
    train_files: tuple[int, ...] = ()  # images per train file, in the kernel's (sorted) order; () = unknown
    external_files: tuple[int, ...] = ()  # images per external file; () = unknown


@dataclass(frozen=True)
class FoldImages:
    """What one fold of the kernel reads: images of its train files, of its external files, of its validation."""

    train: int
    external: int
    validation: int


@dataclass(frozen=True)
class KernelCost:
    """The estimate for one kernel (hours already calibrated)."""

    name: str
    kind: str
    backbone: str
    image_size: int
    folds: int
    epochs: int
    views: int
    images_per_epoch: int  # images trained per epoch (steps x global batch)
    counts: ImageCounts
    train_h: float
    predict_h: float
    overhead_h: float
    calibration: float

    @property
    def total_h(self) -> float:
        return self.train_h + self.predict_h + self.overhead_h

    @property
    def session_share(self) -> float:
        return self.total_h / SESSION_LIMIT_H[self.kind]


@dataclass(frozen=True)
class Calibration:
    """Measured / estimated seconds over completed runs of one hardware kind."""

    kind: str
    factor: float
    runs: tuple[str, ...]


def on_accelerator(exp: Experiment, accelerator: str) -> Experiment:
    """The experiment planned for another kaggle.accelerator (e.g. "none": this machine's CPU)."""
    problem = accelerator_problem(accelerator)
    if problem:
        raise ConfigError(f"--accelerator: {problem}")
    return dataclasses.replace(exp, kaggle=dataclasses.replace(exp.kaggle, accelerator=accelerator))


def forward_gflops(backbone: str, image_size: int) -> float:
    """Forward GFLOPs per image of ``backbone`` at ``image_size`` px."""
    if backbone not in BACKBONE_GFLOPS:
        raise ConfigError(f"model.backbone: {backbone!r} has no cost entry in kit.kaggle.plan.BACKBONE_GFLOPS")
    gflops, native = BACKBONE_GFLOPS[backbone]
    return gflops * (image_size / native) ** 2


def _plan_file_counts(folder: Path, pattern: str) -> tuple[int, ...]:
    return tuple(count_from_name(str(p)) for p in sorted(folder.glob(pattern)))


def _plan_even_files(total: int, n_files: int) -> tuple[int, ...]:
    """``total`` images spread over ``n_files`` files as evenly as whole images allow."""
    return tuple(total // n_files + (i < total % n_files) for i in range(n_files)) if n_files else ()


def image_counts(exp: Experiment) -> ImageCounts:
    """Train/test/external image counts: counted from a local folder's file names, else the known slug table,
    else the competition's counts (source "assumed")."""
    d = exp.data
    local = Path(d.dataset)
    if local.is_dir():
        ext = Path(d.external)
        ext_files = _plan_file_counts(ext, d.external_glob) if d.external and ext.is_dir() else ()
        train_files = _plan_file_counts(local, d.train_glob)
        return ImageCounts(sum(train_files), sum(_plan_file_counts(local, d.test_glob)), sum(ext_files), "files",
                           train_files, ext_files)

    def known(slug: str) -> tuple[tuple[int, int] | None, int]:
        hit = next((prefix for prefix in KNOWN_DATASETS if slug.startswith(prefix)), None)
        return (KNOWN_DATASETS[hit], KNOWN_TRAIN_FILES.get(hit, 0)) if hit else (None, 0)

    main, main_files = known(d.dataset)
    train, test = main or COMPETITION_COUNTS
    main_files = main_files or KNOWN_TRAIN_FILES["cdeotte/melanoma-"]
    external, ext_files = (known(d.external) if d.external else (None, 0))
    n_ext = external[0] if external else 0
    return ImageCounts(train, test, n_ext, "known" if main else "assumed", _plan_even_files(train, main_files),
                       _plan_even_files(n_ext, ext_files))


def fold_images(exp: Experiment, counts: ImageCounts) -> list[FoldImages]:
    """Per run fold (``data.run_folds``, else all), the images the kernel reads (kernels.main.fold_files over
    kernels.data.fold_splits: the seeded KFold over whole train files)."""
    from sklearn.model_selection import KFold

    d = exp.data
    train_files = counts.train_files or _plan_even_files(counts.train, max(d.folds, 1))
    n = len(train_files)
    if n < d.folds:
        raise ConfigError(f"data.folds: {d.folds} folds need at least {d.folds} train files, found {n}")
    splits = list(KFold(n_splits=d.folds, shuffle=True, random_state=d.fold_seed).split(list(range(n))))
    paired = len(counts.external_files) == n
    out = []
    for fold in list(d.run_folds) or list(range(d.folds)):
        train_idx, val_idx = splits[fold]
        external = (sum(counts.external_files[i] for i in train_idx) if paired else counts.external)
        out.append(FoldImages(sum(train_files[i] for i in train_idx), external,
                              sum(train_files[i] for i in val_idx)))
    return out


def trained_per_epoch(exp: Experiment, folds: Sequence[FoldImages]) -> int:
    """Images trained per epoch in every fold (kernels.main.run_steps x the global batch: train.batch_size x the
    devices of kaggle.accelerator)."""
    batch = exp.train.batch_size * ACCELERATORS[exp.kaggle.accelerator].devices
    steps = min(max(1, (f.train + f.external) // batch) for f in folds)
    return min(steps, exp.train.max_steps_per_epoch or steps) * batch


def tta_views(exp: Experiment) -> int:
    """Prediction passes per image (kernels.train.tta_plan)."""
    return 1 + (DIHEDRAL_VIEWS - 1) * int(exp.train.tta_dihedral) + exp.train.tta


def estimate_seconds(exp: Experiment, counts: ImageCounts, kind: str | None = None) -> tuple[float, float, float, int]:
    """(train s, predict s, overhead s, images trained per epoch) for every fold the kernel runs, uncalibrated;
    train s includes the per-epoch validation passes."""
    kind = kind or accelerator_kind(exp.kaggle.accelerator)
    d, t = exp.data, exp.train
    folds = fold_images(exp, counts)
    per_epoch = trained_per_epoch(exp, folds)
    validation = sum(f.validation for f in folds)
    g = forward_gflops(exp.model.backbone, d.image_size) * 1e9
    speed = EFFECTIVE_TFLOPS[kind] * 1e12
    if feature_cache_on(exp):  # kernels.features: one forward pass per image and cached view, the head is ~free
        views = DIHEDRAL_VIEWS if ("dihedral" in exp.augment.ops or t.tta_dihedral) else 1
        train, predict = g * (counts.train + counts.test) * views / speed, 0.0
    else:
        train = len(folds) * TRAIN_FLOPS_PER_FORWARD * g * per_epoch * t.epochs / speed + g * validation * t.epochs / speed
        predict = g * (validation + len(folds) * counts.test) * tta_views(exp) / speed
    overhead = KERNEL_OVERHEAD_S[kind] + COMPILE_S[kind] + len(folds) * FOLD_OVERHEAD_S[kind]
    return train, predict, overhead, per_epoch


def estimate(exp: Experiment, calibration: Mapping[str, Calibration] | None = None) -> KernelCost:
    """The calibrated cost of one kernel."""
    kind = accelerator_kind(exp.kaggle.accelerator)
    counts = image_counts(exp)
    train, predict, overhead, per_epoch = estimate_seconds(exp, counts, kind)
    factor = calibration[kind].factor if calibration and kind in calibration else 1.0
    hours = factor / SECONDS_PER_HOUR
    return KernelCost(exp.name, kind, exp.model.backbone, exp.data.image_size, len(exp.data.run_folds) or exp.data.folds,
                      exp.train.epochs, tta_views(exp), per_epoch, counts, train * hours, predict * hours,
                      overhead * hours, factor)


# ---------------------------------------------------------------- calibration from completed runs


def _plan_run_counts(folder: Path, manifest: Mapping[str, Any], exp: Experiment) -> ImageCounts:
    """Image counts of a finished run, from its own outputs (n_oof, test_pred rows) when the data is not here."""
    counts = image_counts(exp)
    if counts.source == "files":
        return counts
    n_oof = int(manifest.get("n_oof") or sum(int(f.get("n_val", 0)) for f in manifest.get("folds", [])))
    test_file = folder / "test_pred.csv"
    n_test = max(0, sum(1 for _ in test_file.open()) - 1) if test_file.exists() else counts.test
    every_fold = not exp.data.run_folds or len(exp.data.run_folds) == exp.data.folds
    train = n_oof if n_oof and every_fold else counts.train
    return dataclasses.replace(counts, train=train, test=n_test, source="run",
                               train_files=_plan_even_files(train, len(counts.train_files) or exp.data.folds))


def run_ratio(folder: Path) -> tuple[str, float] | None:
    """(hardware kind, measured / estimated seconds) of a finished model run folder, or None when it cannot
    calibrate (no manifest, baseline run, no timings, unknown backbone)."""
    path = folder / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("role", "model") != "model":
            return None
        exp = from_dict(manifest["config"], str(path))
        total = float(manifest["timings"]["total_s"])
        kind = str(manifest["hardware"]["kind"])
        if kind not in EFFECTIVE_TFLOPS or exp.model.backbone not in BACKBONE_GFLOPS or total <= 0:
            return None
        train, predict, overhead, _ = estimate_seconds(exp, _plan_run_counts(folder, manifest, exp), kind)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return kind, total / (train + predict + overhead)


def ledger_run_folders(ledger: Mapping[str, Any]) -> list[Path]:
    """Run folders the ledger records as pulled (COMPLETE versions with a run_dir)."""
    out = []
    for entry in (ledger.get("experiments") or {}).values():
        for version in entry.get("versions") or []:
            if version.get("status") == "COMPLETE" and version.get("run_dir"):
                out.append(Path(str(version["run_dir"])))
    return out


def calibrate(folders: Iterable[Path]) -> dict[str, Calibration]:
    """Median measured/estimated ratio per hardware kind over the given run folders."""
    ratios: dict[str, list[tuple[str, float]]] = {}
    for folder in dict.fromkeys(Path(f).resolve() for f in folders):
        got = run_ratio(folder)
        if got:
            ratios.setdefault(got[0], []).append((f"{folder.parent.name}/{folder.name}", got[1]))
    return {kind: Calibration(kind, statistics.median(r for _, r in items), tuple(n for n, _ in items))
            for kind, items in ratios.items()}


def run_folders(runs_root: Path) -> list[Path]:
    """Every ``<runs_root>/<experiment>/v<N>/`` folder."""
    return sorted(p for p in runs_root.glob("*/v*") if p.is_dir()) if runs_root.is_dir() else []


# ---------------------------------------------------------------- what to plan


def select_experiments(experiments: Sequence[Experiment], names: Sequence[str], tags: Sequence[str],
                       globs: Sequence[str]) -> list[Experiment]:
    """The experiments an ensemble recipe's [runs] selects (union of names, tags, globs; none = all)."""
    if not (names or tags or globs):
        return list(experiments)
    base = {n.split("/")[0] for n in names}
    return [e for e in experiments
            if e.name in base or set(e.tags) & set(tags) or any(fnmatch.fnmatch(e.name, g) for g in globs)]


def weeks_needed(total_h: float, quota_h: float) -> int:
    """Whole weeks of quota the hours take."""
    return max(1, math.ceil(total_h / quota_h - 1e-9))


def plan_table(costs: Sequence[KernelCost], calibration: Mapping[str, Calibration], title: str) -> Any:
    """A `kit.console.Grid`: one row per kernel, cumulative hours against each kind's weekly quota (a row
    over its session limit or past the weekly quota is red)."""
    from kit.console import MUST, Col, Grid

    limits = ", ".join(f"{k} {SESSION_LIMIT_H[k]:.0f} h" for k in sorted({c.kind for c in costs}))
    cols = (Col("kernel", keep=MUST, wrap=True), Col("hw", "hardware", keep=3),
            Col("model", "backbone", keep=7), Col("px", "image size", keep=6, right=True),
            Col("folds", "folds x epochs", keep=2),
            Col("img/ep", "training images per epoch", keep=1, right=True),
            Col("TTA", "test-time augmentation views", keep=0, right=True),
            Col("train h", "training hours", keep=5, right=True), Col("pred h", "prediction hours", keep=4, right=True),
            Col("total h", "hours with start-up", keep=MUST, right=True),
            Col("session", f"share of Kaggle's session limit ({limits})", keep=8, right=True),
            Col("cum/week", "cumulative hours / weekly quota of that hardware", keep=MUST, right=True))
    rows, styles = [], []
    running: dict[str, float] = {}
    for c in costs:
        running[c.kind] = running.get(c.kind, 0.0) + c.total_h
        quota = WEEKLY_QUOTA_H.get(c.kind)
        cumulative = f"{running[c.kind]:.1f} / {quota:.0f}" if quota else f"{running[c.kind]:.2f}"
        over = bool(quota and running[c.kind] > quota) or c.session_share > 1
        rows.append((c.name, c.kind, c.backbone, str(c.image_size), f"{c.folds} x {c.epochs}",
                     f"{c.images_per_epoch:,}", str(c.views), f"{c.train_h:.2f}", f"{c.predict_h:.2f}",
                     f"{c.total_h:.2f}", f"{100 * c.session_share:.0f} %", cumulative))
        styles.append("red" if over else "")
    return Grid(title, cols, tuple(rows), styles=tuple(styles))


def plan_summary(costs: Sequence[KernelCost], calibration: Mapping[str, Calibration],
                 live: Any = None, why_not_live: str = "") -> list[str]:
    """Closing lines: totals against each weekly quota, sessions over the limit, the calibration used.
    `live` (a `kit.kaggle.client.Quota` from `kaggle quota`) adds this week's hours left, marked live; without
    it the weekly figures are the constants of kernels/accelerators.py, marked so (`why_not_live` says why)."""
    lines = []
    for kind in sorted({c.kind for c in costs}):
        total = sum(c.total_h for c in costs if c.kind == kind)
        quota = WEEKLY_QUOTA_H.get(kind)
        allowed = live.allowed_h.get(kind) if live is not None else None
        if allowed is not None:
            left = max(0.0, allowed - live.used_h.get(kind, 0.0))
            verdict = "fits in what is left this week" if total <= left else \
                f"needs {weeks_needed(total - left, allowed) + 1} weeks of quota"
            lines.append(f"{kind}: {total:.1f} h against {left:.1f} h left of {allowed:.0f} h this week "
                         f"(live, from `kaggle quota`{', refreshes ' + live.refresh if live.refresh else ''}; {verdict})")
        elif quota:
            weeks = weeks_needed(total, quota)
            verdict = "fits in one week" if weeks == 1 else f"needs {weeks} weeks of quota"
            lines.append(f"{kind}: {total:.1f} h of the {quota:.0f} h weekly quota ({verdict}; constant from "
                         f"kernels/accelerators.py{': ' + why_not_live if why_not_live else ''})")
        else:
            lines.append(f"{kind}: {total:.2f} h (no quota)")
    for c in costs:
        if c.session_share > 1:
            lines.append(f"{c.name}: {c.total_h:.1f} h is over the {SESSION_LIMIT_H[c.kind]:.0f} h session limit "
                         f"(split it with data.run_folds)")
    for kind in sorted({c.kind for c in costs}):
        cal = calibration.get(kind)
        if cal:
            lines.append(f"{kind} calibration: x{cal.factor:.2f} (median measured/estimated over "
                         f"{len(cal.runs)} run(s): {', '.join(cal.runs[:4])}{' ...' if len(cal.runs) > 4 else ''})")
        else:
            lines.append(f"{kind} calibration: none (no completed {kind} run with timings); kit.kaggle.plan's documented "
                         "constants as they are")
    return lines
