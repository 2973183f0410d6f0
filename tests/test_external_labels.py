"""The 9-class diagnosis target and the external data's labels and metadata.

The head's classes are the ISIC 2019 taxonomy (`kernels.schema.DIAGNOSIS_CLASSES`): 2020 diagnoses through the
1st place's table, external labels from the external dataset's own CSV joined by image name inside the kernel
(never its undocumented integer codes); a label the head cannot map stops the run with one line. External rows'
metadata: each image its own patient unless the CSV names one, 2019 site names mapped to the 2020 codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kernels.config import ConfigError, from_dict, to_dict
from kernels.contracts import HISTORY_FILE
from kernels.data import (
    data_classes,
    data_labels,
    discover_files,
    external_rows,
    missing_metadata_vector,
    read_external_rows,
    train_dataset,
)
from kernels.main import kernel_main
from kernels.schema import (
    DIAGNOSES,
    DIAGNOSIS_CLASSES,
    ISIC2019_DIAGNOSES,
    MELANOMA_INDEX,
    SITES,
    code_classes,
    external_code_map,
    site_2020,
)
from kernels.strategy import detect_hardware
from kit.data.synth import SynthSpec, external_labels_frame, write_external_labels, write_synth

BKL = DIAGNOSIS_CLASSES.index("BKL")
NEVUS = DIAGNOSIS_CLASSES.index("nevus")
MAIN = SynthSpec(n_train=96, n_test=16, size=32, shards=3, seed=5, malignant_rate=0.2)
EXTERNAL = SynthSpec(n_train=72, n_test=2, size=32, shards=2, test_shards=1, seed=6, malignant_rate=0.2)


def test_2020_diagnoses_map_into_the_2019_classes() -> None:
    classes = dict(zip(DIAGNOSES, (DIAGNOSIS_CLASSES[k] for k in code_classes()), strict=True))
    assert classes == {
        "unknown": "unknown", "nevus": "nevus", "melanoma": "melanoma", "seborrheic keratosis": "BKL",
        "lentigo NOS": "BKL", "lichenoid keratosis": "BKL", "solar lentigo": "BKL",
        "cafe-au-lait macule": "unknown", "atypical melanocytic proliferation": "unknown",
    }
    assert len(DIAGNOSIS_CLASSES) == 9 and DIAGNOSIS_CLASSES[MELANOMA_INDEX] == "melanoma"
    isic2019 = [DIAGNOSIS_CLASSES[k] for k in external_code_map(ISIC2019_DIAGNOSES, "x")]
    assert isic2019 == ["melanoma", "nevus", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "unknown"]  # none masked
    assert external_code_map((), "cdeotte/melanoma-384x384") == code_classes()  # a 2020 re-pack: 2020 codes
    assert external_code_map((), "cdeotte/isic2019-384x384") == []  # undocumented: labels come from its CSV
    assert [site_2020(s) for s in ("anterior torso", "Posterior torso", "lateral torso", "palms/soles", "", "x")] == \
        ["torso", "torso", "torso", "palms/soles", "missing", "missing"]


def test_labels_follow_the_table_and_the_target() -> None:
    target = np.array([0, 0, 1, 0, 0])
    code = np.array([DIAGNOSES.index("solar lentigo"), 1, 3, 1, 3])
    groups = np.array([0, 1, 1, 1, 0])
    csv_class = np.array([0, DIAGNOSIS_CLASSES.index("DF"), DIAGNOSIS_CLASSES.index("melanoma"), NEVUS, 0])
    classes = np.asarray(data_classes(code, groups, external_code_map(ISIC2019_DIAGNOSES, "x"), csv_class))
    labels = np.asarray(data_labels(target, classes, "diagnosis"))
    assert labels.shape == (5, 9) and (labels.sum(axis=1) == 1).all()  # every row trains all of its label
    assert [DIAGNOSIS_CLASSES[k] for k in labels.argmax(1)] == ["BKL", "DF", "melanoma", "nevus", "BKL"]
    by_code = np.asarray(data_classes(code, groups, external_code_map(ISIC2019_DIAGNOSES, "x")))
    assert DIAGNOSIS_CLASSES[by_code[1]] == "nevus" and DIAGNOSIS_CLASSES[by_code[3]] == "nevus"  # code 1 = NV there
    benign_mel = np.asarray(data_labels([0], [MELANOMA_INDEX], "diagnosis"))
    assert benign_mel.argmax() == 0  # a benign "melanoma" is unknown, never melanoma
    assert np.asarray(data_labels(target, classes, "sigmoid"))[:, 0].tolist() == target.tolist()


def test_external_csv_rows(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    pd.DataFrame({"image_name": ["a", "b", "c", "d"], "patient_id": ["", "P1", "P1", "-1"],
                  "sex": ["male", "", "female", "FEMALE"], "age_approx": ["45", "", "30", "nan"],
                  "anatom_site_general": ["anterior torso", "lateral torso", "head/neck", ""],
                  "diagnosis": ["MEL", "BCC", "seborrheic keratosis", "VASC"]}).to_csv(path, index=False)
    rows = read_external_rows(str(path), "diagnosis")
    assert [DIAGNOSIS_CLASSES[k] for k in rows.classes] == ["melanoma", "BCC", "BKL", "VASC"]
    assert rows.n_images.tolist() == [1, 2, 2, 1]  # blank / -1: the image is its own patient
    assert [SITES[k] for k in rows.site] == ["torso", "torso", "head/neck", "missing"]
    assert rows.sex.tolist() == [0, 2, 1, 1] and rows.age.tolist() == [45, -1, 30, -1]
    onehot = tmp_path / "ISIC_2019_Training_GroundTruth.csv"
    frame = pd.DataFrame(np.eye(9)[[1, 4]], columns=list(ISIC2019_DIAGNOSES))
    frame.insert(0, "image", ["x", "y"])
    frame.to_csv(onehot, index=False)
    assert [DIAGNOSIS_CLASSES[k] for k in read_external_rows(str(onehot), "diagnosis").classes] == ["nevus", "BKL"]
    pd.DataFrame({"image_name": ["a", "b"], "diagnosis": ["NV", "pigmented wart"]}).to_csv(path, index=False)
    with pytest.raises(ConfigError, match=r"train.csv: row 3: diagnosis 'pigmented wart' has no class.*stops"):
        read_external_rows(str(path), "diagnosis")
    assert read_external_rows(str(path), "sigmoid").classes.tolist() == [NEVUS, -1]  # the binary head needs none


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("external")
    write_synth(root / "main", MAIN)
    write_synth(root / "external", EXTERNAL)
    write_external_labels(root / "external" / "isic2019.csv", EXTERNAL)
    return root / "main", root / "external"


@pytest.fixture
def located(data: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The kernel pointed at the synthetic main and external data, writing into tmp_path; the external folder."""
    main, external = data
    monkeypatch.setenv("KIT_DATA_DIR", str(main))
    monkeypatch.setenv("KIT_EXTERNAL_DIR", str(external))
    monkeypatch.setenv("KIT_OUTPUT_DIR", str(tmp_path))
    return external


