"""Guards on fold assembly (`kernels.main.fold_files`): no fold trains on its own validation images, nor on
their external re-packs (the same images at another size, paired file by file with the train files),
read back from the real TFRecords. External data that is not such a re-pack joins every fold's training."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernels.data import data_glob, fold_splits, read_records_meta
from kernels.main import fold_files
from kit.data.synth import SynthSpec, write_synth

MAIN = SynthSpec(n_train=24, n_test=4, size=32, shards=4, seed=11, malignant_rate=0.25)
REPACK = SynthSpec(n_train=24, n_test=4, size=48, shards=4, seed=11, malignant_rate=0.25)  # same images, 48 px
OTHER = SynthSpec(n_train=18, n_test=4, size=32, shards=3, seed=12, malignant_rate=0.25)  # another data set
FOLDS = 4


_NAMES: dict[str, frozenset[str]] = {}


def _names(files: list[str] | tuple[str, ...]) -> set[str]:
    """The image names in `files`, read from the records (each file read once per session)."""
    for path in files:
        if path not in _NAMES:
            _NAMES[path] = frozenset(read_records_meta([path], labelled=True)["image_name"])
    return set().union(*(_NAMES[path] for path in files))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("guard-folds")
    for name, spec in (("main", MAIN), ("repack", REPACK), ("other", OTHER)):
        write_synth(root / name, spec)
    return root


def test_no_fold_trains_on_its_validation_images_or_their_repacks(data: Path) -> None:
    from kernels.data import DataFiles

    train = data_glob(str(data / "main"), "train*.tfrec", "train")
    repack = data_glob(str(data / "repack"), "train*.tfrec", "external")
    assert len(repack) == len(train)
    assert [_names([a]) for a in train] == [_names([b]) for b in repack]  # paired file by file: a re-pack
    files = DataFiles(train=train, test=(), external=repack)
    seen_val: set[str] = set()
    for seed in (0, 1):
        for train_idx, val_idx in fold_splits(len(train), FOLDS, seed):
            fold_train, fold_val, fold_external = fold_files(files, train_idx, val_idx)
            val = _names(fold_val)
            assert val and not val & _names(fold_train), "a validation image is in its fold's training files"
            assert not val & _names(fold_external), "a validation image's re-pack is in its fold's training"
            assert _names(fold_external) == _names(fold_train)  # the rest of the re-packs do train
            seen_val |= val
    assert seen_val == _names(train)


def test_unpaired_external_data_joins_every_fold(data: Path) -> None:
    from kernels.data import DataFiles

    train = data_glob(str(data / "main"), "train*.tfrec", "train")
    other = data_glob(str(data / "other"), "train*.tfrec", "external")
    assert len(other) != len(train)
    files = DataFiles(train=train, test=(), external=other)
    for train_idx, val_idx in fold_splits(len(train), FOLDS, 0):
        fold_train, fold_val, fold_external = fold_files(files, train_idx, val_idx)
        assert list(fold_external) == list(other)
        assert fold_train == [train[i] for i in train_idx] and fold_val == [train[i] for i in val_idx]
