"""The tf.data input pipeline: TFRecord files in, batches of (inputs, label) out.

In:  the experiment (``data.*``, ``augment.*``, ``model.head``), the `Hardware` record (replicas, where
     augmentation runs) and TFRecord files in the competition schema (`kernels.schema`), found by glob
     through ``tf.io.gfile`` (local folders, gs://, ram://), counted from their ``-COUNT.tfrec`` names.
Out: `train_dataset` -> (endless shuffled, augmented batches, steps per epoch); `eval_dataset` -> a
     finite dataset in a fixed order (files in the given order, records in file order) that
     `read_records_meta` describes row for row; `decode_image` / `prepare_image` for single images.
     With ``data.shades_of_gray`` = p every decoded image (training, evaluation, `prepare_image`, so
     `kit predict` too) goes through `colour_constancy` first.

Images come out float32 0..255, [size, size, 3] (the model normalises for its backbone); in device-
augmentation mode they stay uint8 and the model's float32 Input casts them on the accelerator. Labels: head
"sigmoid" -> float32 [1] = target; head "diagnosis" -> float32 one-hot over the 9 classes of
``schema.DIAGNOSIS_CLASSES`` (2020 codes through the 2020 -> 2019 table; external records by their row of the
external dataset's CSV, ``data.external_labels``, joined by image name, or their dataset's known code list; a
malignant record is always "melanoma", a benign one never). Inputs are the image, or {"image", "meta"} with
``data.metadata`` (`metadata_vector`, `meta_dim` floats; external rows' fields from the CSV).

Speed (measured in ``make bench``): records are read in chunks per file (several files interleaved)
and parsed in vectorised chunks, only the features the experiment uses (which is also where malignant
records are repeated ``data.upsample_malignant`` times), shuffled as JPEG bytes, decoded in parallel (at
a reduced DCT scale when the stored image is >= 2x the model size; with no per-image size check when
every file's probe is exactly that size), batched as uint8 and augmented per batch by one compiled
function (`kernels.augment.host_augment_fn`). tf.data's
autotuner is switched off and parallelism fixed (``data.parallel_calls``, 0 = CPU count): with it on,
every finite pass ends in a multi-second stall on a small CPU (../shared/notes/cpu-facts.md).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from kernels.augment import dihedral_view, host_augment_fn
from kernels.config import ConfigError, Experiment
from kernels.paths import DataLocationError, resolve_dataset
from kernels.schema import (
    DIAGNOSES,
    DIAGNOSIS_CLASSES,
    ISIC2019_DIAGNOSES,
    KNOWN_EXTERNAL_CODES,
    MELANOMA_INDEX,
    MISSING_AGE,
    SEXES,
    SITES,
    code_classes,
    count_from_name,
    diagnosis_class,
    external_code_map,
    feature_spec,
    site_2020,
)
from kernels.strategy import Hardware, eval_batch_size, global_batch_size

DATA_RATIOS = (1, 2, 4, 8)  # the DCT scales decode_jpeg supports
DATA_PARSE_CHUNK = 64  # records parsed per vectorised parse_example call
DATA_READ_BUFFER = 8 << 20  # bytes of read-ahead per TFRecord file (large for gs:// reads on a TPU)
DATA_CYCLE_MIN = 8  # training files open at once (at least): record chunks from many files meet in the shuffle
DATA_PREFETCH = 2  # batches ready ahead of the model
DATA_BATCH_CALLS_MAX = 4  # whole-batch map calls in flight at once (each XLA call is multi-threaded itself)
DATA_META_BATCH = 4096  # records per step when reading metadata only
DATA_CHECK_BATCH = 256  # whole serialized records per step of the pre-training integrity pass
DATA_AUTOTUNE = False  # tf.data's autotuner: off (fixed parallelism), see the module docstring
DATA_CC_EPS = 1e-6  # guards the Shades of Gray division on an all-black image
DATA_EVAL_SEED_STREAM = 7919  # keeps TTA augmentation draws apart from training draws
META_AGE_SCALE = 90.0  # age / 90 (the oldest age bucket)
META_LOG_COUNT_SCALE = 5.0  # log(images per patient) / 5 (~1 for the largest patients)
META_LOG_BYTES_SCALE = 16.0  # log(JPEG bytes) / 16 (~1 for an 8.9 MB file; the re-packs' images are 10-300 kB)
META_GROUP_STRIDE = 1 << 32  # patient key = group * stride + patient_id (main files 0, external 1)
META_FEATURES = ("sex", "age_approx", "anatom_site_general_challenge")  # record fields metadata_vector reads
META_DIM = len(SEXES) + 2 + len(SITES) + 1  # sex one-hot, age, age missing, site one-hot, log count
EXTERNAL_NAME_COLUMNS = ("image_name", "image")  # Deotte's train.csv / the ISIC 2019 ground-truth CSV
EXTERNAL_SITE_COLUMNS = ("anatom_site_general_challenge", "anatom_site_general")  # 2020 / 2019 metadata CSV


@dataclass(frozen=True)
class DataFiles:
    """The dataset's TFRecord files, sorted: train (folds are made of these), test, external (train only)."""

    train: tuple[str, ...]
    test: tuple[str, ...]
    external: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Files and folds
# ---------------------------------------------------------------------------------------------
def data_glob(root: str, pattern: str, what: str) -> tuple[str, ...]:
    """Sorted files under ``root`` matching ``pattern``; each must end in -COUNT.tfrec."""
    files = tuple(sorted(tf.io.gfile.glob(f"{root.rstrip('/')}/{pattern}")))
    if not files:
        raise DataLocationError(f"{root}: no {what} files match {pattern!r}")
    for path in files:
        try:
            count_from_name(path)
        except ValueError:
            raise DataLocationError(f"{path}: {what} file name does not end in -COUNT.tfrec "
                                    "(the example count is read from it)") from None
    return files


