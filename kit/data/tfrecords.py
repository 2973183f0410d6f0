"""The one TFRecord writer: a table of image records -> a competition-format dataset folder.

In:  two record frames (train, test) with one row per image and the columns of `RECORD_COLUMNS` (category
     values as names from `kernels.schema`, age as an int with `MISSING_AGE` for missing, a `shard` index),
     a function that returns one row's JPEG bytes, and a seed (for the Public/Private split of solution.csv).
Out: a folder laid out like the competition's input (see ../shared/notes/competition.md):
       train00-<count>.tfrec ...   one tf.train.Example per image, schema of `kernels.schema.feature_spec`
       test00-<count>.tfrec ...    the same without diagnosis and target
       train.csv, test.csv         `schema.TRAIN_CSV_COLUMNS` / `TEST_CSV_COLUMNS`, category names as text and
                                   missing sex/site/age as empty cells, as Kaggle's own CSVs have them
       sample_submission.csv       image_name,target (target 0)
       solution.csv                image_name,target,Usage (Public ~30 % / Private ~70 %, stratified): the
                                   hidden answers, for offline scoring only
     The folder is built in a temporary folder beside OUT and renamed into place at the end, so OUT is either
     complete or untouched. In the TFRecords, patient_id is the index of the patient in the sorted list of
     all patient ids (train and test together), like the competition's re-packs.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kernels import schema
from kernels.contracts import write_csv
from kit.errors import KitError

JPEG_QUALITY = 95
PUBLIC_SHARE = 0.3  # Kaggle scored 30 % of the test set on the public leaderboard
TRAIN_PREFIX = "train"
TEST_PREFIX = "test"
TRAIN_CSV = "train.csv"
TEST_CSV = "test.csv"
SAMPLE_SUBMISSION_CSV = "sample_submission.csv"
SOLUTION_CSV = "solution.csv"
SOLUTION_COLUMNS = ("image_name", "target", "Usage")
RECORD_COLUMNS = (
    "image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis", "target", "shard",
)
MISSING = "missing"
FOLDER_MODE = 0o755

ImageSource = Callable[[pd.Series], bytes]


@dataclass(frozen=True)
class DatasetSummary:
    """What was written: the folder, its files and the per-shard balance of each split."""

    out: Path
    files: tuple[str, ...]
    train: pd.DataFrame  # shards.bin_balance of the train records
    test: pd.DataFrame


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of an (H, W, 3) uint8 array (Pillow; deterministic for the same pixels)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def patient_codes(*frames: pd.DataFrame) -> dict[str, int]:
    """Patient id -> int64 code: its index in the sorted ids of all frames together."""
    ids = sorted(set().union(*(set(f["patient_id"]) for f in frames)))
    return {p: i for i, p in enumerate(ids)}


def example_bytes(row: pd.Series, jpeg: bytes, patient_code: int, labelled: bool) -> bytes:
    """One serialized tf.train.Example in the competition schema (train if `labelled`, else test)."""
    import tensorflow as tf

    ints = {
        "patient_id": patient_code,
        "sex": schema.SEXES.index(row["sex"]),
        "age_approx": int(row["age_approx"]),
        "anatom_site_general_challenge": schema.SITES.index(row["anatom_site_general_challenge"]),
        "diagnosis": schema.DIAGNOSES.index(row["diagnosis"]),
        "target": int(row["target"]),
    }
    keys = schema.TRAIN_INT_FEATURES if labelled else schema.TEST_INT_FEATURES
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
        "image_name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[row["image_name"].encode()])),
    }
    for key in keys:
        feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[ints[key]]))
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


def write_shards(
    folder: Path,
    prefix: str,
    records: pd.DataFrame,
    image_source: ImageSource,
    codes: dict[str, int],
    labelled: bool,
    on_image: Callable[[], None] = lambda: None,
) -> list[str]:
    """Write `records` (shards 0..K-1, each non-empty) as `<prefix>NN-<count>.tfrec`; return the file names."""
    import tensorflow as tf

    shards = sorted(int(s) for s in records["shard"].unique())
    if shards != list(range(len(shards))):
        raise ValueError(f"write_shards: {prefix} shards must be 0..K-1 with none empty, got {shards}")
    names = []
    for shard, part in records.sort_values("image_name").groupby("shard", sort=True):
        name = schema.shard_name(prefix, int(shard), len(part))
        with tf.io.TFRecordWriter(str(folder / name)) as writer:
            for _, row in part.iterrows():
                writer.write(example_bytes(row, image_source(row), codes[row["patient_id"]], labelled))
                on_image()
        names.append(name)
    return names


def _csv_frame(records: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    frame = records.sort_values("image_name").reset_index(drop=True)
    out = pd.DataFrame({
        "image_name": frame["image_name"],
        "patient_id": frame["patient_id"],
        "sex": frame["sex"].where(frame["sex"] != MISSING),
        "age_approx": frame["age_approx"].astype("Int64").where(frame["age_approx"] != schema.MISSING_AGE),
        "anatom_site_general_challenge": frame["anatom_site_general_challenge"].where(
            frame["anatom_site_general_challenge"] != MISSING
        ),
        "diagnosis": frame["diagnosis"],
        "benign_malignant": np.where(frame["target"] == 1, "malignant", "benign"),
        "target": frame["target"].astype(int),
    })
    return out[list(columns)]


def solution_frame(test: pd.DataFrame, seed: int) -> pd.DataFrame:
    """image_name,target,Usage: a stratified ~30 % Public / 70 % Private split of the test set."""
    frame = test.sort_values("image_name").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    usage = np.full(len(frame), "Private", dtype=object)
    for cls in (0, 1):
        idx = np.flatnonzero(frame["target"].to_numpy() == cls)
        n_public = int(round(PUBLIC_SHARE * idx.size))
        usage[rng.permutation(idx)[:n_public]] = "Public"
    return pd.DataFrame({"image_name": frame["image_name"], "target": frame["target"].astype(int), "Usage": usage})


@contextlib.contextmanager
def staging_folder(out: Path, force: bool) -> Iterator[Path]:
    """A temporary folder beside `out` that replaces `out` when the block succeeds and vanishes when it fails."""
    if out.exists() and not out.is_dir():
        raise KitError(f"{out}: exists and is not a folder (expected a new or empty folder)")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise KitError(f"{out}: folder is not empty (expected a new or empty folder; pass --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, FOLDER_MODE)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_dataset(
    out: Path,
    train: pd.DataFrame,
    test: pd.DataFrame,
    image_source: ImageSource,
    seed: int,
    force: bool = False,
    on_image: Callable[[], None] = lambda: None,
) -> DatasetSummary:
    """Write the whole competition-format folder (see the module docstring) atomically."""
    from kit.data.shards import bin_balance

    for label, frame in (("train", train), ("test", test)):
        missing = [c for c in RECORD_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"write_dataset: {label} records lack column(s) {', '.join(missing)}")
    codes = patient_codes(train, test)
    with staging_folder(out, force) as tmp:
        files = write_shards(tmp, TRAIN_PREFIX, train, image_source, codes, True, on_image)
        files += write_shards(tmp, TEST_PREFIX, test, image_source, codes, False, on_image)
        write_csv(_csv_frame(train, schema.TRAIN_CSV_COLUMNS), tmp / TRAIN_CSV)
        write_csv(_csv_frame(test, schema.TEST_CSV_COLUMNS), tmp / TEST_CSV)
        submission = pd.DataFrame({"image_name": sorted(test["image_name"]), "target": 0})
        write_csv(submission, tmp / SAMPLE_SUBMISSION_CSV)
        write_csv(solution_frame(test, seed), tmp / SOLUTION_CSV)
        files += [TRAIN_CSV, TEST_CSV, SAMPLE_SUBMISSION_CSV, SOLUTION_CSV]
    return DatasetSummary(out, tuple(files), bin_balance(train), bin_balance(test))
