"""External data labels: each external dataset's diagnosis codes are read through its own documented list
(`kernels.schema.external_code_map`), never as 2020 codes; where the codes are unknown (or have no 2020
class) the row trains the binary target only and the diagnosis part of the loss is masked."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from kernels.config import from_dict
from kernels.data import data_labels
from kernels.schema import DIAGNOSES, ISIC2019_DIAGNOSES, MELANOMA_INDEX, external_code_map
from kernels.train import make_loss

NEVUS = DIAGNOSES.index("nevus")


def test_code_maps_per_dataset() -> None:
    assert external_code_map((), "cdeotte/melanoma-384x384") == list(range(len(DIAGNOSES)))  # 2020 re-packs
    assert external_code_map((), "cdeotte/isic2019-384x384") == []  # undocumented codes: all masked
    mapped = dict(zip(ISIC2019_DIAGNOSES, external_code_map(ISIC2019_DIAGNOSES, "cdeotte/isic2019-384x384"),
                      strict=True))
    assert mapped["MEL"] == MELANOMA_INDEX and mapped["NV"] == NEVUS
    assert all(mapped[c] == -1 for c in ("AK", "BCC", "SCC", "DF", "VASC", "BKL", "UNK"))
    with pytest.raises(ValueError, match="'XYZ' is not a known diagnosis"):
        external_code_map(("XYZ",), "x")


def test_external_rows_never_read_as_2020_codes() -> None:
    target = np.array([0, 0, 1, 0, 0])
    code = np.array([1, 1, 3, 1, 3])  # 1 = nevus in 2020's list, BCC... in another's
    groups = np.array([0, 1, 1, 1, 1])  # row 0 is the competition's own data
    unknown = np.asarray(data_labels(target, code, "diagnosis", groups, external_map=[]))
    assert unknown[0].argmax() == NEVUS and unknown[0].sum() == 1.0  # 2020 rows read as 2020 codes
    assert unknown[1].sum() == 0.0 and unknown[3].sum() == 0.0  # masked: not "nevus"
    assert unknown[2].argmax() == MELANOMA_INDEX  # malignant: melanoma, known from the target
    isic2019 = external_code_map(ISIC2019_DIAGNOSES, "x")  # codes 0 MEL, 1 NV, 2 BCC, 3 AK ...
    known = np.asarray(data_labels(target, code, "diagnosis", groups, external_map=isic2019))
    assert known[1].argmax() == NEVUS and known[1].sum() == 1.0  # NV -> nevus
    assert known[4].sum() == 0.0  # AK has no 2020 class: masked
    sigmoid = np.asarray(data_labels(target, code, "sigmoid", groups, external_map=[]))
    assert sigmoid[:, 0].tolist() == target.tolist()  # the binary head is unaffected


@pytest.mark.parametrize("name", ["bce", "focal"])
def test_diagnosis_loss_is_masked_for_unknown_rows(name: str) -> None:
    loss = make_loss(from_dict({"name": "t", "model": {"head": "diagnosis"},
                                "train": {"loss": name, "label_smoothing": 0.05}}))
    masked = np.zeros((1, len(DIAGNOSES)), "float32")
    a = np.full((1, len(DIAGNOSES)), 0.1, "float32")
    a[0, MELANOMA_INDEX] = 0.2
    b = np.roll(a, 3, axis=1)
    b[0, MELANOMA_INDEX], b[0, (MELANOMA_INDEX + 3) % len(DIAGNOSES)] = 0.2, 0.1
    la = float(keras.ops.convert_to_numpy(loss(masked, a)))
    lb = float(keras.ops.convert_to_numpy(loss(masked, b)))
    assert la == pytest.approx(lb, rel=1e-5)  # only P(melanoma) matters for a masked row
    assert la == pytest.approx(-math.log(1 - 0.2), rel=1e-4)
    nevus = np.eye(len(DIAGNOSES), dtype="float32")[[NEVUS]]
    assert float(keras.ops.convert_to_numpy(loss(nevus, a))) != pytest.approx(la)  # known rows: categorical
