"""`kit predict`: the probability that a lesion image is malignant, from trained runs or a saved ensemble.

In:  image files (read by `kit.data.images`) and a source of models: an ensemble (``ensembles/<name>/blend.json``,
     written by `kit blend`), or one run (a ``runs/<experiment>/v<N>/`` folder, or an experiment name meaning
     its latest run). With neither, the ``demo`` ensemble if it exists, else the most recently finished run.
Out: a frame with one row per image: ``image`` (the path), ``image_name`` (file stem), ``probability``
     (P(malignant)), ``fold_min`` / ``fold_max`` / ``fold_std`` (the spread of the single fold models'
     probabilities, across every fold of every run, before blending and calibration), ``models`` (how many
     fold models saw it) and ``error`` (one line when the file could not be read; the other columns NaN).

What happens, all with the kernel's own code (`kernels/`), never a re-implementation:
- each run's config is rebuilt from its manifest; each fold's model is built once (`kernels.models.build_model`,
  float32, no pretrained download) and its ``fold{k}.weights.h5`` loaded;
- each image is decoded (`kit.data.images`: the kernel's TF JPEG path where possible; a non-square image is
  centre-cropped to a square by default, see `kit.data.images.FITS`) and prepared (`kernels.data.prepare_image`); the passes of `kernels.train.tta_plan` are predicted in batches (dihedral
  views with `kernels.augment.dihedral_view`, augmented passes with `kernels.augment.host_augment_fn`), and
  averaged per fold as the kernel does; a run's prediction is the mean over its folds (as ``test_pred.csv``);
- an ensemble's runs are blended and calibrated by `kit.blend.saved.apply_saved` (the learned weights,
  rank placement against each run's stored test distribution, calibration map).

Metadata models (data.metadata) get the "missing" code for sex, age and site and one image per patient,
since a user's image comes without them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from kernels.augment import dihedral_view, host_augment_fn
from kernels.config import ConfigError, Experiment, from_dict
from kernels.contracts import MANIFEST_FILE, TEST_PRED_FILE, WEIGHTS_PATTERN, atomic_write_text, file_digest, write_csv
from kernels.data import DATA_EVAL_SEED_STREAM, meta_dim, missing_metadata_vector, prepare_image
from kernels.models import build_model, load_model_weights, model_prediction
from kernels.strategy import Hardware
from kernels.train import tta_plan
from kit.blend.saved import BLEND_FILE, apply_saved, read_blend
from kit.data.images import DEFAULT_FIT, ImageError, ImageFile, read_image
from kit.errors import KitError
from kit.run.baseline import predict_probabilities
from kit.run.folders import DEFAULT_ROOT, VERSION_RE, RunInfo, list_runs, run_from_folder, select_runs

DEFAULT_ENSEMBLE = "demo"
ENSEMBLES_ROOT = "ensembles"
PREDICT_BATCH = 32  # images per forward pass
CHUNK_IMAGES = 32  # images decoded and held (with all their TTA views) at once
NO_WEIGHTS = "none"  # model.weights value that skips any pretrained download (fold weights are loaded after)
RESULT_COLUMNS = ("image", "image_name", "probability", "fold_min", "fold_max", "fold_std", "models", "error")
JSON_SCHEMA = "kit.predict/1"


@dataclass(frozen=True)
class Member:
    """One run of the source: its config, folder and the folds whose weights are present."""

    run_id: str
    folder: Path
    exp: Experiment
    folds: tuple[int, ...]
    baseline: Mapping[str, Any] | None = field(default=None, repr=False)  # a baseline run's model file

    def weights_path(self, fold: int) -> Path:
        return self.folder / WEIGHTS_PATTERN.format(fold=fold)


@dataclass(frozen=True)
class Source:
    """Where the models come from: one run, or an ensemble's runs with its saved blend."""

    label: str
    members: tuple[Member, ...]
    blend: Mapping[str, Any] | None = field(default=None, repr=False)


# ---------------------------------------------------------------- choosing the source