def discover_files(exp: Experiment) -> DataFiles:
    """Train, test and (when ``data.external`` is set) external files of the experiment's datasets."""
    d = exp.data
    root = resolve_dataset(d.dataset, gcs_path=d.gcs_path)
    external: tuple[str, ...] = ()
    if d.external:
        external = data_glob(resolve_dataset(d.external, "KIT_EXTERNAL_DIR"), d.external_glob, "external")
    return DataFiles(data_glob(root, d.train_glob, "train"), data_glob(root, d.test_glob, "test"), external)


class DataRecordError(ValueError):
    """A TFRecord file is corrupt or truncated. The message is one line naming the file and the record."""


def data_first_bad_record(path: str) -> int:
    """Index (from 0) of the first record of ``path`` that cannot be read."""
    good = 0
    try:
        for _ in tf.data.TFRecordDataset(path):
            good += 1
    except tf.errors.OpError:
        pass
    return good


def check_records(files: Sequence[str]) -> None:
    """Read every record of ``files`` once, nothing parsed (TFRecordDataset checks each record's CRC),
    and check each file holds as many records as its -COUNT name says; `DataRecordError` otherwise.
    Run before training, so a damaged file is named in seconds instead of failing mid-epoch."""
    for path in files:
        n = 0
        try:
            for chunk in tf.data.TFRecordDataset(path, buffer_size=DATA_READ_BUFFER).batch(DATA_CHECK_BATCH):
                n += int(chunk.shape[0])
        except tf.errors.OpError as exc:
            reason = (exc.message or type(exc).__name__).splitlines()[0]
            raise DataRecordError(f"{path}: record {data_first_bad_record(path)} (from 0) cannot be read: the file "
                                  f"is corrupt or truncated ({reason}); re-download or rebuild it") from None
        expected = count_from_name(path)
        if n != expected:
            raise DataRecordError(f"{path}: holds {n} records, its name says {expected}; re-download or rebuild it")


def count_examples(files: Sequence[str]) -> int:
    """Number of examples in ``files``, from their -COUNT.tfrec names."""
    return sum(count_from_name(f) for f in files)


def fold_splits(n_files: int, folds: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """(train file indices, validation file indices) per fold: seeded, shuffled KFold over whole files."""
    from sklearn.model_selection import KFold

    if n_files < folds:
        raise ConfigError(f"data.folds: {folds} folds need at least {folds} train files, found {n_files}")
    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(sorted(tr.tolist()), sorted(va.tolist())) for tr, va in splitter.split(np.arange(n_files))]


def data_parallelism(exp: Experiment) -> int:
    """Fixed tf.data parallelism: ``data.parallel_calls`` or the number of CPU cores."""
    return exp.data.parallel_calls or os.cpu_count() or 1


def data_batch_calls(exp: Experiment) -> int:
    """Parallel calls of a map over whole batches (parse chunks, augmentation): few, as each holds a
    batch in memory and XLA spreads one call over the cores already."""
    return min(data_parallelism(exp), DATA_BATCH_CALLS_MAX)


def data_options(deterministic: bool) -> tf.data.Options:
    """Autotune off (its thread stalls every finite pass at teardown), order as asked."""
    options = tf.data.Options()
    options.autotune.enabled = DATA_AUTOTUNE
    options.deterministic = deterministic
    return options


# ---------------------------------------------------------------------------------------------
# Single images
# ---------------------------------------------------------------------------------------------
def data_ratio(stored: int, size: int, configured: int = 0) -> int:
    """The decode_jpeg DCT scale: the configured one, else the largest that keeps >= ``size`` px."""
    if configured:
        return configured
    ratio = 1
    for r in DATA_RATIOS[1:]:
        if stored // r >= size:
            ratio = r
    return ratio


def decode_image(jpeg_bytes: Any, exp: Experiment, stored_size: int | None = None) -> tf.Tensor:
    """JPEG bytes -> uint8 [h, w, 3], decoded at 1/2, 1/4 or 1/8 scale when the stored image is at
    least that many times the model size (``data.decode_ratio``; 0 = auto from ``stored_size``, or
    from the JPEG header when it is not given)."""
    size = exp.data.image_size
    if exp.data.decode_ratio or stored_size is not None:
        ratio = data_ratio(stored_size or size, size, exp.data.decode_ratio)
        return tf.io.decode_jpeg(jpeg_bytes, channels=3, ratio=ratio)
    shape = tf.io.extract_jpeg_shape(jpeg_bytes)
    smaller = tf.minimum(shape[0], shape[1])
    index = tf.add_n([tf.cast(smaller >= size * r, tf.int32) for r in DATA_RATIOS[1:]])
    branches = [lambda r=r: tf.io.decode_jpeg(jpeg_bytes, channels=3, ratio=r) for r in DATA_RATIOS]
    return tf.switch_case(index, branches)


def data_fit(image: Any, size: int) -> tf.Tensor:
    """uint8 [h, w, 3] -> uint8 [size, size, 3]; resized (antialiased bilinear) only when needed."""
    shape = tf.shape(image)

    def resize() -> tf.Tensor:
        out = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

    fitted = tf.cond((shape[0] == size) & (shape[1] == size), lambda: tf.cast(image, tf.uint8), resize)
    return tf.reshape(fitted, [size, size, 3])