def config(**data: object) -> dict:
    return to_dict(from_dict({
        "name": "nine", "seed": 1,
        "data": {"dataset": "synthetic", "external": "synthetic-2019", "image_size": 32, "folds": 3,
                 "shuffle_buffer": 32, "metadata": True, "metadata_file_size": True,
                 "external_labels": "isic2019.csv", **data},
        "augment": {"ops": []},
        "model": {"backbone": "scratch", "weights": "none", "head": "diagnosis",
                  "scratch": {"stages": 2, "width": 8}},
        "train": {"epochs": 2, "batch_size": 16, "lr": 2e-3, "verbose": 0, "tta_dihedral": False,
                  "schedule": "cosine", "warmup_epochs": 1.0, "warmup_start": 0.1},
    }))


def test_the_pipeline_reads_external_labels_and_metadata_from_the_csv(located: Path) -> None:
    exp = from_dict(config(upsample_malignant=1, cache=True, shuffle_buffer=1, parallel_calls=1))
    files = discover_files(exp)
    rows = external_rows(exp, files)
    ds, _ = train_dataset([], exp, detect_hardware(exp), external=files.external, rows=rows)
    seen = {}
    csv = external_labels_frame(EXTERNAL).set_index("image_name")
    for (inputs, label) in ds.unbatch().take(EXTERNAL.n_train):
        meta = inputs["meta"].numpy()
        seen[(int(np.argmax(label)), round(float(meta[-2]), 5))] = meta
    classes = {DIAGNOSIS_CLASSES[k] for k, _ in seen}
    assert classes == {"melanoma", "nevus", "BCC", "AK", "BKL", "DF", "VASC", "SCC"}  # from the CSV, not the codes
    named = csv["patient_id"].fillna("")
    sizes = named.map(named[named != ""].value_counts()).fillna(1)
    expected_counts = {round(float(np.log(n) / 5.0), 5) for n in sizes}
    assert {c for _, c in seen} <= expected_counts | {0.0}  # own patient (log 1 = 0) or the CSV's patient size
    assert all(0.3 < m[-1] < 1.0 for m in seen.values())  # log(JPEG bytes) / 16
    assert all(missing_metadata_vector(exp).shape == m.shape for m in seen.values())


def test_a_9_class_run_trains_every_class_and_checkpoints_on_the_exact_auc(located: Path, tmp_path: Path) -> None:
    cfg = config(run_folds=[0])
    cfg["train"]["keep"] = "best"  # the checkpoint itself, not the default weight average of the last epochs
    manifest = kernel_main(cfg)
    fold = manifest["folds"][0]
    assert set(fold["train_classes"]) == set(DIAGNOSIS_CLASSES) and min(fold["train_classes"].values()) > 0
    history = json.loads((tmp_path / HISTORY_FILE).read_text())["folds"][0]
    # the checkpoint's val_auc is exact: the best epoch's value is the AUC of the restored model's plain pass
    assert history["val_auc"][fold["best_epoch"] - 1] == pytest.approx(fold["auc_no_tta"], abs=1e-6)
    images = fold["images"]
    assert images["validation_passes"] == 2 and images["predicted"] == images["validation"] + MAIN.n_test


def test_undocumented_external_codes_without_a_csv_stop_the_diagnosis_head(located: Path, tmp_path: Path) -> None:
    external = located
    with pytest.raises(SystemExit, match=r"^error: synthetic-2019: its diagnosis codes are undocumented"):
        kernel_main(config(external_labels=""))
    short = external / "short.csv"
    external_labels_frame(EXTERNAL).iloc[1:].to_csv(short, index=False)
    with pytest.raises(SystemExit, match=r"^error: .*short.csv: no row for external image 'ISIC_\d+'"):
        kernel_main(config(external_labels=str(short)))
    assert list(tmp_path.iterdir()) == []  # stopped before anything was written