def member_from_run(info: RunInfo) -> Member:
    """A run folder -> Member (config from its manifest; folds with a weights file, or the baseline's model)."""
    from kit.run.baseline import is_baseline, read_model

    where = str(info.folder / MANIFEST_FILE)
    try:
        exp = from_dict(info.config, f"{where}: config")
    except ConfigError as exc:
        raise KitError(str(exc)) from None
    if is_baseline(dict(info.manifest)):
        model = read_model(info.folder)
        return Member(info.run_id, info.folder, exp, tuple(int(f["fold"]) for f in model["folds"]), model)
    folds = tuple(int(f["fold"]) for f in info.manifest["folds"])
    present = tuple(k for k in folds if (info.folder / WEIGHTS_PATTERN.format(fold=k)).is_file())
    if not present:
        raise KitError(f"{info.folder}: no fold weights ({WEIGHTS_PATTERN.format(fold=folds[0] if folds else 0)}, ...) "
                       "in the run folder; the run must be trained with train.save_weights = true and pulled in full")
    return Member(info.run_id, info.folder, exp, present)


def _finished_at(info: RunInfo) -> tuple[str, float]:
    stamp = str((info.provenance or {}).get("finished_at") or "")
    return stamp, (info.folder / MANIFEST_FILE).stat().st_mtime


def latest_run(runs_root: str | os.PathLike[str] = DEFAULT_ROOT) -> RunInfo:
    """The most recently finished complete run (run.json finished_at, then manifest time)."""
    from kit.run.baseline import is_baseline

    runs = [r for r in list_runs(runs_root) if not is_baseline(dict(r.manifest))]  # the baseline has no weights
    if not runs:
        raise KitError(f"{runs_root}: no complete runs to predict with (train one with `kit run` or pull one)")
    return max(runs, key=_finished_at)


def resolve_run(spec: str, runs_root: str | os.PathLike[str] = DEFAULT_ROOT) -> RunInfo:
    """--run: a run folder, an ``<experiment>/v<N>`` id, or an experiment name (its latest run)."""
    path = Path(spec)
    if not path.is_dir():
        return select_runs(runs_root, names=[spec])[-1]
    if (path / MANIFEST_FILE).exists():
        return run_from_folder(path)
    versions = [(int(m.group(1)), p) for p in path.iterdir() if (m := VERSION_RE.match(p.name)) and p.is_dir()]
    complete = [p for _, p in sorted(versions) if (p / MANIFEST_FILE).exists()]
    if not complete:
        raise KitError(f"{path}: not a complete run folder (no {MANIFEST_FILE}) nor an experiment folder holding one")
    return run_from_folder(complete[-1])


def _ensemble_member(entry: Mapping[str, Any], runs_root: Path, where: str) -> Member:
    folder = Path(str(entry.get("folder", "")))
    if not (folder / MANIFEST_FILE).exists():
        folder = runs_root / str(entry["run_id"])
    if not (folder / MANIFEST_FILE).exists():
        raise KitError(f"{where}: run {entry['run_id']} not found (looked in {entry.get('folder')} and {folder}); "
                       "pull or re-run it")
    expected = entry.get("test_sha256")
    if expected and (folder / TEST_PRED_FILE).exists() and file_digest(folder / TEST_PRED_FILE)["sha256"] != expected:
        raise KitError(f"{where}: run {entry['run_id']} changed since the blend ({folder / TEST_PRED_FILE} differs); "
                       "re-run `kit blend`")
    return member_from_run(run_from_folder(folder))


def ensemble_source(name: str, ensembles_root: str | os.PathLike[str] = ENSEMBLES_ROOT,
                    runs_root: str | os.PathLike[str] = DEFAULT_ROOT) -> Source:
    """--ensemble NAME (or a path to a blend.json / its folder) -> Source with the saved blend."""
    path = Path(name)
    if path.is_dir():
        path = path / BLEND_FILE
    elif path.suffix != ".json":
        path = Path(ensembles_root) / name / BLEND_FILE
    if not path.exists():
        raise KitError(f"{path}: no saved blend for ensemble {name!r} (run `kit blend {name}` first, or `make demo`)")
    blend = read_blend(path)
    members = tuple(_ensemble_member(entry, Path(runs_root), str(path)) for entry in blend["runs"])
    return Source(f"ensemble {blend['name']} ({blend['method']}, {len(members)} runs)", members, blend)