def colour_constancy(image: Any, power: int) -> tf.Tensor:
    """Shades of Gray colour constancy (Finlayson & Trezzi 2004; the ISIC 2019/2020 winners' preprocessing):
    uint8 [..., h, w, 3] -> uint8, each channel scaled so the image's Minkowski p-norm illuminant estimate
    becomes grey (p = ``power``; 1 = grey world, large p -> max-RGB). ``power`` 0 returns the image as is."""
    if not power:
        return tf.convert_to_tensor(image)
    x = tf.cast(image, tf.float32)
    light = tf.reduce_mean(tf.pow(x, float(power)), axis=[-3, -2], keepdims=True) ** (1.0 / power)
    light = light / tf.maximum(tf.norm(light, axis=-1, keepdims=True), DATA_CC_EPS)
    out = x / tf.maximum(light * math.sqrt(3.0), DATA_CC_EPS)
    return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def prepare_image(image: Any, exp: Experiment) -> tf.Tensor:
    """Any decoded uint8 image [h, w, 3] (grey [h, w] / [h, w, 1] and RGBA are accepted) ->
    float32 [size, size, 3] in 0..255, resized (whole image, no crop) when its size differs."""
    x = tf.convert_to_tensor(image)
    if x.shape.rank == 2:
        x = x[..., None]
    if x.shape[-1] == 1:
        x = tf.image.grayscale_to_rgb(x)
    elif x.shape[-1] == 4:
        x = x[..., :3]
    if x.dtype != tf.uint8:
        x = tf.cast(tf.clip_by_value(tf.round(tf.cast(x, tf.float32)), 0.0, 255.0), tf.uint8)
    return tf.cast(colour_constancy(data_fit(x, exp.data.image_size), exp.data.shades_of_gray), tf.float32)


# ---------------------------------------------------------------------------------------------
# Labels and metadata
# ---------------------------------------------------------------------------------------------
def data_labels(target: Any, classes: Any, head: str) -> tf.Tensor:
    """Vectorised labels: [n, 1] target, or [n, len(DIAGNOSIS_CLASSES)] one-hot head class (`data_classes`)
    kept consistent with the target (malignant -> melanoma; a benign "melanoma" -> unknown)."""
    target = tf.cast(target, tf.int64)
    if head != "diagnosis":
        return tf.cast(target, tf.float32)[:, None]
    code = tf.cast(classes, tf.int64)
    code = tf.where((code < 0) | (code >= len(DIAGNOSIS_CLASSES)), tf.zeros_like(code), code)
    code = tf.where(target == 1, tf.fill(tf.shape(code), tf.constant(MELANOMA_INDEX, tf.int64)), code)
    code = tf.where((target == 0) & (code == MELANOMA_INDEX), tf.zeros_like(code), code)
    return tf.one_hot(code, len(DIAGNOSIS_CLASSES), dtype=tf.float32)


def data_classes(diagnosis: Any, groups: Any = None, external_map: Sequence[int] = (),
                 external_class: Any = None) -> tf.Tensor:
    """Head class per record: a 2020 record's code through the 2020 -> 2019 table (`schema.code_classes`); an
    external record's (``groups`` == 1) from its CSV row (``external_class``, when given) or through its
    dataset's own code list (``external_map``)."""
    code = tf.cast(diagnosis, tf.int64)
    table = tf.constant(code_classes() + [0], tf.int64)  # codes beyond the 2020 list: unknown
    classes = tf.gather(table, tf.clip_by_value(code, 0, len(DIAGNOSES)))
    if groups is None:
        return classes
    if external_class is not None:
        ext = tf.cast(external_class, tf.int64)
    else:
        ext_table = tf.constant(list(external_map) + [0], tf.int64)
        ext = tf.gather(ext_table, tf.clip_by_value(code, 0, len(external_map)))
    return tf.where(tf.cast(groups, tf.int64) == 1, ext, classes)


def meta_dim(exp: Experiment) -> int:
    """Length of the metadata vector of ``exp``: `META_DIM`, + 1 with ``data.metadata_file_size``."""
    return META_DIM + int(exp.data.metadata_file_size)


def metadata_vector(sex: Any, age: Any, site: Any, n_images: Any, file_bytes: Any = None) -> tf.Tensor:
    """float32 [..., META_DIM (+1)]: sex one-hot (male, female, missing), age/90, age-missing flag, site
    one-hot (``schema.SITES``, missing last), log(images per patient)/5 and, when ``file_bytes`` is given,
    log(JPEG bytes)/16 (0 when unknown). Codes out of range = missing."""
    sex = tf.cast(sex, tf.int64)
    site = tf.cast(site, tf.int64)
    age = tf.cast(age, tf.float32)
    sex = tf.where((sex < 0) | (sex >= len(SEXES)), tf.cast(len(SEXES) - 1, tf.int64), sex)
    site = tf.where((site < 0) | (site >= len(SITES)), tf.cast(len(SITES) - 1, tf.int64), site)
    missing_age = tf.cast(age < 0, tf.float32)
    scaled_age = tf.where(age < 0, tf.zeros_like(age), age / META_AGE_SCALE)
    count = tf.math.log(tf.maximum(tf.cast(n_images, tf.float32), 1.0)) / META_LOG_COUNT_SCALE
    return tf.concat([
        tf.one_hot(sex, len(SEXES), dtype=tf.float32), scaled_age[..., None], missing_age[..., None],
        tf.one_hot(site, len(SITES), dtype=tf.float32), count[..., None],
    ] + ([] if file_bytes is None else [data_log_bytes(file_bytes)[..., None]]), axis=-1)


def data_log_bytes(file_bytes: Any) -> tf.Tensor:
    """log(JPEG bytes) / `META_LOG_BYTES_SCALE`; 0 for an unknown size (<= 0)."""
    size = tf.cast(file_bytes, tf.float32)
    return tf.where(size > 0, tf.math.log(tf.maximum(size, 1.0)) / META_LOG_BYTES_SCALE, tf.zeros_like(size))


