"""A frozen backbone's features, cached: the backbone runs once per image and view, the head trains on arrays.

In:  an `Experiment` for which train.feature_cache resolves on (`kernels.config.feature_cache_on`: a frozen
     backbone, dihedral-only augmentation, no mixing, no augmented TTA passes, avg/max pooling), the run's
     built model (`kernels.models.build_model`), the detected `Hardware` and the dataset's TFRecord files.
Out: `FeatureBank` (`feature_bank`: every record's pooled features under each dihedral view, its metadata and
     labels, in eval order per file); `bank_train_dataset` (endless batches: a uniformly drawn view of each
     image, as the dihedral augmentation draws it), `bank_inputs` (one view, in file order, for validation),
     `bank_predict_tta` (a `TTAPrediction`: plain = view 0, TTA = the mean of the head's predictions over the
     8 views); `CachedRun` (the compiled `kernels.models.head_model` and the state every fold starts from).

Why it is the same computation: a frozen backbone (trainable = False, so BatchNorm runs in inference mode)
gives an image under a fixed view the same pooled features every time, so computing them once and training
the head (the model's own layers, weights shared) on them trains what the uncached run trains, without two
backbone passes per image per epoch and eight per prediction. Only fixed, finite views can be cached: the
8 flips/transposes. Random warps, colour draws and mixing change the features each time; train.feature_cache
"on" refuses them and "auto" then trains uncached. Device augmentation is bypassed (the views are the
augmentation). The bank holds views x images x width float32 numbers; above `FEATURE_CACHE_MAX_BYTES` "auto"
trains uncached and "on" stops with one line.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kernels.config import Experiment
from kernels.data import count_examples, eval_dataset, eval_full_batches, eval_labels, read_records_meta
from kernels.foldstart import FoldStart, snapshot_start
from kernels.models import feature_model, head_model, model_prediction
from kernels.strategy import eval_batch_size, global_batch_size, strategy_scope
from kernels.train import DIHEDRAL_VIEWS, ExactValidation, TTAPrediction, compile_model

FEATURE_CACHE_MAX_BYTES = 8 << 30  # 8 GiB of host memory at most (B0 on the full 2020 data, 8 views: ~1.8 GB)
FEATURE_BYTES = 4  # float32
FEATURE_SEED_STREAM = 104_729  # keeps the view draws apart from the shuffle's


class FeatureCacheError(RuntimeError):
    """train.feature_cache = "on" cannot be honoured (the one-line message says why)."""


@dataclass(frozen=True)
class FeatureBank:
    """Every record's cached inputs to the head, rows in eval order file after file."""

    rows: dict[str, tuple[int, int]]  # file -> (first row, rows)
    features: np.ndarray  # float32 [views, rows, width]: view k = `kernels.augment.dihedral_view` k
    meta: np.ndarray | None  # float32 [rows, meta_dim] with data.metadata
    labels: np.ndarray  # float32 [rows, label width] (zeros for unlabelled files)
    targets: np.ndarray  # int [rows] (0 for unlabelled files)
    seconds: float  # time the backbone passes took

    def indices(self, files: Sequence[str]) -> np.ndarray:
        """The rows of ``files``, in the order given (each file's records in file order)."""
        return np.concatenate([np.arange(a, a + n) for a, n in (self.rows[f] for f in files)] or [np.zeros(0, int)])


def bank_views(exp: Experiment) -> int:
    """How many views the bank holds: all 8 when training draws them or TTA averages them, else the plain one."""
    return DIHEDRAL_VIEWS if ("dihedral" in exp.augment.ops or exp.train.tta_dihedral) else 1


def bank_bytes(exp: Experiment, n_records: int, width: int) -> int:
    """Host memory the bank of ``n_records`` records of ``width`` features takes."""
    return bank_views(exp) * n_records * width * FEATURE_BYTES


def _features_images(inputs: Any) -> Any:
    return inputs["image"] if isinstance(inputs, dict) else inputs