def resolve_source(
    ensemble: str | None = None,
    run: str | None = None,
    runs_root: str | os.PathLike[str] = DEFAULT_ROOT,
    ensembles_root: str | os.PathLike[str] = ENSEMBLES_ROOT,
) -> Source:
    """The models to use: --ensemble, --run, else the demo ensemble if saved, else the latest run."""
    if ensemble and run:
        raise KitError("--ensemble and --run: give one of them, not both")
    if ensemble:
        return ensemble_source(ensemble, ensembles_root, runs_root)
    if run:
        info = resolve_run(run, runs_root)
    elif (Path(ensembles_root) / DEFAULT_ENSEMBLE / BLEND_FILE).exists():
        return ensemble_source(DEFAULT_ENSEMBLE, ensembles_root, runs_root)
    else:
        info = latest_run(runs_root)
    member = member_from_run(info)
    return Source(f"run {info.run_id}", (member,))


# ---------------------------------------------------------------- saying what is used

SYNTHETIC_NAME = "synth"  # the names `kit data synth` datasets get (data/synth-128, kit-user/synth-128)


def is_synthetic(dataset: str) -> bool:
    """Whether a run's data.dataset is synthetic (`kit data synth`): a local folder holding the synthetic
    marker, or (a Kaggle slug, or a folder made before the marker) a name saying so."""
    from kit.data.synth import SYNTHETIC_MARKER

    path = Path(str(dataset).rstrip("/"))
    return (path / SYNTHETIC_MARKER).is_file() or SYNTHETIC_NAME in path.name.lower()


def headline_auc(source: Source) -> str:
    """The source's headline OOF AUC as its report states it: an ensemble's blend.json headline (nested CV
    when its method learns, with the optimistic in-sample figure beside it), a run's manifest OOF AUC."""
    if source.blend is not None:
        blend = source.blend
        value = float(blend.get("oof_auc", math.nan))
        if blend.get("oof_auc_headline") == "nested_cv":
            return (f"OOF AUC {value:.3f} by nested CV, as the blend report headlines it "
                    f"(in-sample {float(blend.get('oof_auc_in_sample', math.nan)):.3f}, optimistic)")
        return f"OOF AUC {value:.3f} (the blend learns nothing from labels: in-sample is honest)"
    manifest = json.loads((source.members[0].folder / MANIFEST_FILE).read_text())
    return f"OOF AUC {float(manifest.get('oof_auc', math.nan)):.3f} (the run's out-of-fold predictions)"


def describe_source(source: Source) -> tuple[list[str], list[str]]:
    """(lines, warnings): which ensemble or run, its runs and the data each was trained on, the headline AUC;
    a warning per synthetic training dataset (a real lesion photo is another source than that data)."""
    datasets: dict[str, list[str]] = {}
    for member in source.members:
        datasets.setdefault(str(member.exp.data.dataset), []).append(member.run_id)
    lines = [f"using {source.label}: {headline_auc(source)}"]
    lines += [f"  trained on {dataset}: {', '.join(runs)}" for dataset, runs in datasets.items()]
    warnings = [f"{dataset} is synthetic data (`kit data synth`): models trained on it ({', '.join(runs)}) say "
                "nothing about real lesion photos; train on real data (`make demo`, or a pulled Kaggle run) and "
                "pass --ensemble NAME or --run RUN"
                for dataset, runs in datasets.items() if is_synthetic(dataset)]
    return lines, warnings


# ---------------------------------------------------------------- models and TTA


def predict_experiment(exp: Experiment) -> Experiment:
    """The member's config as predict builds it: no pretrained download (the fold weights replace them)."""
    return dataclasses.replace(exp, model=dataclasses.replace(exp.model, weights=NO_WEIGHTS))


def cpu_hardware() -> Hardware:
    """The kernel's Hardware record for a plain float32 CPU run: no device augmentation (the saved weights
    are the core network's, which loads into a model built with or without it)."""
    return Hardware(kind="cpu", backend=keras.backend.backend(), replicas=1, devices=("CPU:0",), strategy=None,
                    mixed_precision=None, jit_compile=False, augment_on_device=False)