def missing_metadata_vector(exp: Experiment | None = None) -> np.ndarray:
    """The metadata vector of an image with every field missing (one image per patient, size unknown)."""
    size = [0] if exp is not None and exp.data.metadata_file_size else None
    missing = metadata_vector([len(SEXES) - 1], [MISSING_AGE], [len(SITES) - 1], [1], size)
    return np.asarray(missing[0], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# External images' labels and metadata, from the external dataset's own CSV
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExternalRows:
    """Per external image, from its dataset's CSV (one row each): the head class (`schema.DIAGNOSIS_CLASSES`)
    and metadata codes. A patient is the CSV's ``patient_id`` when it names one, else the image alone."""

    names: tuple[str, ...]
    classes: np.ndarray  # int64 head class
    sex: np.ndarray  # int64 index into SEXES
    age: np.ndarray  # int64, MISSING_AGE when missing
    site: np.ndarray  # int64 index into SITES (2019's torso parts -> torso)
    n_images: np.ndarray  # int64 images of the row's patient in the CSV (1: its own patient)
    source: str  # the CSV's path


def data_column(frame: pd.DataFrame, names: Sequence[str]) -> str | None:
    """The first of ``names`` that is a column of ``frame``."""
    return next((n for n in names if n in frame.columns), None)


def external_diagnoses(frame: pd.DataFrame, where: str, head: str) -> np.ndarray:
    """Head class per CSV row: from a ``diagnosis`` column of names, or the ISIC 2019 one-hot columns (MEL,
    NV, ...). The diagnosis head stops (`ConfigError`, one line naming the row) on a label it cannot map;
    the binary head needs none (-1)."""
    if "diagnosis" in frame.columns:
        labels = frame["diagnosis"].tolist()
    elif set(ISIC2019_DIAGNOSES[:-1]) <= set(frame.columns):
        columns = [c for c in ISIC2019_DIAGNOSES if c in frame.columns]
        onehot = frame[columns].apply(pd.to_numeric, errors="coerce").fillna(0.0).to_numpy()
        labels = [columns[i] if row.max() > 0 else "" for i, row in zip(onehot.argmax(1), onehot, strict=True)]
    elif head == "diagnosis":
        raise ConfigError(f"{where}: no diagnosis column (expected 'diagnosis' or the ISIC 2019 columns "
                          f"{', '.join(ISIC2019_DIAGNOSES)}): the diagnosis head needs every external label")
    else:
        return np.full(len(frame), -1, np.int64)
    out = np.full(len(frame), -1, np.int64)
    for i, label in enumerate(labels):
        try:
            out[i] = diagnosis_class(label, f"{where}: row {i + 2}")
        except ValueError as exc:
            if head == "diagnosis":
                raise ConfigError(f"{exc}; the diagnosis head stops rather than mask it") from None
    return out


def read_external_rows(path: str, head: str) -> ExternalRows:
    """Read an external dataset's CSV (`ExternalRows`); `ConfigError` (one line) for a missing file or column."""
    if not tf.io.gfile.exists(path):
        raise ConfigError(f"data.external_labels: {path}: no such file (expected the external dataset's CSV)")
    with tf.io.gfile.GFile(path, "r") as handle:
        frame = pd.read_csv(handle, dtype=str, keep_default_na=False)
    name_col = data_column(frame, EXTERNAL_NAME_COLUMNS)
    if name_col is None:
        raise ConfigError(f"{path}: no image name column (expected one of {', '.join(EXTERNAL_NAME_COLUMNS)})")
    names = frame[name_col].str.strip()
    if names.duplicated().any():
        raise ConfigError(f"{path}: image {names[names.duplicated()].iloc[0]!r} has more than one row")
    sex = frame["sex"].str.strip().str.lower() if "sex" in frame.columns else pd.Series([""] * len(frame))
    age = pd.to_numeric(frame["age_approx"], errors="coerce") if "age_approx" in frame.columns else \
        pd.Series([math.nan] * len(frame))
    site_col = data_column(frame, EXTERNAL_SITE_COLUMNS)
    sites = frame[site_col].tolist() if site_col else [""] * len(frame)
    patient = frame["patient_id"].str.strip() if "patient_id" in frame.columns else pd.Series([""] * len(frame))
    named = (patient != "") & (patient != "-1")
    n_images = np.where(named, patient.map(patient[named].value_counts()).fillna(1), 1).astype(np.int64)
    return ExternalRows(
        names=tuple(names), classes=external_diagnoses(frame, path, head),
        sex=np.array([SEXES.index(v) if v in SEXES else len(SEXES) - 1 for v in sex], np.int64),
        age=np.where(age.notna() & (age >= 0), age.fillna(0), MISSING_AGE).astype(np.int64),
        site=np.array([SITES.index(site_2020(v)) for v in sites], np.int64),
        n_images=n_images, source=path)


def external_labels_path(exp: Experiment) -> str:
    """``data.external_labels`` resolved: a path as given, or a file of the external dataset."""
    given = exp.data.external_labels
    if given.startswith(("/", "gs://")) or os.path.isabs(given):
        return given
    return f"{resolve_dataset(exp.data.external, 'KIT_EXTERNAL_DIR').rstrip('/')}/{given}"


def external_codes_known(exp: Experiment) -> bool:
    """Whether the external records' own diagnosis codes, patient ids and sites can be read (a known list)."""
    return bool(exp.data.external_diagnoses) or any(exp.data.external.startswith(p) for p in KNOWN_EXTERNAL_CODES)


def external_rows(exp: Experiment, files: DataFiles) -> ExternalRows | None:
    """The external images' CSV rows (None without ``data.external_labels``), checked against the records:
    every external image has its row. The diagnosis head without a CSV nor known codes stops (one line)."""
    if not files.external:
        return None
    if not exp.data.external_labels:
        if exp.model.head == "diagnosis" and not external_codes_known(exp):
            raise ConfigError(f"{exp.data.external}: its diagnosis codes are undocumented and data.external_labels "
                              "is empty: the diagnosis head needs every external label (expected the dataset's CSV, "
                              "e.g. data.external_labels = \"train.csv\")")
        return None
    rows = read_external_rows(external_labels_path(exp), exp.model.head)
    known = set(rows.names)
    for path in files.external:
        for name in read_record_names(path):
            if name not in known:
                raise ConfigError(f"{rows.source}: no row for external image {name!r} (in {path}); "
                                  "expected one row per external image")
    return rows


@functools.cache
def read_record_names(path: str) -> tuple[str, ...]:
    """The image names of one TFRecord file, in record order (read once per file)."""
    spec = {"image_name": tf.io.FixedLenFeature([], tf.string)}
    ds = tf.data.TFRecordDataset(path, buffer_size=DATA_READ_BUFFER).batch(DATA_META_BATCH)
    return tuple(b.decode("utf-8") for chunk in ds.map(lambda r: tf.io.parse_example(r, spec)["image_name"])
                 for b in chunk.numpy())


@dataclass(frozen=True)
class ExternalTables:
    """`ExternalRows` as tensors: image name -> row index, and the rows' class and metadata codes."""

    index: tf.lookup.StaticHashTable
    classes: tf.Tensor
    sex: tf.Tensor
    age: tf.Tensor
    site: tf.Tensor
    n_images: tf.Tensor


def external_tables(rows: ExternalRows | None) -> ExternalTables | None:
    """Lookup tables for the pipeline (None for None)."""
    if rows is None:
        return None
    init = tf.lookup.KeyValueTensorInitializer(tf.constant(list(rows.names), tf.string),
                                               tf.range(len(rows.names), dtype=tf.int64))
    return ExternalTables(tf.lookup.StaticHashTable(init, default_value=0), tf.constant(rows.classes),
                          tf.constant(rows.sex), tf.constant(rows.age), tf.constant(rows.site),
                          tf.constant(rows.n_images))


def train_class_counts(train_meta: pd.DataFrame, rows: ExternalRows | None,
                       external_files: Sequence[str] = ()) -> dict[str, int]:
    """Training images per head class, as `data_labels` labels them: the 2020 records (``train_meta``:
    `read_records_meta` of the fold's training files) and, with a CSV, the external images of
    ``external_files`` by their CSV rows (a CSV "melanoma" counts as melanoma)."""
    counts = dict.fromkeys(DIAGNOSIS_CLASSES, 0)
    for name, target in zip(train_meta["diagnosis"], train_meta["target"], strict=True):
        k = diagnosis_class(str(name), "train records")
        k = MELANOMA_INDEX if int(target) == 1 else (0 if k == MELANOMA_INDEX else k)
        counts[DIAGNOSIS_CLASSES[k]] += 1
    if rows is not None:
        where = {name: i for i, name in enumerate(rows.names)}
        for path in external_files:
            for name in read_record_names(path):
                k = int(rows.classes[where[name]])
                if k >= 0:
                    counts[DIAGNOSIS_CLASSES[k]] += 1
    return counts


DATA_COUNT_TABLES: dict[tuple[tuple[str, ...], tuple[int, ...]], tf.lookup.StaticHashTable] = {}


def data_patient_counts(files: Sequence[str], groups: Sequence[int]) -> tf.lookup.StaticHashTable:
    """Images per (group, patient) over ``files`` (one metadata-only pass, remembered for the same
    files: TTA passes reuse it), as a lookup table."""
    key = (tuple(files), tuple(groups))
    if key not in DATA_COUNT_TABLES:
        DATA_COUNT_TABLES[key] = data_count_table(files, groups)
    return DATA_COUNT_TABLES[key]


def data_count_table(files: Sequence[str], groups: Sequence[int]) -> tf.lookup.StaticHashTable:
    """Read the patient ids of ``files`` and count images per (group, patient)."""
    keys: list[np.ndarray] = []
    spec = {"patient_id": tf.io.FixedLenFeature([], tf.int64)}
    for group in sorted(set(groups)):
        members = [f for f, g in zip(files, groups, strict=True) if g == group]
        ds = tf.data.TFRecordDataset(members, buffer_size=DATA_READ_BUFFER).batch(DATA_META_BATCH)
        for chunk in ds.map(lambda r: tf.io.parse_example(r, spec)["patient_id"]):
            keys.append(chunk.numpy() + group * META_GROUP_STRIDE)
    unique, counts = np.unique(np.concatenate(keys) if keys else np.zeros(0, np.int64), return_counts=True)
    init = tf.lookup.KeyValueTensorInitializer(tf.constant(unique, tf.int64), tf.constant(counts, tf.int64))
    return tf.lookup.StaticHashTable(init, default_value=1)


# ---------------------------------------------------------------------------------------------
# Pipeline stages
# ---------------------------------------------------------------------------------------------
def data_stored_shapes(files: Sequence[str]) -> set[tuple[int, int]]:
    """(height, width) of the first image of each file (a cheap probe of the stored size)."""
    shapes = set()
    spec = {"image": tf.io.FixedLenFeature([], tf.string)}
    for path in files:
        for record in tf.data.TFRecordDataset(path).take(1):
            shape = tf.io.extract_jpeg_shape(tf.io.parse_single_example(record, spec)["image"]).numpy()
            shapes.add((int(shape[0]), int(shape[1])))
    return shapes


def data_decoder(files: Sequence[str], exp: Experiment) -> Any:
    """jpeg bytes -> uint8 [size, size, 3]. The DCT scale is fixed when every file's probe agrees
    (no per-image header parse), else chosen per image from its header. When every probe is a square
    of exactly size x scale (the competition's re-packed sets), decoding needs no resize check per
    image; an image of another size in such a file then stops the pipeline with a shape error."""
    size = exp.data.image_size
    shapes = data_stored_shapes(files)
    ratios = {data_ratio(min(shape), size, exp.data.decode_ratio) for shape in shapes}
    if exp.data.decode_ratio == 0 and len(ratios) == 1:
        ratio = ratios.pop()
        if shapes == {(size * ratio, size * ratio)}:
            return lambda jpeg: tf.ensure_shape(tf.io.decode_jpeg(jpeg, channels=3, ratio=ratio), [size, size, 3])
        return lambda jpeg: data_fit(decode_image(jpeg, exp, stored_size=size * ratio), size)
    return lambda jpeg: data_fit(decode_image(jpeg, exp), size)


def data_records(files: Sequence[str], groups: Sequence[int] | None, exp: Experiment,
                 training: bool) -> tf.data.Dataset:
    """Chunks of up to ``DATA_PARSE_CHUNK`` serialized records of one file (with a same-length vector
    of the file's group when ``groups`` is given). Batching inside each file keeps the per-record work
    of the interleave out of the hot path. Training: files shuffled every pass and read interleaved
    in parallel, every file of the cycle open at once (endless unless cached). Eval: files in the
    given order, records in file order."""
    def read(path: Any, group: Any = None) -> tf.data.Dataset:
        chunks = tf.data.TFRecordDataset(path, buffer_size=DATA_READ_BUFFER).batch(DATA_PARSE_CHUNK)
        return chunks if group is None else chunks.map(lambda r: (r, tf.fill(tf.shape(r), group)))

    ds = tf.data.Dataset.from_tensor_slices(
        list(files) if groups is None else (list(files), tf.constant(list(groups), tf.int64)))
    if not training:
        return ds.flat_map(read)
    ds = ds.shuffle(len(files), seed=exp.seed, reshuffle_each_iteration=True)
    if not exp.data.cache:
        ds = ds.repeat()
    par = data_parallelism(exp)
    cycle = min(max(par, DATA_CYCLE_MIN), len(files))
    return ds.interleave(read, cycle_length=cycle, block_length=1, num_parallel_calls=min(par, cycle),
                         deterministic=par == 1)  # data.parallel_calls = 1: a fixed training order


def data_parse_spec(labelled: bool, head: str, metadata: bool, names: bool = False,
                    file_size: bool = False) -> dict[str, Any]:
    """The part of the record schema this pipeline reads (every other feature is skipped unparsed); ``names``:
    the image name too (external rows join their CSV row by it)."""
    wanted = {"image"}
    if labelled:
        wanted |= {"target", "diagnosis"} if head == "diagnosis" else {"target"}
    if metadata:
        wanted |= {"patient_id", *META_FEATURES}
    if names:
        wanted.add("image_name")
    return {key: value for key, value in feature_spec(labelled).items() if key in wanted}


def data_external_meta(parsed: dict[str, tf.Tensor], groups: Any, n_images: Any, exp: Experiment,
                       tables: ExternalTables | None) -> tf.Tensor:
    """The metadata vectors of a chunk. External rows (``groups`` == 1) take their CSV row's sex, age, site and
    patient size (``tables``); without a CSV, a dataset with undocumented codes gives them missing fields, each
    image its own patient. The JPEG's byte length is the file-size feature (``data.metadata_file_size``)."""
    sex, age, site = parsed["sex"], parsed["age_approx"], parsed["anatom_site_general_challenge"]
    external = tf.cast(groups, tf.int64) == 1
    if tables is not None:
        row = tables.index.lookup(parsed["image_name"])
        sex = tf.where(external, tf.gather(tables.sex, row), sex)
        age = tf.where(external, tf.gather(tables.age, row), age)
        site = tf.where(external, tf.gather(tables.site, row), site)
        n_images = tf.where(external, tf.gather(tables.n_images, row), n_images)
    elif not external_codes_known(exp):
        sex = tf.where(external, tf.cast(len(SEXES) - 1, tf.int64), sex)
        age = tf.where(external, tf.cast(MISSING_AGE, tf.int64), age)
        site = tf.where(external, tf.cast(len(SITES) - 1, tf.int64), site)
        n_images = tf.where(external, tf.ones_like(n_images), n_images)
    size = tf.strings.length(parsed["image"]) if exp.data.metadata_file_size else None
    return metadata_vector(sex, age, site, n_images, size)


def data_parse_chunk(records: Any, groups: Any, exp: Experiment, labelled: bool, upsample: int,
                     counts: tf.lookup.StaticHashTable | None,
                     tables: ExternalTables | None = None) -> dict[str, tf.Tensor]:
    """A chunk of serialized records -> {"jpeg", "label"?, "meta"?}, malignant rows repeated."""
    names = tables is not None and groups is not None
    parsed = tf.io.parse_example(records, data_parse_spec(labelled, exp.model.head, counts is not None, names))
    out: dict[str, tf.Tensor] = {"jpeg": parsed["image"]}
    if labelled:
        classes = None
        if exp.model.head == "diagnosis":
            ext = tf.gather(tables.classes, tables.index.lookup(parsed["image_name"])) if names else None
            classes = data_classes(parsed["diagnosis"], groups,
                                   external_code_map(exp.data.external_diagnoses, exp.data.external), ext)
        out["label"] = data_labels(parsed["target"], classes, exp.model.head)
    if counts is not None:
        n_images = counts.lookup(groups * META_GROUP_STRIDE + parsed["patient_id"])
        out["meta"] = data_external_meta(parsed, groups, n_images, exp, tables)
    if labelled and upsample > 1:
        repeats = tf.where(parsed["target"] == 1, upsample, 1)
        out = {k: tf.repeat(v, repeats, axis=0) for k, v in out.items()}
    return out


def data_examples(files: Sequence[str], groups: Sequence[int], exp: Experiment, labelled: bool,
                  training: bool, tables: ExternalTables | None = None) -> tf.data.Dataset:
    """Parsed examples {"jpeg", "label"?, "meta"?}, one per record (malignant ones repeated in training)."""
    counts = data_patient_counts(files, groups) if exp.data.metadata else None
    upsample = exp.data.upsample_malignant if training else 1
    par = data_batch_calls(exp)
    grouped = counts is not None or (labelled and any(groups))  # external rows need their group for labels
    ds = data_records(files, groups if grouped else None, exp, training)
    if not grouped:
        ds = ds.map(lambda r: data_parse_chunk(r, None, exp, labelled, upsample, None), num_parallel_calls=par,
                    deterministic=not training)
    else:
        tables = tables if any(groups) else None
        ds = ds.map(lambda r, g: data_parse_chunk(r, g, exp, labelled, upsample, counts, tables),
                    num_parallel_calls=par, deterministic=not training)
    return ds.unbatch()


def data_decoded(ds: tf.data.Dataset, decoder: Any, exp: Experiment, deterministic: bool) -> tf.data.Dataset:
    """Examples -> (inputs, label) or inputs, with the image decoded to uint8 at model size;
    inputs = the image, or {"image", "meta"} with data.metadata."""
    def decode(example: dict[str, Any]) -> Any:
        image = colour_constancy(decoder(example["jpeg"]), exp.data.shades_of_gray)
        inputs = {"image": image, "meta": example["meta"]} if "meta" in example else image
        return (inputs, example["label"]) if "label" in example else inputs

    return ds.map(decode, num_parallel_calls=data_parallelism(exp), deterministic=deterministic)


def data_map_image(inputs: Any, fn: Any) -> Any:
    """Apply ``fn`` to the image (alone or inside the inputs dict)."""
    if isinstance(inputs, dict):
        return {**inputs, "image": fn(inputs["image"])}
    return fn(inputs)


def data_pad(inputs: Any, label: Any, size: int) -> tuple[Any, Any, Any]:
    """Pad a batch with zero rows to exactly ``size`` rows; returns (inputs, label, weight) with weight 1 on
    real rows and 0 on padding."""
    image = inputs["image"] if isinstance(inputs, dict) else inputs
    n = tf.shape(image)[0]
    extra = size - n

    def pad(value: Any) -> Any:
        return None if value is None else tf.pad(value, [[0, extra]] + [[0, 0]] * (len(value.shape) - 1))

    inputs = {k: pad(v) for k, v in inputs.items()} if isinstance(inputs, dict) else pad(inputs)
    return inputs, pad(label), pad(tf.ones([n], tf.float32))


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------
def epoch_steps(files: Sequence[str], exp: Experiment, hw: Hardware) -> int:
    """Steps of one training epoch over ``files``: their examples (by name) // the global batch, at least 1."""
    return max(1, count_examples(files) // global_batch_size(exp, hw))


def train_dataset(files: Sequence[str], exp: Experiment, hw: Hardware, external: Sequence[str] = (),
                  rows: ExternalRows | None = None) -> tuple[tf.data.Dataset, int]:
    """Endless training batches of the global batch size, and the steps of one epoch (examples in
    ``files`` + ``external`` by their names // global batch; upsampled copies do not lengthen it).

    Host mode: images float32, augmented per batch (+ mixup/cutmix). Device mode
    (``hw.augment_on_device``): images stay uint8 (the model's float32 Input casts them on the
    accelerator: 4x less host work and transfer); only mixup/cutmix, which needs labels, runs here.
    """
    all_files = [*files, *external]
    groups = [0] * len(files) + [1] * len(external)
    batch = global_batch_size(exp, hw)
    steps = epoch_steps(all_files, exp, hw)
    decoder = data_decoder(all_files, exp)
    ds = data_examples(all_files, groups, exp, labelled=True, training=True, tables=external_tables(rows))
    if exp.data.cache:
        ds = data_decoded(ds, decoder, exp, deterministic=False).cache().repeat()
        ds = ds.shuffle(exp.data.shuffle_buffer, seed=exp.seed, reshuffle_each_iteration=True)
    else:  # shuffle JPEG bytes, not decoded images (a fraction of the memory)
        ds = ds.shuffle(exp.data.shuffle_buffer, seed=exp.seed, reshuffle_each_iteration=True)
        ds = data_decoded(ds, decoder, exp, deterministic=False)
    ds = ds.batch(batch, drop_remainder=True)
    host_ops = bool(exp.augment.ops) and not hw.augment_on_device
    if host_ops or exp.augment.mix != "none":
        augment = host_augment_fn(exp, mix=True, ops=host_ops)

        def finish(index: Any, example: tuple[Any, Any]) -> tuple[Any, Any]:
            inputs, label = example
            inputs, label = augment(inputs, label, seed=tf.stack([tf.cast(exp.seed, tf.int64), index]))
            if hw.augment_on_device:
                inputs = data_map_image(inputs, lambda x: tf.cast(tf.round(x), tf.uint8))
            return inputs, label

        ds = ds.enumerate().map(finish, num_parallel_calls=data_batch_calls(exp), deterministic=False)
    elif not hw.augment_on_device:
        ds = ds.map(lambda x, y: (data_map_image(x, lambda i: tf.cast(i, tf.float32)), y),
                    num_parallel_calls=data_batch_calls(exp), deterministic=False)
    return ds.prefetch(DATA_PREFETCH).with_options(data_options(deterministic=False)), steps


DATA_TTA_PASSES = itertools.count(1)  # each augmented eval dataset draws a fresh, reproducible stream


def eval_dataset(files: Sequence[str], exp: Experiment, hw: Hardware, labelled: bool, augment: bool = False,
                 view: int | None = None, tta_pass: int | None = None) -> tf.data.Dataset:
    """A finite pass over ``files`` in a fixed order (files as given, records in file order; the rows of
    `read_records_meta`), in `eval_batch_size` batches: (inputs, label) if ``labelled`` else inputs.

    ``view`` (0..7) applies `kernels.augment.dihedral_view`; ``augment`` applies the host augmentation
    ops (no mixing) with draws seeded by ``tta_pass`` (None: the next pass number of this process).
    Images are float32, or uint8 in device mode without ``augment`` (the model's Input casts them).
    On several replicas, under JAX or with XLA the last batch is zero-padded to the full batch (`eval_full_batches`)
    and labelled elements carry a third item, the sample weight (0 on padding): drop predictions past the
    count (`eval_rows`).
    """
    batch = eval_batch_size(exp, hw)
    ds = data_examples(list(files), [0] * len(files), exp, labelled=labelled, training=False)
    ds = data_decoded(ds, data_decoder(files, exp), exp, deterministic=True).batch(batch)
    # the batch count from the file names: Keras sizes its progress bar and does not warn at the end;
    # a file holding fewer or more records than its name says fails loudly here
    ds = ds.apply(tf.data.experimental.assert_cardinality(math.ceil(count_examples(files) / batch)))
    host = host_augment_fn(exp, mix=False) if augment and exp.augment.ops else None
    stream = next(DATA_TTA_PASSES) if tta_pass is None else tta_pass
    as_uint8 = hw.augment_on_device and host is None

    def finish(index: Any, example: Any) -> Any:
        inputs, label = example if labelled else (example, None)
        if host is not None:  # the last, short batch is padded to full size: one XLA compile per size
            seed = tf.stack([tf.cast(exp.seed + DATA_EVAL_SEED_STREAM * stream, tf.int64), index])
            n = tf.shape(inputs["image"] if isinstance(inputs, dict) else inputs)[0]
            full, _, _ = data_pad(inputs, None, batch)
            full, _ = host(full, tf.zeros([batch, 1]), seed=seed)
            inputs = tf.nest.map_structure(lambda v: v[:n], full)
        elif not as_uint8:
            inputs = data_map_image(inputs, lambda x: tf.cast(x, tf.float32))
        if view is not None:
            inputs = data_map_image(inputs, lambda x: dihedral_view(x, view))
        if eval_full_batches(hw):  # one batch shape: one compiled/traced step per run
            inputs, label, weight = data_pad(inputs, label, batch)
            return (inputs, label, weight) if labelled else inputs
        return (inputs, label) if labelled else inputs

    ds = ds.enumerate().map(finish, num_parallel_calls=data_batch_calls(exp), deterministic=True)
    return ds.prefetch(DATA_PREFETCH).with_options(data_options(deterministic=True))


def eval_full_batches(hw: Hardware) -> bool:
    """Whether evaluation pads its last batch to the full batch, so every validation and test pass of the run
    has one batch shape: under JAX (the TPU route) each new shape is a new XLA compile of the predict/test step
    (minutes for a large EfficientNet on a TPU), and under MirroredStrategy a new per-replica shape retraces
    the step once per replica (about 45 s per replica for B6, before TensorFlow generalises the shape), and
    with XLA on one GPU (``jit_compile``) each shape is a compile too. One device under TensorFlow without XLA
    (the CPU route) takes any batch size without padding."""
    return hw.backend == "jax" or hw.replicas > 1 or hw.jit_compile


def eval_rows(n_examples: int, exp: Experiment, hw: Hardware) -> int:
    """Rows one `eval_dataset` pass over ``n_examples`` records yields: full batches, the last one padded to
    the full batch on several replicas, under JAX or with XLA (`eval_full_batches`), else not padded."""
    batch = eval_batch_size(exp, hw)
    rest = n_examples % batch
    return n_examples + (batch - rest if rest and eval_full_batches(hw) else 0)


def eval_labels(meta: pd.DataFrame, head: str) -> np.ndarray:
    """float32 labels of `read_records_meta` rows (2020 records), as `data_labels` makes them in the pipeline."""
    target = meta["target"].to_numpy(np.int64)
    if head != "diagnosis":
        return target.astype(np.float32)[:, None]
    classes = [diagnosis_class(str(name), "validation records") for name in meta["diagnosis"]]
    return np.asarray(data_labels(target, np.asarray(classes, np.int64), head), np.float32)


def read_records_meta(files: Sequence[str], labelled: bool) -> pd.DataFrame:
    """The records of ``files`` in `eval_dataset`'s order, without images: image_name, patient_id,
    sex and anatom_site_general_challenge as names, age_approx (NaN when missing) and, if
    ``labelled``, diagnosis (name) and target."""
    spec = {k: v for k, v in feature_spec(labelled).items() if k != "image"}
    ds = tf.data.TFRecordDataset(list(files), buffer_size=DATA_READ_BUFFER).batch(DATA_META_BATCH)
    ds = ds.map(lambda r: tf.io.parse_example(r, spec)).with_options(data_options(deterministic=True))
    columns: dict[str, list[np.ndarray]] = {k: [] for k in spec}
    for chunk in ds:
        for key in spec:
            columns[key].append(chunk[key].numpy())
    data = {k: np.concatenate(v) if v else np.zeros(0) for k, v in columns.items()}

    def names(codes: np.ndarray, table: Sequence[str], fallback: str) -> list[str]:
        return [table[c] if 0 <= c < len(table) else fallback for c in codes.astype(np.int64)]

    frame = pd.DataFrame({
        "image_name": [b.decode("utf-8") for b in data["image_name"]],
        "patient_id": data["patient_id"].astype(np.int64),
        "sex": names(data["sex"], SEXES, "missing"),
        "age_approx": np.where(data["age_approx"] < 0, math.nan, data["age_approx"]).astype(float),
        "anatom_site_general_challenge": names(data["anatom_site_general_challenge"], SITES, "missing"),
    })
    if labelled:
        frame["diagnosis"] = names(data["diagnosis"], DIAGNOSES, DIAGNOSES[0])
        frame["target"] = data["target"].astype(np.int64)
    return frame
