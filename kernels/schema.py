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
# The diagnosis head's 9 classes: the ISIC 2019 taxonomy (MEL, NV, BCC, AK, BKL, DF, VASC, SCC) with 2020's
# "unknown" (benign, unspecified) in place of 2019's UNK. This is the 1st place's 9-class target (their
# dataset.py: 2020 diagnoses renamed into the 2019 classes, 2019 MEL/NV renamed melanoma/nevus, the classes
# sorted; Ha, Liu & Liu 2020, arXiv:2010.05351). The order here keeps 2020's first three codes (unknown,
# nevus, melanoma) in place, so MELANOMA_INDEX is the melanoma column of the head AND the 2020 code.
DIAGNOSIS_CLASSES = ("unknown", "nevus", "melanoma", "BKL", "BCC", "AK", "SCC", "DF", "VASC")
MELANOMA_INDEX = DIAGNOSIS_CLASSES.index("melanoma")
assert MELANOMA_INDEX == DIAGNOSES.index("melanoma")
# Every diagnosis name a label source may hold -> its head class. Sources: the 2020 train.csv names (the 1st
# place's table: seborrheic keratosis, lichenoid keratosis, solar lentigo and lentigo NOS are benign keratosis-
# like lesions, BKL, as HAM10000 / ISIC 2019 define BKL; cafe-au-lait macule and atypical melanocytic
# proliferation -> unknown), the ISIC 2019 ground-truth abbreviations (as Chris Deotte's isic2019 train.csv and
# ISIC_2019_Training_GroundTruth.csv spell them; UNK -> unknown), and the 2019 long names.
DIAGNOSIS_TO_CLASS: dict[str, str] = {
    # ISIC 2020 (train.csv "diagnosis")
    "unknown": "unknown", "nevus": "nevus", "melanoma": "melanoma",
    "seborrheic keratosis": "BKL", "lentigo NOS": "BKL", "lichenoid keratosis": "BKL", "solar lentigo": "BKL",
    "cafe-au-lait macule": "unknown", "atypical melanocytic proliferation": "unknown",
    # ISIC 2019 ground truth (and the HAM10000 / 2018 codes, lower case)
    "MEL": "melanoma", "NV": "nevus", "BCC": "BCC", "AK": "AK", "BKL": "BKL", "DF": "DF", "VASC": "VASC",
    "SCC": "SCC", "UNK": "unknown",
    "mel": "melanoma", "nv": "nevus", "bcc": "BCC", "akiec": "AK", "bkl": "BKL", "df": "DF", "vasc": "VASC",
    # ISIC 2019 long names
    "melanocytic nevus": "nevus", "basal cell carcinoma": "BCC", "actinic keratosis": "AK",
    "benign keratosis": "BKL", "dermatofibroma": "DF", "vascular lesion": "VASC", "squamous cell carcinoma": "SCC",
}
ISIC2019_DIAGNOSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")  # the 2019 ground-truth columns
# Anatomical sites: 2019 (and the ISIC archive) split the torso; the 2020 challenge column does not.
SITE_TO_2020: dict[str, str] = {
    **{name: name for name in ("head/neck", "upper extremity", "lower extremity", "torso", "palms/soles",
                               "oral/genital", "missing")},
    "anterior torso": "torso", "posterior torso": "torso", "lateral torso": "torso",
}
# External data: a record's integer diagnosis code is an index into THAT dataset's own list. Datasets whose
# codes are known, by slug prefix: the 2020 re-packs use the 2020 list. The isic2019-NxN re-packs do not
# document theirs: their labels come from the dataset's own CSV (data.external_labels, joined by image name).
KNOWN_EXTERNAL_CODES: dict[str, tuple[str, ...]] = {"cdeotte/melanoma-": DIAGNOSES, "cdeotte/malignant-v2-": DIAGNOSES}
MISSING_AGE = -1

TRAIN_INT_FEATURES = ("patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis", "target")
TEST_INT_FEATURES = ("patient_id", "sex", "age_approx", "anatom_site_general_challenge")
TRAIN_CSV_COLUMNS = (
    "image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge",
    "diagnosis", "benign_malignant", "target",
)
TEST_CSV_COLUMNS = ("image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge")
TFREC_COUNT_RE = re.compile(r"-(\d+)\.tfrec$")


def diagnosis_class(name: str, where: str) -> int:
    """The head class index of a diagnosis name (`DIAGNOSIS_TO_CLASS`); ValueError naming ``where`` otherwise."""
    if name not in DIAGNOSIS_TO_CLASS:
        raise ValueError(f"{where}: diagnosis {name!r} has no class of the 9-class head "
                         f"(expected one of {', '.join(DIAGNOSIS_TO_CLASS)})")
    return DIAGNOSIS_CLASSES.index(DIAGNOSIS_TO_CLASS[name])


def code_classes(names: tuple[str, ...] | list[str] = DIAGNOSES, where: str = "diagnosis codes") -> list[int]:
    """Head class per integer code of a record list whose code k means ``names[k]`` (default: the 2020 list)."""
    return [diagnosis_class(name, where) for name in names]


def external_code_map(names: tuple[str, ...] | list[str], dataset: str) -> list[int]:
    """Head class per external diagnosis code, or [] when the codes are unknown (then the labels must come
    from the dataset's CSV, ``data.external_labels``). ``names``: ``data.external_diagnoses`` (the codes' names
    in code order); empty = the known list of ``dataset`` (`KNOWN_EXTERNAL_CODES`)."""
    if not names:
        names = next((known for prefix, known in KNOWN_EXTERNAL_CODES.items() if dataset.startswith(prefix)), ())
    return code_classes(names, "data.external_diagnoses") if names else []


def site_2020(name: str) -> str:
    """A site name (2020, or 2019's anterior/posterior/lateral torso) as the 2020 site; unknown -> "missing"."""
    return SITE_TO_2020.get(name.strip().lower() if isinstance(name, str) else "", "missing")


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