def load_fold_model(member: Member, fold: int) -> Any:
    """Build fold `fold`'s model (float32, kernel builder) and load its weights file."""
    keras.config.set_dtype_policy("float32")
    exp = predict_experiment(member.exp)
    model = build_model(exp, cpu_hardware(), meta_dim(exp))
    path = member.weights_path(fold)
    try:
        load_model_weights(model, str(path))
    except Exception as exc:  # h5py/keras raise many kinds for a wrong or broken file
        text = " ".join(str(exc).split())[:300]
        raise KitError(f"{path}: cannot load these weights into {member.exp.model.backbone} "
                       f"({type(exc).__name__}: {text})") from None
    return model


def metadata_inputs(n: int, exp: Experiment) -> np.ndarray | None:
    """The metadata input for `n` user images (all fields missing), or None when the model has none."""
    if not exp.data.metadata:
        return None
    return np.repeat(np.asarray(missing_metadata_vector(exp), dtype=np.float32)[None, :], n, axis=0)


def tta_inputs(images: np.ndarray, exp: Experiment) -> list[np.ndarray]:
    """The kernel's TTA passes (`kernels.train.tta_plan`) of a prepared batch, plain pass first."""
    passes = []
    augment = None
    for view, augmented in tta_plan(exp):
        x = images if view is None else dihedral_view(images, view)
        if augmented:
            # Seeded by pass number as eval_dataset seeds its first batch: the same random transforms for the
            # same image positions; dihedral views are exact, augmented passes are draws of the same kind.
            augment = augment or host_augment_fn(exp, mix=False)
            seed = np.asarray([exp.seed + DATA_EVAL_SEED_STREAM * augmented, 0], dtype=np.int64)
            x, _ = augment(x, np.zeros((len(images), 1), np.float32), seed=seed)
        passes.append(np.asarray(x, dtype=np.float32))
    return passes


def predict_fold(model: Any, passes: Sequence[np.ndarray], meta: np.ndarray | None, exp: Experiment) -> np.ndarray:
    """P(malignant) of one fold model: the mean over the TTA passes (one forward call for all of them)."""
    n = len(passes[0])
    x = np.concatenate(passes, axis=0)
    inputs: Any = x if meta is None else {"image": x, "meta": np.concatenate([meta] * len(passes), axis=0)}
    out = model_prediction(model.predict(inputs, batch_size=PREDICT_BATCH, verbose=0), exp)
    return out.reshape(len(passes), n).mean(axis=0)


def prepare(image: np.ndarray, exp: Experiment) -> np.ndarray:
    """The kernel's `prepare_image` on one decoded uint8 RGB image -> float32 [size, size, 3]."""
    return np.asarray(prepare_image(image, exp), dtype=np.float32)


def _chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(start + size, n))


# ---------------------------------------------------------------- the whole prediction


@dataclass
class MemberPredictions:
    """Per-fold probabilities of one member: [n_images, n_folds] (NaN where the image failed)."""

    member: Member
    folds: np.ndarray


Progress = Callable[[str, int], None]  # (what is happening, how many steps just finished)


def load_member_models(member: Member, progress: Progress | None = None) -> list[Any]:
    """Every fold model of one run, built once and loaded with its weights."""
    tick = progress or (lambda what, n: None)
    models = []
    if member.baseline is not None:  # a logistic regression per fold, applied with numpy: nothing to build
        tick(f"{member.run_id}: baseline", len(member.folds))
        return models
    for fold in member.folds:
        tick(f"{member.run_id}: loading fold {fold}", 0)
        models.append(load_fold_model(member, fold))
        tick(f"{member.run_id}: fold {fold} loaded", 1)
    return models


