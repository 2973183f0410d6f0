"""Align loaded runs into blend matrices, checking that they can be blended at all.

In:  loaded `kit.run.folders.Run`s (their OOF and test frames already passed `kernels.contracts`, which
     catches repeated names, NaN/inf predictions and non-0/1 targets with the file named) and,
     when known, the test image names of ``sample_submission.csv``.
Out: `BlendInputs`: labels, folds, the OOF matrix (n x runs) and test matrix in one image order,
     optional metadata columns (patient id, sex, age, site); or a `KitError` whose one line names
     the run and the problem: OOF images missing or added relative to the reference run (the
     image set most runs share), targets that disagree, test predictions missing (or adding)
     images relative to sample_submission.csv (or, when unknown, the reference run).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kernels.contracts import OOF_OPTIONAL_COLUMNS, TEST_PRED_FILE, read_test_pred
from kit.errors import KitError
from kit.run.folders import Run

SAMPLE_SUBMISSION = "sample_submission.csv"


@dataclass(frozen=True)
class BlendInputs:
    """Everything a blend needs, aligned: row i of `oof` is image `image_names[i]`, column j run j."""

    run_ids: tuple[str, ...]
    runs: tuple[Run, ...] = field(repr=False)
    image_names: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    folds: np.ndarray = field(repr=False)
    oof: np.ndarray = field(repr=False)
    test_names: np.ndarray = field(repr=False)
    test: np.ndarray = field(repr=False)
    meta: pd.DataFrame = field(repr=False)
    notes: tuple[str, ...] = ()


def _example(names: Iterable[str]) -> str:
    return repr(sorted(names)[0])


def _check_same_images(run: Run, ref: Run, ref_names: pd.Index) -> None:
    if np.array_equal(run.oof["image_name"].to_numpy(), ref_names.to_numpy()):
        return  # the same images in the same order
    names = pd.Index(run.oof["image_name"])
    missing = ref_names.difference(names)
    added = names.difference(ref_names)
    if len(missing):
        raise KitError(f"run {run.run_id}: oof.csv misses {len(missing)} image(s) that {ref.run_id} has, "
                       f"e.g. {_example(missing)}")
    if len(added):
        raise KitError(f"run {run.run_id}: oof.csv adds {len(added)} image(s) that {ref.run_id} lacks, "
                       f"e.g. {_example(added)}")


def _check_test(run: Run, expected: pd.Index, source: str) -> None:
    if np.array_equal(run.test["image_name"].to_numpy(), expected.to_numpy()):
        return  # the expected images in the same order
    names = pd.Index(run.test["image_name"])
    missing = expected.difference(names)
    added = names.difference(expected)
    if len(missing):
        raise KitError(f"run {run.run_id}: {TEST_PRED_FILE} misses {len(missing)} test image(s) of {source}, "
                       f"e.g. {_example(missing)}")
    if len(added):
        raise KitError(f"run {run.run_id}: {TEST_PRED_FILE} has {len(added)} image(s) not in {source}, "
                       f"e.g. {_example(added)}")


def _aligned_oof(frame: pd.DataFrame, names: pd.Index) -> pd.DataFrame:
    """`frame`'s rows in the order of `names` (by image_name); no reindex when already in that order."""
    own = frame["image_name"]
    if len(own) == len(names) and np.array_equal(own.to_numpy(), names.to_numpy()):
        return frame.set_axis(names, axis=0)
    return frame.set_index("image_name").reindex(names)


def _metadata(runs: Sequence[Run], names: pd.Index) -> pd.DataFrame:
    """Optional metadata columns, each taken from the first run whose OOF carries it."""
    meta = pd.DataFrame(index=names)
    for col in OOF_OPTIONAL_COLUMNS:
        for run in runs:
            if col in run.oof.columns:
                meta[col] = run.oof.set_index("image_name")[col].reindex(names).to_numpy()
                break
    return meta.reset_index(names="image_name")


def _image_set_key(names: pd.Series) -> bytes:
    """A key equal for equal sets of image names (sorted 64-bit hashes; the names are checked exactly later)."""
    return np.sort(pd.util.hash_pandas_object(names, index=False).to_numpy()).tobytes()


def reference_run(runs: Sequence[Run]) -> Run:
    """The run others are checked against: the first run holding the OOF image set most runs share,
    so with three or more runs the odd one out is the one named in an error."""
    first = runs[0].oof["image_name"].to_numpy()
    if all(np.array_equal(r.oof["image_name"].to_numpy(), first) for r in runs[1:]):
        return runs[0]  # the usual case, one image list in one order: no need to hash 50 runs' names
    keys = [_image_set_key(r.oof["image_name"]) for r in runs]
    shared = Counter(keys)  # one pass: equal image sets share a count (no list scan per run)
    best = max(range(len(runs)), key=lambda i: (shared[keys[i]], -i))
    return runs[best]


def align_runs(runs: Sequence[Run], expected_test: Iterable[str] | None = None,
               expected_source: str = SAMPLE_SUBMISSION) -> BlendInputs:
    """Check the runs agree on images and targets and stack their predictions (see module doc)."""
    if not runs:
        raise KitError("blend: no runs selected")
    ref = reference_run(runs)
    ref_oof = ref.oof.set_index("image_name")
    names = pd.Index(ref_oof.index)
    y = ref_oof["target"].astype(int)
    notes = []
    indexed = {id(ref): _aligned_oof(ref.oof, names)}
    for run in runs:
        if run is ref:
            continue
        _check_same_images(run, ref, names)
        indexed[id(run)] = _aligned_oof(run.oof, names)
        other = indexed[id(run)]["target"].astype(int)
        differ = np.flatnonzero(other.to_numpy() != y.to_numpy())
        if differ.size:
            name = names[differ[0]]
            raise KitError(f"run {run.run_id}: oof.csv target of {name!r} is {other.iloc[differ[0]]} but "
                           f"{ref.run_id} says {y.iloc[differ[0]]} ({differ.size} image(s) disagree)")
        folds = indexed[id(run)]["fold"].to_numpy()
        if not np.array_equal(folds, ref_oof["fold"].to_numpy()):
            notes.append(f"{run.run_id} uses other folds than {ref.run_id}; nested CV uses the folds of {ref.run_id}")
    if expected_test is not None:
        test_names = pd.Index(list(expected_test))
        source = expected_source
    else:
        test_names = pd.Index(ref.test["image_name"])
        source = f"{ref.run_id}'s {TEST_PRED_FILE}"
    for run in runs:
        _check_test(run, test_names, source)
    oof = np.column_stack([indexed[id(r)]["pred"].to_numpy(float) for r in runs])
    test = np.column_stack([_aligned_oof(r.test, test_names)["target"].to_numpy(float) for r in runs])
    return BlendInputs(
        run_ids=tuple(r.run_id for r in runs),
        runs=tuple(runs),
        image_names=names.to_numpy(),
        y=y.to_numpy(),
        folds=ref_oof["fold"].astype(int).to_numpy(),
        oof=oof,
        test_names=test_names.to_numpy(),
        test=test,
        meta=_metadata(runs, names),
        notes=tuple(notes),
    )


def read_expected_test(dataset: str | os.PathLike[str] | None) -> list[str] | None:
    """Image names of ``<dataset>/sample_submission.csv`` (validated); None when no dataset is given."""
    if not dataset:
        return None
    path = Path(dataset) / SAMPLE_SUBMISSION
    if not path.exists():
        raise KitError(f"{path}: not found (the dataset folder must hold {SAMPLE_SUBMISSION})")
    return read_test_pred(path)["image_name"].tolist()
