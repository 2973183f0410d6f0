"""`kit data synth`: the competition-format folder it writes, read back with tf.data.

Real TensorFlow, real files, the real CLI (`kit.cli.main`); small sizes to stay fast.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.datasets import check_dataset, kit

from kernels import schema
from kernels.metrics import auc
from kit.data.shards import assign_shards, bin_balance, patient_table

N_TRAIN, N_TEST, SIZE, SHARDS, SEED = 160, 48, 32, 4, 7
SYNTH_ARGS = ["--train", N_TRAIN, "--test", N_TEST, "--size", SIZE, "--shards", SHARDS, "--seed", SEED]


def solution_targets(folder: Path) -> pd.Series:
    return pd.read_csv(folder / "solution.csv")["target"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    assert kit("data", "synth", out, *SYNTH_ARGS) == 0
    return out


def test_synth_reads_back_with_the_competition_schema(synth: Path) -> None:
    train, test = check_dataset(synth, SIZE, SHARDS)
    assert len(train) == N_TRAIN and len(test) == N_TEST
    assert train["target"].sum() == round(0.1 * N_TRAIN)  # default malignant rate
    assert solution_targets(synth).sum() == round(0.1 * N_TEST)


def test_synth_shards_are_stratified(synth: Path) -> None:
    train, _ = check_dataset(synth, SIZE, SHARDS)
    balance = bin_balance(train.rename(columns={"file": "shard"}))
    assert balance["malignant"].max() - balance["malignant"].min() <= 1
    assert balance["images"].max() - balance["images"].min() <= 0.15 * balance["images"].mean()
    per_patient = train.groupby("patient_id").size()
    assert per_patient.mean() > 2 and per_patient.max() > 4  # several images per patient


def test_synth_metadata_is_plausible(synth: Path) -> None:
    csv = pd.read_csv(synth / "train.csv")
    assert set(csv["sex"].dropna()) <= {"male", "female"} and csv["sex"].notna().mean() > 0.9
    assert csv["anatom_site_general_challenge"].value_counts().index[0] == "torso"
    ages = csv["age_approx"].dropna()
    assert (ages % 5 == 0).all() and 30 < ages.mean() < 70
    assert csv.groupby("patient_id")["sex"].nunique(dropna=False).max() == 1  # sex is per patient
    assert set(csv.loc[csv["target"] == 0, "diagnosis"]) <= set(schema.DIAGNOSES) - {"melanoma"}


def test_synth_plants_a_learnable_signal(synth: Path) -> None:
    """A blue-grey blotch on most malignant lesions: one colour statistic already ranks them well."""
    train, _ = check_dataset(synth, SIZE, SHARDS)
    blue_minus_red = [np.percentile(p[..., 2].astype(int) - p[..., 0].astype(int), 99) for p in train["pixels"]]
    assert auc(train["target"], blue_minus_red) > 0.85


def test_synth_is_deterministic_by_seed(synth: Path, tmp_path: Path) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    assert kit("data", "synth", again, *SYNTH_ARGS) == 0
    files = sorted(p.name for p in synth.iterdir())
    assert files == sorted(p.name for p in again.iterdir())
    for name in files:
        assert (synth / name).read_bytes() == (again / name).read_bytes(), name
    assert kit("data", "synth", other, *SYNTH_ARGS[:-1], SEED + 1) == 0
    assert (other / "train.csv").read_bytes() != (synth / "train.csv").read_bytes()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--train", "1"], "--train 1: expected at least 2 images"),
        (["--malignant-rate", "1.5"], "--malignant-rate 1.5: expected a number in (0, 1)"),
        (["--size", "8"], "--size 8: expected at least 16 pixels"),
        (["--train", "20", "--shards", "15"], "fewer than --shards 15"),
        (["--test", "3", "--test-shards", "4"], "--test-shards 4: only"),
        (["--seed", "-1"], "--seed -1: expected an integer >= 0"),
    ],
)
def test_synth_bad_arguments_fail_in_one_line(tmp_path: Path, capsys, args: list[str], expected: str) -> None:
    out = tmp_path / "parent" / "ds"
    assert kit("data", "synth", out, "--size", 32, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1
    assert not out.exists() and not out.parent.exists()


def test_synth_refuses_a_non_empty_folder_unless_forced(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    small = ["--train", 24, "--test", 8, "--size", 16, "--shards", 2]
    assert kit("data", "synth", out, *small) == 2
    assert "folder is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert kit("data", "synth", out, *small, "--force") == 0
    assert not (out / "keep.txt").exists() and (out / "solution.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no staging or backup folders left beside OUT


def test_shard_assignment_balances_a_competition_sized_population() -> None:
    """Triple stratification on 2,000 heavy-tailed patients (no images needed: the assignment is pure)."""
    rng = np.random.default_rng(0)
    sizes = np.clip(np.rint(rng.lognormal(2.4, 0.8, 2000)), 1, 115).astype(int)
    patients = np.repeat([f"IP_{i}" for i in range(sizes.size)], sizes)
    target = np.zeros(patients.size, dtype=int)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    target[starts[rng.choice(sizes.size, 400, replace=False)]] = 1
    shard = assign_shards(list(patients), list(target), 15, seed=1)
    frame = pd.DataFrame({"patient_id": patients, "target": target, "shard": shard})
    assert frame.groupby("patient_id")["shard"].nunique().max() == 1
    balance = bin_balance(frame)
    assert balance["malignant"].max() - balance["malignant"].min() <= 1
    assert balance["images"].max() - balance["images"].min() <= 0.01 * balance["images"].mean()
    table = patient_table(list(patients), list(target)).join(frame.groupby("patient_id")["shard"].first())
    spread = pd.crosstab(table["shard"], table["stratum"])
    assert (spread.max() - spread.min()).max() <= 1  # images-per-patient spread alike in every shard
    assert (assign_shards(list(patients), list(target), 15, seed=1) == shard).all()


def test_kit_entry_point_reports_errors_in_one_line(tmp_path: Path) -> None:
    """The installed command in a fresh process: exit 2 and a single `error:` line, nothing written."""
    out = tmp_path / "ds"
    proc = subprocess.run([sys.executable, "-m", "kit.cli", "data", "synth", str(out), "--test", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["error: --test 1: expected at least 2 images"]
    assert not out.exists()