def predict_member(member: Member, files: Sequence[ImageFile], errors: dict[int, str],
                   progress: Progress | None = None, models: Sequence[Any] | None = None,
                   fit: str = DEFAULT_FIT) -> MemberPredictions:
    """Every fold of one run on every readable image, CHUNK_IMAGES at a time; unreadable files are added to
    `errors` (index -> one line). `models`: the run's fold models if already loaded (else loaded and freed);
    `fit`: how non-square images are made square (`kit.data.images.FITS`)."""
    exp = member.exp
    tick = progress or (lambda what, n: None)
    owned = models is None
    fold_models = load_member_models(member, progress) if models is None else list(models)
    out = np.full((len(files), len(member.folds) if member.baseline is not None else len(fold_models)), np.nan)
    for chunk in _chunks(len(files), CHUNK_IMAGES):
        label = f"{member.run_id}: images {chunk.start + 1}-{chunk.stop} of {len(files)}"
        ok, prepared = [], []
        for i in chunk:
            if i in errors:
                continue
            try:
                prepared.append(prepare(read_image(files[i].path, exp, fit), exp))
                ok.append(i)
            except ImageError as exc:
                errors[i] = str(exc)
        tick(label, 0)
        if ok:
            if member.baseline is not None:
                out[ok, :] = predict_probabilities(np.stack(prepared), dict(member.baseline))
                tick(label, len(chunk))
                continue
            passes = tta_inputs(np.stack(prepared), exp)
            meta = metadata_inputs(len(ok), exp)
            for j, model in enumerate(fold_models):
                out[ok, j] = predict_fold(model, passes, meta, exp)
        tick(label, len(chunk))
    if owned:
        del fold_models
        keras.utils.clear_session(free_memory=True)
    return MemberPredictions(member, out)


def combine_members(source: Source, preds: Sequence[MemberPredictions]) -> np.ndarray:
    """One probability per image: a run's fold mean, or the ensemble's saved blend (+ calibration)."""
    means = np.column_stack([p.folds.mean(axis=1) for p in preds])
    if source.blend is None:
        return means[:, 0]
    good = ~np.isnan(means).any(axis=1)
    out = np.full(means.shape[0], np.nan)
    if good.any():
        out[good] = apply_saved(source.blend, means[good], reference="stored")
    return out


def total_steps(source: Source, n_images: int) -> int:
    """Progress units: one per fold model loaded and one per image per member."""
    return sum(len(m.folds) + n_images for m in source.members)


def predict(files: Sequence[ImageFile], source: Source, progress: Progress | None = None,
            models: Sequence[Sequence[Any]] | None = None, fit: str = DEFAULT_FIT) -> pd.DataFrame:
    """Predict every file with every member of `source` (`models`: already loaded fold models per member,
    as `load_member_models` gives them; `fit`: see `kit.data.images.FITS`); see the module docstring for columns."""
    errors: dict[int, str] = {}
    loaded = models if models is not None else [None] * len(source.members)
    preds = [predict_member(m, files, errors, progress, ms, fit)
             for m, ms in zip(source.members, loaded, strict=True)]
    prob = combine_members(source, preds) if files else np.zeros(0)
    every = np.concatenate([p.folds for p in preds], axis=1) if files else np.zeros((0, 1))
    rows = []
    for i, item in enumerate(files):
        failed = i in errors
        fold_values = every[i][~np.isnan(every[i])]
        rows.append({
            "image": str(item.path),
            "image_name": item.name,
            "probability": math.nan if failed else float(prob[i]),
            "fold_min": math.nan if failed else float(fold_values.min()),
            "fold_max": math.nan if failed else float(fold_values.max()),
            "fold_std": math.nan if failed else float(fold_values.std()),
            "models": 0 if failed else int(fold_values.size),
            "error": errors.get(i, ""),
        })
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


# ---------------------------------------------------------------- writing results


