"""File contracts between the stages: kernel -> pull -> blend -> submit -> predict.

Written down once here and validated wherever a file crosses a boundary (the kernel checks
what it writes, `kit pull` checks what it downloads, `kit blend` checks what it reads).

In:  pandas DataFrames or paths to the files below.
Out: the same frame, checked, or a `ContractError` whose one-line message names the file,
     the row or column and what was expected.

Files a run leaves in its output folder (`/kaggle/working` on Kaggle):

- ``oof.csv``        out-of-fold predictions: ``image_name, target, pred, fold`` (+ optional
                     metadata columns ``patient_id, sex, age_approx, anatom_site_general_challenge``
                     used by subgroup reports and patient-level bootstraps).
- ``test_pred.csv``  test predictions: ``image_name, target`` where target = P(malignant),
                     the mean over folds. Same format as a submission.
- ``test_pred_folds.csv`` per-fold test predictions: ``image_name, fold_0 .. fold_{k-1}``.
- ``manifest.json``  the run manifest: see `MANIFEST_KEYS`; ``files`` maps every other output
                     file name to its size and sha256; optional ``role`` (`MANIFEST_ROLES`: "model"
                     when absent, "baseline" for `kit baseline`'s floor run).
- ``history.json``   per fold, per epoch: loss, val_loss, auc, val_auc, lr, epoch_time_s.
- ``history.png``    plots of loss, AUC and LR per epoch.
- ``fold{k}.weights.h5`` the checkpointed (best) weights of fold k.

This module imports only the standard library, numpy and pandas (it runs inside kernels); numpy and
pandas only inside the functions that read or check frames, so the CLI's start (errors, ledger,
atomic writes) does not pay for them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

OOF_FILE = "oof.csv"
TEST_PRED_FILE = "test_pred.csv"
TEST_FOLDS_FILE = "test_pred_folds.csv"
MANIFEST_FILE = "manifest.json"
HISTORY_FILE = "history.json"
HISTORY_PLOT_FILE = "history.png"
WEIGHTS_PATTERN = "fold{fold}.weights.h5"

OOF_COLUMNS = ("image_name", "target", "pred", "fold")
OOF_OPTIONAL_COLUMNS = ("patient_id", "sex", "age_approx", "anatom_site_general_challenge")
SUBMISSION_COLUMNS = ("image_name", "target")
MANIFEST_SCHEMA = "kit.manifest/1"
MANIFEST_KEYS = (
    "schema",  # == MANIFEST_SCHEMA
    "experiment",  # experiment name
    "config",  # the full config dict the kernel ran with
    "versions",  # {"python": .., "tensorflow": .., "keras": .., "numpy": .., "backend": ..}
    "seed",
    "hardware",  # {"kind": "tpu|gpu|cpu", "replicas": n, "backend": "jax|tensorflow", ...}
    "folds",  # [{"fold": k, "auc": float, "auc_no_tta": float, "best_epoch": int,
    #            "epochs_run": int, "epoch_times_s": [..], "n_val": int}]
    "oof_auc",  # AUC of the concatenated OOF predictions of the checkpointed models
    "timings",  # {"total_s": float, ...}
    "files",  # {name: {"size": int, "sha256": str}} for every other output file
)
# The completion marker: the kernel rewrites the manifest after every fold with COMPLETE_KEY false and
# FOLDS_PLANNED_KEY listing every fold it means to train, and sets it true in its very last (atomic) write.
# A manifest without the key was written by an older kernel, which wrote its manifest only at the end.
COMPLETE_KEY = "complete"
FOLDS_PLANNED_KEY = "folds_planned"
MANIFEST_ROLE_KEY = "role"  # optional top-level key: which kind of run this is (absent = "model")
MANIFEST_ROLES = ("model", "baseline")  # "baseline": `kit baseline`'s floor run (runs/baseline/v<N>/)


class ContractError(ValueError):
    """A file does not meet its contract. The message is one line naming file and problem."""


def _contracts_fail(where: str, problem: str) -> ContractError:
    return ContractError(f"{where}: {problem}")


def _contracts_read_csv(path: str | os.PathLike[str]) -> pd.DataFrame:
    import pandas as pd

    where = str(path)
    if not os.path.exists(where):
        raise _contracts_fail(where, "file not found")
    try:
        return pd.read_csv(where, dtype={"image_name": str})
    except Exception as exc:  # pandas raises many types for broken CSVs
        raise _contracts_fail(where, f"not a readable CSV ({type(exc).__name__}: {exc})".replace("\n", " ")) from None


def _contracts_check_columns(df: pd.DataFrame, required: Iterable[str], where: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise _contracts_fail(where, f"missing column(s) {', '.join(missing)}; expected {', '.join(required)}")


def _contracts_check_names(df: pd.DataFrame, where: str) -> None:
    import numpy as np

    names = df["image_name"]
    if names.isna().any():
        row = int(np.flatnonzero(names.isna().to_numpy())[0])
        raise _contracts_fail(where, f"row {row + 2}: empty image_name")
    dup = names.duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise _contracts_fail(where, f"row {row + 2}: duplicate image_name {names.iloc[row]!r}")


def _contracts_check_finite(df: pd.DataFrame, column: str, where: str) -> None:
    import numpy as np
    import pandas as pd

    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise _contracts_fail(where, f"row {row + 2}: {column} is {df[column].iloc[row]}, expected a finite number")


def validate_oof(df: pd.DataFrame, where: str = OOF_FILE) -> pd.DataFrame:
    """Check an OOF frame: columns, unique names, 0/1 targets, finite preds, int folds."""
    import numpy as np
    import pandas as pd

    _contracts_check_columns(df, OOF_COLUMNS, where)
    _contracts_check_names(df, where)
    _contracts_check_finite(df, "pred", where)
    _contracts_check_finite(df, "target", where)
    targets = pd.to_numeric(df["target"], errors="coerce")
    bad = ~targets.isin([0, 1])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise _contracts_fail(where, f"row {row + 2}: target is {df['target'].iloc[row]!r}, expected 0 or 1")
    folds = pd.to_numeric(df["fold"], errors="coerce")
    bad = folds.isna() | (folds < 0) | (folds != folds.round())
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise _contracts_fail(where, f"row {row + 2}: fold is {df['fold'].iloc[row]!r}, expected an integer >= 0")
    return df


def validate_test_pred(
    df: pd.DataFrame, where: str = TEST_PRED_FILE, expected_names: Iterable[str] | None = None
) -> pd.DataFrame:
    """Check a test-prediction / submission frame: header, unique names, finite targets,
    and (when given) exactly the expected set of image names."""
    _contracts_check_columns(df, SUBMISSION_COLUMNS, where)
    extra = [c for c in df.columns if c not in SUBMISSION_COLUMNS]
    if extra:
        raise _contracts_fail(where, f"unexpected column(s) {', '.join(extra)}; expected image_name,target")
    _contracts_check_names(df, where)
    _contracts_check_finite(df, "target", where)
    if expected_names is not None:
        expected = set(expected_names)
        got = set(df["image_name"])
        missing = sorted(expected - got)
        added = sorted(got - expected)
        if missing:
            raise _contracts_fail(where, f"{len(missing)} image name(s) missing, e.g. {missing[0]!r}")
        if added:
            raise _contracts_fail(where, f"{len(added)} unexpected image name(s), e.g. {added[0]!r}")
    return df


def read_oof(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and validate an OOF CSV."""
    return validate_oof(_contracts_read_csv(path), str(path))