def _features_group(extractor: keras.Model, files: Sequence[str], exp: Experiment, hw: Any, labelled: bool,
                    out: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Fill ``out`` [views, n, width] with the features of ``files`` passed together (so the images-per-patient
    metadata counts as in the uncached passes); return their (meta or None, labels, targets)."""
    n = out.shape[1]
    meta = None
    for k in range(out.shape[0]):
        ds = eval_dataset(list(files), exp, hw, labelled=False, view=k or None)
        if exp.data.metadata and k == 0:
            meta = np.concatenate([np.asarray(b["meta"], np.float32) for b in ds.as_numpy_iterator()])[:n]
        out[k] = np.asarray(keras.ops.convert_to_numpy(extractor.predict(ds.map(_features_images), verbose=0)))[:n]
    if not labelled:  # test files: no labels (widened with zeros when joined to the labelled files)
        return meta, np.zeros((n, 0), np.float32), np.zeros(n, np.int64)
    records = read_records_meta(files, labelled=True)
    return meta, eval_labels(records, exp.model.head), records["target"].to_numpy()


def feature_bank(extractor: keras.Model, groups: Sequence[tuple[Sequence[str], bool]], exp: Experiment,
                 hw: Any) -> FeatureBank:
    """The bank of every file in ``groups`` ((files, labelled) passed together: the train files, the test
    files), from ``extractor`` (`kernels.models.feature_model` of the run's model). The features are written
    into one array allocated up front (no transient copies of the bank)."""
    start = time.monotonic()
    groups = [(list(files), labelled) for files, labelled in groups if files]
    rows: dict[str, tuple[int, int]] = {}
    total = 0
    for f in (f for files, _ in groups for f in files):
        rows[f] = (total, count_examples([f]))
        total += rows[f][1]
    features = np.empty((bank_views(exp), total, int(extractor.output.shape[-1])), np.float32)
    parts = []
    for files, labelled in groups:
        first = rows[files[0]][0]
        parts.append(_features_group(extractor, files, exp, hw, labelled,
                                     features[:, first:first + count_examples(files)]))
    label_width = max(p[1].shape[1] for p in parts)
    return FeatureBank(
        rows=rows, features=features,
        meta=np.concatenate([p[0] for p in parts]) if exp.data.metadata else None,
        labels=np.concatenate([np.pad(p[1], [(0, 0), (0, label_width - p[1].shape[1])]) for p in parts]),
        targets=np.concatenate([p[2] for p in parts]), seconds=time.monotonic() - start,
    )


def _features_inputs(bank: FeatureBank, features: Any, rows: Any) -> Any:
    """The head's inputs for ``rows`` of the bank, given their features."""
    if bank.meta is None:
        return features
    return {"features": features, "meta": tf.gather(tf.constant(bank.meta), rows)}


def bank_train_dataset(bank: FeatureBank, files: Sequence[str], exp: Experiment, hw: Any) -> tf.data.Dataset:
    """Endless shuffled training batches (global batch, full batches) of the head's inputs and labels: per
    image a view drawn uniformly from the bank's 8 (the dihedral augmentation's distribution), or the plain
    view without it. Malignant rows repeat data.upsample_malignant times, as in `kernels.data.train_dataset`."""
    rows = bank.indices(files)
    if exp.data.upsample_malignant > 1:
        malignant = rows[bank.targets[rows] == 1]
        rows = np.concatenate([rows, *[malignant] * (exp.data.upsample_malignant - 1)])
    views = bank.features.shape[0] if "dihedral" in exp.augment.ops else 1
    batch = global_batch_size(exp, hw)
    features = tf.constant(bank.features[:views])
    labels = tf.constant(bank.labels)

    def draw(index: Any, picked: Any) -> tuple[Any, Any]:
        seed = tf.stack([tf.cast(exp.seed + FEATURE_SEED_STREAM, tf.int64), index])
        view = tf.random.stateless_uniform([batch], seed=seed, maxval=views, dtype=tf.int32)
        x = tf.gather_nd(features, tf.stack([view, tf.cast(picked, tf.int32)], axis=1))
        return _features_inputs(bank, x, picked), tf.gather(labels, picked)

    ds = tf.data.Dataset.from_tensor_slices(rows.astype(np.int64)).repeat()
    ds = ds.shuffle(len(rows), seed=exp.seed, reshuffle_each_iteration=True).batch(batch, drop_remainder=True)
    return ds.enumerate().map(draw).prefetch(tf.data.AUTOTUNE)


def bank_inputs(bank: FeatureBank, files: Sequence[str], exp: Experiment, hw: Any, labelled: bool = False,
                views: Sequence[int] = (0,)) -> tf.data.Dataset:
    """A finite pass in `eval_batch_size` batches over ``files``' rows under each of ``views`` in turn (rows
    in file order within a view): inputs, or (inputs, label) when ``labelled``. As `kernels.data.eval_dataset`:
    where evaluation pads (`eval_full_batches`) the last batch is zero-padded to the full batch (labelled
    elements then carry the sample weight); predictions past views x rows are padding."""
    rows = np.tile(bank.indices(files), len(views))
    which = np.repeat(np.asarray(views, np.int64), len(bank.indices(files)))
    batch = eval_batch_size(exp, hw)
    extra = -len(rows) % batch if eval_full_batches(hw) else 0

    def padded(a: np.ndarray) -> np.ndarray:  # zero rows up to full batches (where evaluation pads)
        return np.concatenate([a, np.zeros((extra, *a.shape[1:]), a.dtype)]) if extra else a

    x = padded(bank.features[which, rows])
    inputs = x if bank.meta is None else {"features": x, "meta": padded(bank.meta[rows])}
    if not labelled:
        return tf.data.Dataset.from_tensor_slices(inputs).batch(batch).prefetch(tf.data.AUTOTUNE)
    labels = padded(bank.labels[rows])
    weight = padded(np.ones(len(rows), np.float32))  # 0 on padding rows
    elements = (inputs, labels, weight) if eval_full_batches(hw) else (inputs, labels)
    return tf.data.Dataset.from_tensor_slices(elements).batch(batch).prefetch(tf.data.AUTOTUNE)


def bank_predict_tta(head: keras.Model, bank: FeatureBank, files: Sequence[str], exp: Experiment,
                     hw: Any) -> TTAPrediction:
    """P(malignant) per record of ``files`` from the head on cached features: plain = view 0, TTA = the mean
    over the 8 views with train.tta_dihedral (one ``predict`` call for all of them), else the plain view."""
    n = len(bank.indices(files))
    views = list(range(DIHEDRAL_VIEWS)) if exp.train.tta_dihedral else [0]
    pred = model_prediction(head.predict(bank_inputs(bank, files, exp, hw, views=views), verbose=0), exp)
    stacked = pred[:n * len(views)].reshape(len(views), n)
    return TTAPrediction(plain=stacked[0], tta=stacked.mean(axis=0), views=len(views))


def bank_exact_validation(bank: FeatureBank, files: Sequence[str], exp: Experiment, hw: Any) -> ExactValidation | None:
    """`kernels.train.ExactValidation` on the cached plain view of the validation ``files`` (None with
    train.val_auc = "streaming")."""
    if exp.train.val_auc != "exact":
        return None
    rows = bank.indices(files)
    return ExactValidation(exp, bank_inputs(bank, files, exp, hw), bank.labels[rows], bank.targets[rows])


@dataclass(frozen=True)
class CachedRun:
    """The run's head on cached features, compiled once, and the bank of the train and test files."""

    head: keras.Model
    start: FoldStart
    bank: FeatureBank


def build_cached_run(model: keras.Model, exp: Experiment, hw: Any, train: Sequence[str], test: Sequence[str],
                     meta_width: int, peak_lr: float, steps: int) -> CachedRun | None:
    """The bank of ``train`` and ``test`` from the run's model (built, its backbone frozen) and its head model,
    compiled like the model (`kernels.train.compile_model`). None when the bank would exceed
    `FEATURE_CACHE_MAX_BYTES` under "auto" (the run then trains uncached); `FeatureCacheError` under "on"."""
    with strategy_scope(hw):
        extractor = feature_model(model)
    width = int(extractor.output.shape[-1])
    need = bank_bytes(exp, count_examples([*train, *test]), width)
    if need > FEATURE_CACHE_MAX_BYTES:
        text = (f"train.feature_cache: the bank would take {need / 2**30:.1f} GiB (views x images x {width} features), "
                f"above {FEATURE_CACHE_MAX_BYTES / 2**30:.0f} GiB")
        if exp.train.feature_cache == "on":
            raise FeatureCacheError(f"{text}; set train.feature_cache = 'off'")
        print(f"[kit] {text}: training uncached", flush=True)
        return None
    bank = feature_bank(extractor, [(train, True), (test, False)], exp, hw)
    print(f"[kit] feature cache: backbone features of {len(bank.targets)} images x {bank.features.shape[0]} view(s) "
          f"({bank.features.nbytes / 2**20:.0f} MiB) in {bank.seconds:.1f} s; the head trains on them", flush=True)
    with strategy_scope(hw):
        head = head_model(model, exp, meta_width)
        compile_model(head, exp, hw, peak_lr, steps)
        start = snapshot_start(head)
    return CachedRun(head=head, start=start, bank=bank)