def write_results_csv(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """The result frame as CSV, atomically."""
    write_csv(frame, path)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _json_value(value.item())
    return value


def results_json(frame: pd.DataFrame, source: Source, fit: str = DEFAULT_FIT) -> dict[str, Any]:
    """The JSON document: source, runs and one object per image (NaN -> null, error -> null when none)."""
    records = []
    for row in frame.to_dict(orient="records"):
        record = {k: _json_value(v) for k, v in row.items()}
        record["error"] = record["error"] or None
        records.append(record)
    return {
        "schema": JSON_SCHEMA,
        "source": source.label,
        "runs": [{"run_id": m.run_id, "folder": str(m.folder), "folds": list(m.folds),
                  "backbone": m.exp.model.backbone, "image_size": m.exp.data.image_size} for m in source.members],
        "calibrated": bool(source.blend and source.blend.get("calibration")),
        "fit": fit,
        "predictions": records,
    }


def write_results_json(frame: pd.DataFrame, source: Source, path: str | os.PathLike[str],
                       fit: str = DEFAULT_FIT) -> None:
    """The JSON document, atomically."""
    atomic_write_text(path, json.dumps(results_json(frame, source, fit), indent=2) + "\n")



# ---------------------------------------------------------------- against the baseline


@dataclass(frozen=True)
class BaselineComparison:
    """The source's OOF AUC against the baseline run's on the same images (paired patient bootstrap of the
    difference, as the blend reports compare runs)."""

    baseline: str  # the baseline's run id
    n: int  # images both have OOF predictions for
    source_auc: float
    baseline_auc: float
    p: float  # two-sided paired patient-bootstrap p-value of the difference
    basis: str = ""  # "in-sample " for a learned blend, whose headline (nested CV) has no per-image scores saved

    @property
    def beats(self) -> bool:
        """Higher than the baseline and separable from it (p < BASELINE_ALPHA)."""
        return self.source_auc > self.baseline_auc and self.p < BASELINE_ALPHA

    def sentence(self) -> str:
        """One line for the user."""
        figures = (f"{self.basis}OOF AUC {self.source_auc:.3f} vs the baseline's {self.baseline_auc:.3f} on the same {self.n} "
                   f"images ({self.baseline}; paired patient bootstrap p = {self.p:.2g})")
        if self.source_auc <= self.baseline_auc:
            return f"these models do not beat the baseline: {figures}"
        if not self.beats:
            return f"these models are not separable from the baseline: {figures}"
        return f"these models beat the baseline: {figures}"


BASELINE_ALPHA = 0.05


def source_oof(source: Source) -> pd.DataFrame:
    """image_name, target, pred: the source's out-of-fold predictions on the images every member has (an
    ensemble's saved blend applied to its runs' OOF, ranked among themselves as at blend time)."""
    from kernels.contracts import OOF_FILE, read_oof

    frames = [read_oof(m.folder / OOF_FILE) for m in source.members]
    patients = frames[0]["patient_id"] if "patient_id" in frames[0] else frames[0]["image_name"]  # else per image
    frames[0] = frames[0].assign(patient_id=patients)[["image_name", "patient_id", "target", "pred"]]
    joined = frames[0].rename(columns={"pred": "pred_0"})
    for j, frame in enumerate(frames[1:], start=1):
        joined = joined.merge(frame[["image_name", "pred"]].rename(columns={"pred": f"pred_{j}"}), on="image_name")
    matrix = joined[[f"pred_{j}" for j in range(len(frames))]].to_numpy(float)
    pred = matrix[:, 0] if source.blend is None else apply_saved(source.blend, matrix, reference="within")
    return pd.DataFrame({"image_name": joined["image_name"], "patient_id": joined["patient_id"],
                         "target": joined["target"], "pred": pred})


def compare_with_baseline(source: Source, runs_root: str | os.PathLike[str] = DEFAULT_ROOT) -> BaselineComparison | None:
    """The source against the latest baseline run under ``runs_root`` (`kit baseline`), or None when there is
    none, or when they share no images with both classes."""
    from kernels.contracts import OOF_FILE, read_oof
    from kernels.metrics import paired_bootstrap_test
    from kit.run.baseline import is_baseline

    baselines = [r for r in list_runs(runs_root) if is_baseline(dict(r.manifest))]
    if not baselines:
        return None
    base = baselines[-1]
    ours = source_oof(source)
    theirs = read_oof(base.folder / OOF_FILE)[["image_name", "pred"]].rename(columns={"pred": "base"})
    both = ours.merge(theirs, on="image_name")
    if both["target"].nunique() < 2:
        return None
    test = paired_bootstrap_test(both["target"], both["pred"], both["base"], groups=both["patient_id"].astype(str))
    learned = source.blend is not None and source.blend.get("oof_auc_headline") == "nested_cv"
    return BaselineComparison(base.run_id, len(both), test.auc1, test.auc2, test.p, "in-sample " if learned else "")
