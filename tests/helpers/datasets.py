"""Dataset-test helpers: the CLI in this process, TFRecords read back with the competition schema, and the
checks every written dataset folder must pass (used by tests/test_data_synth.py and tests/test_data_import.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from kernels import schema
from kit import cli


def kit(*argv: object) -> int:
    return cli.main([str(a) for a in argv])


def read_records(folder: Path, prefix: str) -> pd.DataFrame:
    """Every record of `<prefix>*.tfrec` parsed with the schema's feature spec, plus its file and decoded shape."""
    labelled = prefix == "train"
    spec = schema.feature_spec(labelled)
    rows = []
    for path in sorted(folder.glob(f"{prefix}*.tfrec")):
        n = 0
        for raw in tf.data.TFRecordDataset(str(path)):
            ex = tf.io.parse_single_example(raw, spec)
            image = tf.io.decode_jpeg(ex["image"], channels=0)
            row = {k: int(v) for k, v in ex.items() if k not in ("image", "image_name")}
            row.update(image_name=ex["image_name"].numpy().decode(), file=path.name, shape=tuple(image.shape),
                       pixels=image.numpy())
            rows.append(row)
            n += 1
        assert n == schema.count_from_name(path.name), f"{path.name}: name says {schema.count_from_name(path.name)}"
    return pd.DataFrame(rows)


def check_dataset(folder: Path, size: int, n_train_shards: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The checks both converters must pass; returns the train and test records."""
    train, test = read_records(folder, "train"), read_records(folder, "test")
    for prefix, records in (("train", train), ("test", test)):
        files = sorted(p.name for p in folder.glob(f"{prefix}*.tfrec"))
        assert files == [schema.shard_name(prefix, i, int((records["file"] == f).sum())) for i, f in enumerate(files)]
    assert train["file"].nunique() == n_train_shards
    assert set(train["shape"]) == {(size, size, 3)} and set(test["shape"]) == {(size, size, 3)}
    assert "target" not in test and "diagnosis" not in test

    train_csv = pd.read_csv(folder / "train.csv", dtype={"patient_id": str})
    test_csv = pd.read_csv(folder / "test.csv", dtype={"patient_id": str})
    sub = pd.read_csv(folder / "sample_submission.csv")
    solution = pd.read_csv(folder / "solution.csv")
    assert tuple(train_csv.columns) == schema.TRAIN_CSV_COLUMNS
    assert tuple(test_csv.columns) == schema.TEST_CSV_COLUMNS
    assert list(sub.columns) == ["image_name", "target"] and (sub["target"] == 0).all()
    assert list(solution.columns) == ["image_name", "target", "Usage"]
    assert set(solution["Usage"]) == {"Public", "Private"}
    assert abs((solution["Usage"] == "Public").mean() - 0.3) < 0.08
    for frame in (test_csv, sub, solution):
        assert sorted(frame["image_name"]) == sorted(test["image_name"])
    assert sorted(train_csv["image_name"]) == sorted(train["image_name"])
    assert not set(train["image_name"]) & set(test["image_name"])

    # CSV text values agree with the TFRecord codes, image by image
    merged = train.merge(train_csv, on="image_name", suffixes=("", "_csv"))
    assert len(merged) == len(train)
    assert (merged["target"] == merged["target_csv"]).all()
    assert (merged["benign_malignant"] == np.where(merged["target"] == 1, "malignant", "benign")).all()
    assert (merged["diagnosis_csv"] == [schema.DIAGNOSES[c] for c in merged["diagnosis"]]).all()
    assert ((merged["diagnosis_csv"] == "melanoma") == (merged["target"] == 1)).all()
    assert (merged["sex_csv"].fillna("missing") == [schema.SEXES[c] for c in merged["sex"]]).all()
    site = [schema.SITES[c] for c in merged["anatom_site_general_challenge"]]
    assert (merged["anatom_site_general_challenge_csv"].fillna("missing") == site).all()
    assert (merged["age_approx_csv"].fillna(schema.MISSING_AGE) == merged["age_approx"]).all()
    # patient codes: one code per patient id, the same code never names two patients (train and test together)
    test_merged = test.merge(test_csv, on="image_name", suffixes=("", "_csv"))
    pairs = pd.concat([merged[["patient_id", "patient_id_csv"]], test_merged[["patient_id", "patient_id_csv"]]])
    assert pairs.groupby("patient_id")["patient_id_csv"].nunique().max() == 1
    assert pairs.groupby("patient_id_csv")["patient_id"].nunique().max() == 1
    solved = test_merged.merge(solution, on="image_name")
    assert set(solved["target"]) == {0, 1}

    # patients isolated: one file per patient, never in both train and test
    assert train.groupby("patient_id")["file"].nunique().max() == 1
    assert test.groupby("patient_id")["file"].nunique().max() == 1
    assert not set(train["patient_id"]) & set(test["patient_id"])
    return train, test
