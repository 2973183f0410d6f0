"""The competition's TFRecord schema and category encodings (one place for reader and writers).

In:  nothing (constants and two small helpers).
Out: feature specs for `tf.io.parse_single_example` (built lazily so this module needs no
     TensorFlow import), the category lists that map int64 codes to names, and the
     `-COUNT.tfrec` naming rule.

Schema (see the competition notes): image (JPEG bytes), image_name (bytes), patient_id,
sex, age_approx, anatom_site_general_challenge (int64 everywhere), diagnosis and target
(int64, train only). Missing sex/site use the "missing" code; missing age is -1.
"""

from __future__ import annotations

import os
import re
from typing import Any

SEXES = ("male", "female", "missing")
SITES = (
    "head/neck",
    "upper extremity",
    "lower extremity",
    "torso",
    "palms/soles",
    "oral/genital",
    "missing",
)
DIAGNOSES = (
    "unknown",
    "nevus",
    "melanoma",
    "seborrheic keratosis",
    "lentigo NOS",
    "lichenoid keratosis",
    "solar lentigo",
    "cafe-au-lait macule",
    "atypical melanocytic proliferation",
)
MELANOMA_INDEX = DIAGNOSES.index("melanoma")
MISSING_AGE = -1

TRAIN_INT_FEATURES = ("patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis", "target")
TEST_INT_FEATURES = ("patient_id", "sex", "age_approx", "anatom_site_general_challenge")
TRAIN_CSV_COLUMNS = (
    "image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge",
    "diagnosis", "benign_malignant", "target",
)
TEST_CSV_COLUMNS = ("image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge")
TFREC_COUNT_RE = re.compile(r"-(\d+)\.tfrec$")


def feature_spec(labelled: bool) -> dict[str, Any]:
    """Feature spec for parsing one serialized Example (train if `labelled`, else test)."""
    import tensorflow as tf

    spec: dict[str, Any] = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "image_name": tf.io.FixedLenFeature([], tf.string),
    }
    for key in TRAIN_INT_FEATURES if labelled else TEST_INT_FEATURES:
        spec[key] = tf.io.FixedLenFeature([], tf.int64)
    return spec


def count_from_name(path: str) -> int:
    """Number of examples in a TFRecord file, read from its `-COUNT.tfrec` name."""
    match = TFREC_COUNT_RE.search(os.path.basename(path))
    if not match:
        raise ValueError(f"{path}: file name does not end in -COUNT.tfrec")
    return int(match.group(1))


def shard_name(prefix: str, index: int, count: int) -> str:
    """Competition naming: `train00-2071.tfrec` (two-digit index, example count)."""
    return f"{prefix}{index:02d}-{count}.tfrec"
