"""Guards on the file contracts every stage checks (kernels/contracts.py): each broken OOF, test-prediction
or manifest file is refused with one line naming the file, the row (as an editor shows it: header = row 1)
and what was expected; a good one passes untouched. Real CSV and JSON files on disk."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from kernels.contracts import (
    MANIFEST_SCHEMA,
    ContractError,
    atomic_write_bytes,
    file_digest,
    incomplete_reason,
    planned_folds,
    read_json,
    read_manifest,
    read_oof,
    read_test_pred,
    validate_manifest,
    verify_files,
    write_csv,
)

OOF_HEADER = "image_name,target,pred,fold\n"
GOOD_OOF = OOF_HEADER + "ISIC_1,0,0.1,0\nISIC_2,1,0.9,1\nISIC_3,0,0.2,1\n"
GOOD_TEST = "image_name,target\nISIC_7,0.25\nISIC_8,0.75\n"


def _csv(tmp_path: Path, text: str, name: str = "oof.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _manifest(**changes: object) -> dict:
    manifest = {"schema": MANIFEST_SCHEMA, "experiment": "e", "config": {"data": {"folds": 2}}, "versions": {},
                "seed": 0, "hardware": {}, "folds": [{"fold": 0, "auc": 0.7, "best_epoch": 1},
                                                      {"fold": 1, "auc": 0.8, "best_epoch": 2}],
                "oof_auc": 0.75, "timings": {}, "files": {}}
    manifest.update(changes)
    return manifest


def test_good_files_pass_and_keep_their_values(tmp_path: Path) -> None:
    oof = read_oof(_csv(tmp_path, GOOD_OOF))
    assert list(oof["image_name"]) == ["ISIC_1", "ISIC_2", "ISIC_3"] and list(oof["fold"]) == [0, 1, 1]
    test = read_test_pred(_csv(tmp_path, GOOD_TEST, "test.csv"), expected_names=["ISIC_8", "ISIC_7"])
    assert list(test["target"]) == [0.25, 0.75]
    numeric_names = read_oof(_csv(tmp_path, OOF_HEADER + "0012,0,0.5,0\n", "num.csv"))
    assert list(numeric_names["image_name"]) == ["0012"]  # names stay text: leading zeros kept


@pytest.mark.parametrize(("text", "problem"), [
    ("image_name,target,pred\nISIC_1,0,0.1\n", "missing column(s) fold; expected image_name, target, pred, fold"),
    ("name,target\nISIC_1,0\n", "missing column(s) image_name, pred, fold; expected image_name, target, pred, fold"),
    (OOF_HEADER + "ISIC_1,0,0.1,0\n,1,0.9,0\n", "row 3: empty image_name"),
    (OOF_HEADER + "ISIC_1,0,0.1,0\nISIC_2,0,0.1,0\nISIC_1,1,0.9,1\n", "row 4: duplicate image_name 'ISIC_1'"),
    (OOF_HEADER + "ISIC_1,0,0.1,0\nISIC_2,1,nan,0\n", "row 3: pred is nan, expected a finite number"),
    (OOF_HEADER + "ISIC_1,0,inf,0\n", "row 2: pred is inf, expected a finite number"),
    (OOF_HEADER + "ISIC_1,0,0.1,0\nISIC_2,1,high,0\n", "row 3: pred is high, expected a finite number"),
    (OOF_HEADER + "ISIC_1,0,0.1,0\nISIC_2,,0.5,0\n", "row 3: target is nan, expected a finite number"),
    (OOF_HEADER + "ISIC_1,0,0.1,0\nISIC_2,2,0.5,0\n", "row 3: target is 2, expected 0 or 1"),
    (OOF_HEADER + "ISIC_1,0,0.1,0\nISIC_2,0.5,0.5,0\n", "row 3: target is 0.5, expected 0 or 1"),
    (OOF_HEADER + "ISIC_1,0,0.1,0\nISIC_2,1,0.5,-1\n", "row 3: fold is -1, expected an integer >= 0"),
    (OOF_HEADER + "ISIC_1,0,0.1,0\nISIC_2,1,0.5,1.5\n", "row 3: fold is 1.5, expected an integer >= 0"),
    (OOF_HEADER + "ISIC_1,0,0.1,0\nISIC_2,1,0.5,\n", "row 3: fold is nan, expected an integer >= 0"),
    (OOF_HEADER + "ISIC_1,0,0.1,0\nISIC_2,1,0.5,two\n", "row 3: fold is 'two', expected an integer >= 0"),
])
def test_a_broken_oof_file_is_one_line_naming_file_row_and_expectation(tmp_path: Path, text: str,
                                                                        problem: str) -> None:
    path = _csv(tmp_path, text)
    with pytest.raises(ContractError) as info:
        read_oof(path)
    assert str(info.value) == f"{path}: {problem}"


@pytest.mark.parametrize(("text", "expected", "problem"), [
    ("image_name\nISIC_7\n", None, "missing column(s) target; expected image_name, target"),
    ("image_name,target,fold\nISIC_7,0.5,0\n", None, "unexpected column(s) fold; expected image_name,target"),
    ("image_name,target,fold,x\nISIC_7,0.5,0,1\n", None, "unexpected column(s) fold, x; expected image_name,target"),
    ("image_name,target\nISIC_7,0.5\nISIC_7,0.6\n", None, "row 3: duplicate image_name 'ISIC_7'"),
    ("image_name,target\nISIC_7,0.5\nISIC_8,\n", None, "row 3: target is nan, expected a finite number"),
    (GOOD_TEST, ["ISIC_7", "ISIC_8", "ISIC_9", "ISIC_10"], "2 image name(s) missing, e.g. 'ISIC_10'"),
    (GOOD_TEST, ["ISIC_7"], "1 unexpected image name(s), e.g. 'ISIC_8'"),
])
def test_a_broken_test_prediction_is_one_line(tmp_path: Path, text: str, expected: list[str] | None,
                                              problem: str) -> None:
    path = _csv(tmp_path, text, "test_pred.csv")
    with pytest.raises(ContractError) as info:
        read_test_pred(path, expected_names=expected)
    assert str(info.value) == f"{path}: {problem}"


def test_unreadable_files_are_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(ContractError) as info:
        read_oof(missing)
    assert str(info.value) == f"{missing}: file not found"
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"image_name,target\n\"unterminated\n")
    with pytest.raises(ContractError) as info:
        read_test_pred(binary)
    message = str(info.value)
    assert message.startswith(f"{binary}: not a readable CSV (ParserError: ") and "\n" not in message
    ragged = _csv(tmp_path, "image_name,target\nISIC_7,0.5\nISIC_8,0.5,extra\n", "ragged.csv")
    with pytest.raises(ContractError) as info:
        read_test_pred(ragged)  # pandas' message ends in a newline: the line stays one line
    assert str(info.value) == (f"{ragged}: not a readable CSV (ParserError: Error tokenizing data. C error: "
                               "Expected 2 fields in line 3, saw 3 )")
    with pytest.raises(ContractError) as info:
        read_json(tmp_path / "none.json")
    assert str(info.value) == f"{tmp_path / 'none.json'}: file not found"
    partial = _csv(tmp_path, json.dumps({"schema": MANIFEST_SCHEMA}), "partial.json")
    with pytest.raises(ContractError, match=rf"^{partial}: missing key\(s\) experiment, config"):
        read_manifest(partial)  # a manifest read from disk is named by its path
    bad = _csv(tmp_path, "{not json", "manifest.json")
    with pytest.raises(ContractError, match=rf"^{bad}: not valid JSON \(Expecting property name"):
        read_manifest(bad)


@pytest.mark.parametrize(("changes", "problem"), [
    ({"schema": "kit.manifest/0"}, "schema is 'kit.manifest/0', expected 'kit.manifest/1'"),
    ({"folds": []}, "folds: expected a non-empty list"),
    ({"folds": {"0": 1}}, "folds: expected a non-empty list"),
    ({"folds": [{"fold": 0, "auc": 0.5}]}, "folds[0]: missing key 'best_epoch'"),
    ({"folds": [{"fold": 0, "auc": 0.5, "best_epoch": 1}, {"auc": 0.5, "best_epoch": 1}]},
     "folds[1]: missing key 'fold'"),
    ({"role": "ensemble"}, "role is 'ensemble', expected one of model, baseline"),
    ({"oof_auc": 1.5}, "oof_auc is 1.5, expected a number in [0, 1]"),
    ({"oof_auc": -0.1}, "oof_auc is -0.1, expected a number in [0, 1]"),
    ({"oof_auc": "0.7"}, "oof_auc is '0.7', expected a number in [0, 1]"),
    ({"files": []}, "files: expected an object {name: {size, sha256}}"),
    ({"files": {"oof.csv": {"size": 3}}}, "files['oof.csv']: expected {size, sha256}"),
    ({"files": {"oof.csv": "abc"}}, "files['oof.csv']: expected {size, sha256}"),
    ({"files": {"oof.csv": ["size", "sha256"]}}, "files['oof.csv']: expected {size, sha256}"),
])
def test_a_broken_manifest_is_one_line(changes: dict, problem: str) -> None:
    with pytest.raises(ContractError) as info:
        validate_manifest(_manifest(**changes), "run/manifest.json")
    assert str(info.value) == f"run/manifest.json: {problem}"


def test_manifest_edges_that_are_valid() -> None:
    for auc in (0.0, 1.0, None, float("nan"), 1):
        assert validate_manifest(_manifest(oof_auc=auc))["oof_auc"] is auc
    assert validate_manifest(_manifest(role="baseline"))["role"] == "baseline"
    missing = {k: v for k, v in _manifest().items() if k not in ("seed", "timings")}
    with pytest.raises(ContractError, match=r"^manifest\.json: missing key\(s\) seed, timings$"):
        validate_manifest(missing)
    with pytest.raises(ContractError, match=r"^manifest\.json: expected a JSON object$"):
        validate_manifest([1, 2])  # type: ignore[arg-type]


def test_planned_folds_and_what_an_unfinished_run_says() -> None:
    assert planned_folds(_manifest(folds_planned=[2, 0])) == [2, 0]
    assert planned_folds(_manifest(config={"data": {"folds": 3, "run_folds": [1, 2]}})) == [1, 2]
    assert planned_folds(_manifest(config={"data": {"folds": 3}})) == [0, 1, 2]
    assert planned_folds(_manifest(config={"data": {}})) == [] == planned_folds(_manifest(config="?"))
    assert planned_folds(_manifest(config={})) == []  # a config without a data section
    assert incomplete_reason(_manifest()) is None  # an older kernel's manifest: written once, at the end
    assert incomplete_reason(_manifest(complete=True, folds_planned=[0, 1])) is None
    assert incomplete_reason(_manifest(complete=False, folds_planned=[0, 1, 2, 3])) == (
        "incomplete: fold(s) 0, 1 of 4 finished, 2, 3 never ran")
    assert incomplete_reason(_manifest(complete=True, folds_planned=[0, 1, 2])) == (
        "incomplete: fold(s) 0, 1 of 3 finished, 2 never ran")  # marked complete yet a fold is missing
    assert incomplete_reason(_manifest(complete=False, folds_planned=[0, 1])) == (
        "incomplete: the kernel did not mark it complete (fold(s) 0, 1 finished)")
    assert incomplete_reason(_manifest(complete=False, folds=[], folds_planned=[0, 1])) == (
        "incomplete: fold(s) none of 2 finished, 0, 1 never ran")


def test_files_are_verified_by_size_and_sha256(tmp_path: Path) -> None:
    (tmp_path / "oof.csv").write_text(GOOD_OOF)
    (tmp_path / "test_pred.csv").write_text(GOOD_TEST)
    blob = b"\x00weights" * 1000
    (tmp_path / "fold0.weights.h5").write_bytes(blob)
    assert file_digest(tmp_path / "fold0.weights.h5") == {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    files = {name: file_digest(tmp_path / name) for name in ("oof.csv", "test_pred.csv", "fold0.weights.h5")}
    verify_files(tmp_path, _manifest(files=files))
    (tmp_path / "fold0.weights.h5").write_bytes(blob[:-1] + b"X")  # same size, other bytes
    with pytest.raises(ContractError) as info:
        verify_files(tmp_path, _manifest(files=files))
    assert str(info.value) == f"{tmp_path / 'fold0.weights.h5'}: sha256 differs from the manifest"
    (tmp_path / "fold0.weights.h5").write_bytes(blob + b"!")
    with pytest.raises(ContractError) as info:
        verify_files(tmp_path, _manifest(files=files))
    assert str(info.value) == f"{tmp_path / 'fold0.weights.h5'}: size {len(blob) + 1} bytes, manifest says {len(blob)}"
    (tmp_path / "fold0.weights.h5").unlink()
    with pytest.raises(ContractError, match=r"fold0\.weights\.h5: listed in the manifest but missing$"):
        verify_files(tmp_path, _manifest(files=files))
    (tmp_path / "fold0.weights.h5").write_bytes(blob)
    (tmp_path / "oof.csv").write_text(OOF_HEADER + "ISIC_1,3,0.1,0\n")  # listed files fine, content not
    with pytest.raises(ContractError, match=r"oof\.csv: row 2: target is 3"):
        verify_files(tmp_path, _manifest(files={}))


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 5 * (1 << 20) + 123])
def test_a_files_digest_covers_every_byte_of_any_size(tmp_path: Path, size: int) -> None:
    """Weights files are tens of megabytes: their size and sha256 count every chunk read, not the last one."""
    blob = bytes(range(256)) * (size // 256) + bytes(size % 256)
    (tmp_path / "w.h5").write_bytes(blob)
    assert file_digest(tmp_path / "w.h5") == {"size": size, "sha256": hashlib.sha256(blob).hexdigest()}


def test_writes_are_whole_or_absent(tmp_path: Path) -> None:
    frame = pd.DataFrame({"image_name": ["a", "b"], "target": [0.5, 0.25]})
    target = tmp_path / "test_pred.csv"
    write_csv(frame, target)
    assert target.read_text() == "image_name,target\na,0.5\nb,0.25\n"  # no index column
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["test_pred.csv"]
    with pytest.raises(IsADirectoryError):
        atomic_write_bytes(tmp_path, b"x")  # the rename fails: the temporary file is removed
    assert [p.name for p in tmp_path.iterdir()] == ["test_pred.csv"] and json.dumps(1)