def read_test_pred(path: str | os.PathLike[str], expected_names: Iterable[str] | None = None) -> pd.DataFrame:
    """Read and validate a test-prediction or submission CSV."""
    return validate_test_pred(_contracts_read_csv(path), str(path), expected_names)


def validate_manifest(manifest: Mapping[str, Any], where: str = MANIFEST_FILE) -> Mapping[str, Any]:
    """Check a manifest dict has every key, the right schema tag and sane AUC values."""
    if not isinstance(manifest, Mapping):
        raise _contracts_fail(where, "expected a JSON object")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise _contracts_fail(where, f"missing key(s) {', '.join(missing)}")
    if manifest["schema"] != MANIFEST_SCHEMA:
        raise _contracts_fail(where, f"schema is {manifest['schema']!r}, expected {MANIFEST_SCHEMA!r}")
    if not isinstance(manifest["folds"], list) or not manifest["folds"]:
        raise _contracts_fail(where, "folds: expected a non-empty list")
    for i, fold in enumerate(manifest["folds"]):
        for key in ("fold", "auc", "best_epoch"):
            if key not in fold:
                raise _contracts_fail(where, f"folds[{i}]: missing key {key!r}")
    role = manifest.get(MANIFEST_ROLE_KEY, MANIFEST_ROLES[0])
    if role not in MANIFEST_ROLES:
        raise _contracts_fail(where, f"{MANIFEST_ROLE_KEY} is {role!r}, expected one of {', '.join(MANIFEST_ROLES)}")
    auc = manifest["oof_auc"]
    if auc is not None and not (isinstance(auc, (int, float)) and (math.isnan(auc) or 0.0 <= auc <= 1.0)):
        raise _contracts_fail(where, f"oof_auc is {auc!r}, expected a number in [0, 1]")
    files = manifest["files"]
    if not isinstance(files, Mapping):
        raise _contracts_fail(where, "files: expected an object {name: {size, sha256}}")
    for name, meta in files.items():
        if not isinstance(meta, Mapping) or "size" not in meta or "sha256" not in meta:
            raise _contracts_fail(where, f"files[{name!r}]: expected {{size, sha256}}")
    return manifest


