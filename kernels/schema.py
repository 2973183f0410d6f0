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
# External data: a diagnosis code is an index into THAT dataset's own list, never into DIAGNOSES unless the
# dataset is known to use the 2020 list. `EXTERNAL_TO_2020` maps every name an external list may hold to a
# 2020 class, or to None where 2020 has none (the ISIC 2019 classes AK, BCC, SCC, DF, VASC, BKL, UNK):
# such rows train the binary melanoma target only (the diagnosis part of the loss is masked for them).
ISIC2019_DIAGNOSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")  # the 2019 ground-truth columns
EXTERNAL_TO_2020: dict[str, str | None] = {
    **{name: name for name in DIAGNOSES},  # a 2020 name means the 2020 class ("unknown": benign, unspecified)
    "MEL": "melanoma", "NV": "nevus",
    "AK": None, "BCC": None, "SCC": None, "DF": None, "VASC": None,
    "BKL": None,  # benign keratosis: seborrheic keratosis, solar lentigo or lichenoid keratosis (not one 2020 class)
    "UNK": None,
}
# Datasets whose diagnosis codes are known, by slug prefix: the 2020 re-packs use the 2020 list. The
# isic2019-NxN re-packs do not document their integer codes: set data.external_diagnoses to use them.
KNOWN_EXTERNAL_CODES: dict[str, tuple[str, ...]] = {"cdeotte/melanoma-": DIAGNOSES}
MISSING_AGE = -1

TRAIN_INT_FEATURES = ("patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis", "target")
TEST_INT_FEATURES = ("patient_id", "sex", "age_approx", "anatom_site_general_challenge")
TRAIN_CSV_COLUMNS = (
    "image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge",
    "diagnosis", "benign_malignant", "target",
)
TEST_CSV_COLUMNS = ("image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge")
TFREC_COUNT_RE = re.compile(r"-(\d+)\.tfrec$")


def external_code_map(names: tuple[str, ...] | list[str], dataset: str) -> list[int]:
    """Index into `DIAGNOSES` per external diagnosis code (-1: no 2020 class, the diagnosis loss is masked).

    ``names``: the external dataset's diagnosis names in code order (``data.external_diagnoses``); empty =
    the known list for ``dataset`` (`KNOWN_EXTERNAL_CODES`), else every code is masked (an empty map)."""
    if not names:
        names = next((known for prefix, known in KNOWN_EXTERNAL_CODES.items() if dataset.startswith(prefix)), ())
    out = []
    for name in names:
        if name not in EXTERNAL_TO_2020:
            raise ValueError(f"data.external_diagnoses: {name!r} is not a known diagnosis name "
                             f"(expected one of {', '.join(EXTERNAL_TO_2020)})")
        mapped = EXTERNAL_TO_2020[name]
        out.append(DIAGNOSES.index(mapped) if mapped is not None else -1)
    return out


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