def planned_folds(manifest: Mapping[str, Any]) -> list[int]:
    """The folds a run meant to train: FOLDS_PLANNED_KEY, else its config's data.run_folds or all folds."""
    planned = manifest.get(FOLDS_PLANNED_KEY)
    if isinstance(planned, list):
        return [int(k) for k in planned]
    data = manifest.get("config", {}).get("data", {}) if isinstance(manifest.get("config"), Mapping) else {}
    run_folds = list(data.get("run_folds") or [])
    return [int(k) for k in run_folds] or list(range(int(data.get("folds", 0) or 0)))


def incomplete_reason(manifest: Mapping[str, Any]) -> str | None:
    """None for a finished run; else one phrase saying what is missing (the kernel never wrote its marker).
    A manifest without the marker (an older kernel's, written once at the end) counts as finished."""
    if COMPLETE_KEY not in manifest:
        return None
    done = [int(f["fold"]) for f in manifest["folds"]]
    planned = planned_folds(manifest)
    missing = [k for k in planned if k not in done]
    if manifest[COMPLETE_KEY] is True and not missing:
        return None
    finished = ", ".join(str(k) for k in done) or "none"
    if missing:
        return f"incomplete: fold(s) {finished} of {len(planned)} finished, {', '.join(map(str, missing))} never ran"
    return f"incomplete: the kernel did not mark it {COMPLETE_KEY} (fold(s) {finished} finished)"


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file; a missing or broken file becomes a one-line ContractError."""
    where = str(path)
    try:
        with open(where, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise _contracts_fail(where, "file not found") from None
    except json.JSONDecodeError as exc:
        raise _contracts_fail(where, f"not valid JSON ({exc})") from None


def read_manifest(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    """Read and validate a run manifest JSON."""
    return validate_manifest(read_json(path), str(path))


def file_digest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Size and sha256 of a file, as recorded in the manifest's ``files``."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h.hexdigest()}


def verify_files(folder: str | os.PathLike[str], manifest: Mapping[str, Any]) -> None:
    """Check every file listed in the manifest exists in `folder` with its size and sha256,
    and that OOF and test CSVs meet their contracts."""
    for name, meta in manifest["files"].items():
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            raise _contracts_fail(path, "listed in the manifest but missing")
        got = file_digest(path)
        if got["size"] != meta["size"]:
            raise _contracts_fail(path, f"size {got['size']} bytes, manifest says {meta['size']}")
        if got["sha256"] != meta["sha256"]:
            raise _contracts_fail(path, "sha256 differs from the manifest")
    read_oof(os.path.join(folder, OOF_FILE))
    read_test_pred(os.path.join(folder, TEST_PRED_FILE))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: never a half-written file."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Text variant of `atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_csv(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a frame as CSV atomically (no index)."""
    atomic_write_text(path, df.to_csv(index=False))
