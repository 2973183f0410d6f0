"""Data locations: local folders, /kaggle/input, buckets (exercised through TensorFlow's ram:// filesystem).

ram:// is a real, non-local TensorFlow filesystem that works offline; it lives in this process, so
everything that reads it runs here, through the same tf.io.gfile calls that read gs:// on Kaggle/Colab.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from kernels.config import from_dict
from kernels.data import count_examples, discover_files, eval_dataset, read_records_meta, train_dataset
from kernels.paths import (
    DataLocationError,
    Platform,
    check_location,
    detect_platform,
    mount_name,
    output_dir,
    resolve_dataset,
)
from kernels.strategy import detect_hardware
from kit.data.synth import SynthSpec, write_synth

KAGGLE_BATCH = {"KAGGLE_KERNEL_RUN_TYPE": "Batch"}
_counter = itertools.count()


def _fresh_ram(prefix: str) -> str:
    """A ram:// folder no other test uses (ram:// lives as long as the process)."""
    return f"ram://kit-test-{os.getpid()}-{next(_counter)}/{prefix}"


def copy_to_fs(folder: Path, dest: str) -> list[str]:
    """Copy every file of a local folder into a TensorFlow filesystem folder; return the copied names."""
    tf.io.gfile.makedirs(dest)
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    for name in names:
        tf.io.gfile.copy(str(folder / name), f"{dest}/{name}", overwrite=True)
    return names


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "melanoma-32x32"
    write_synth(out, SynthSpec(n_train=64, n_test=24, size=32, shards=4, seed=3))
    return out


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text, f"error message is not one line: {text!r}"
    return text


# --- where are we running? ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("environ", "name", "tpu", "needs_bucket"),
    [
        ({}, "local", "", False),
        ({"TPU_NAME": "grpc://10.0.0.2:8470"}, "local", "node", True),
        ({**KAGGLE_BATCH}, "kaggle", "", False),
        ({**KAGGLE_BATCH, "ISTPUVM": "1", "TPU_ACCELERATOR_TYPE": "v5litepod-8"}, "kaggle", "vm", False),
        ({**KAGGLE_BATCH, "TPU_NAME": "local"}, "kaggle", "vm", False),
        ({**KAGGLE_BATCH, "TPU_NAME": "grpc://10.0.0.2:8470"}, "kaggle", "node", True),
        ({"COLAB_RELEASE_TAG": "release-colab_20250101-060000"}, "colab", "", False),
        ({"COLAB_RELEASE_TAG": "r", "COLAB_TPU_ADDR": "10.0.0.2:8470"}, "colab", "node", True),
        ({"COLAB_RELEASE_TAG": "r", "TPU_ACCELERATOR_TYPE": "v2-8"}, "colab", "vm", False),
    ],
)
def test_detect_platform(environ: dict[str, str], name: str, tpu: str, needs_bucket: bool) -> None:
    place = detect_platform(environ)
    assert (place.name, place.tpu, place.needs_bucket) == (name, tpu, needs_bucket)
    assert place.gcs_helper is False  # Kaggle's kaggle_datasets module is not installed here


def test_mount_name() -> None:
    assert mount_name("cdeotte/melanoma-256x256") == "melanoma-256x256"
    assert mount_name("/kaggle/input/melanoma-256x256/") == "melanoma-256x256"


# --- local folders and /kaggle/input ------------------------------------------------------------------------

def test_local_folder_input_root_and_override(tmp_path: Path, synth_dir: Path, monkeypatch) -> None:
    monkeypatch.chdir(synth_dir.parent)
    assert resolve_dataset(synth_dir.name, environ={}) == str(synth_dir)  # relative folder -> absolute
    root = tmp_path / "input"
    root.mkdir()
    (root / "melanoma-32x32").symlink_to(synth_dir, target_is_directory=True)
    env = {"KIT_INPUT_ROOT": str(root)}
    assert resolve_dataset("cdeotte/melanoma-32x32", environ=env) == str(root / "melanoma-32x32")
    # the override variable wins over everything, buckets included
    env2 = {**env, "KIT_EXTERNAL_DIR": str(synth_dir), "COLAB_RELEASE_TAG": "r"}
    assert resolve_dataset("gs://nowhere/x", "KIT_EXTERNAL_DIR", env2, gcs_path="gs://nowhere/y") == str(synth_dir)


def test_wrong_or_empty_local_location_fails_in_one_line(tmp_path: Path) -> None:
    env = {"KIT_INPUT_ROOT": str(tmp_path / "input")}
    with pytest.raises(DataLocationError) as exc:
        resolve_dataset("someone/not-attached", environ=env)
    text = _one_line(exc)
    assert "'someone/not-attached'" in text and "KIT_DATA_DIR" in text and str(tmp_path / "input") in text
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataLocationError) as exc:
        resolve_dataset(str(empty), environ={})
    assert "is empty" in _one_line(exc) and str(empty) in str(exc.value)
    with pytest.raises(DataLocationError) as exc:
        resolve_dataset("x/y", environ={"KIT_DATA_DIR": str(tmp_path / "typo")})
    assert _one_line(exc).startswith("KIT_DATA_DIR: location") and "typo" in str(exc.value)
    with pytest.raises(DataLocationError) as exc:
        resolve_dataset("", environ={})
    assert "empty" in _one_line(exc)


# --- buckets (ram:// stands in for gs://) --------------------------------------------------------------------

def test_bucket_url_is_checked_through_gfile(synth_dir: Path) -> None:
    url = _fresh_ram("melanoma-32x32")
    names = copy_to_fs(synth_dir, url)
    assert resolve_dataset(url + "/", environ={}) == url
    assert sorted(tf.io.gfile.listdir(url)) == names
    for bad in (_fresh_ram("missing"), "nosuchfs://bucket/data"):
        with pytest.raises(DataLocationError) as exc:
            resolve_dataset(bad, environ={})
        assert repr(bad) in _one_line(exc)
    with pytest.raises(DataLocationError, match="cannot be read"):
        check_location("nosuchfs://bucket/data", "data.dataset")


def test_colab_reads_the_bucket_named_in_the_config(synth_dir: Path) -> None:
    url = _fresh_ram("colab")
    copy_to_fs(synth_dir, url)
    colab = {"COLAB_RELEASE_TAG": "r", "COLAB_TPU_ADDR": "10.0.0.2:8470"}
    # the spec is a Kaggle slug that does not exist here: Colab must use data.gcs_path instead
    assert resolve_dataset("cdeotte/melanoma-32x32", environ=colab, gcs_path=url) == url
    with pytest.raises(DataLocationError) as exc:
        resolve_dataset("cdeotte/melanoma-32x32", environ=colab)
    assert "data.gcs_path" in _one_line(exc)
    with pytest.raises(DataLocationError) as exc:
        resolve_dataset("cdeotte/melanoma-32x32", environ=colab, gcs_path="my-bucket/data")
    assert "'my-bucket/data'" in _one_line(exc)
    with pytest.raises(DataLocationError) as exc:
        resolve_dataset("cdeotte/melanoma-32x32", environ=colab, gcs_path=_fresh_ram("empty"))
    assert "data.gcs_path" in _one_line(exc)


def test_kaggle_tpu_node_asks_for_the_gcs_path(tmp_path: Path, synth_dir: Path) -> None:
    url = _fresh_ram("kds-melanoma")
    copy_to_fs(synth_dir, url)
    asked: list[str] = []

    def lookup(name: str) -> str:  # Kaggle's KaggleDatasets().get_gcs_path(name) returns the bucket
        asked.append(name)
        return {"melanoma-32x32": url}[name]

    node = Platform(name="kaggle", tpu="node", gcs_helper=True)
    assert resolve_dataset("cdeotte/melanoma-32x32", environ={}, platform=node, gcs_lookup=lookup) == url
    assert asked == ["melanoma-32x32"]
    with pytest.raises(DataLocationError) as exc:
        resolve_dataset("cdeotte/other", environ={}, platform=node, gcs_lookup=lookup)
    assert "'other'" in _one_line(exc) and "attached" in str(exc.value)
    # a TPU VM (or no helper) reads /kaggle/input directly and never asks
    root = tmp_path / "input"
    root.mkdir()
    (root / "melanoma-32x32").symlink_to(synth_dir, target_is_directory=True)
    env = {"KIT_INPUT_ROOT": str(root)}
    for place in (Platform("kaggle", "vm", True), Platform("kaggle", "node", False)):
        assert resolve_dataset("cdeotte/melanoma-32x32", environ=env, platform=place, gcs_lookup=lookup).endswith(
            "melanoma-32x32")
    assert asked == ["melanoma-32x32", "other"]


def test_output_dir(tmp_path: Path) -> None:
    out = tmp_path / "working" / "sub"
    assert output_dir({"KIT_OUTPUT_DIR": str(out)}) == str(out) and out.is_dir()


# --- the kernel's data pipeline over a bucket ---------------------------------------------------------------

def _eval_arrays(files: tuple[str, ...], exp, hw) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for x, y in eval_dataset(files, exp, hw, labelled=True):
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def test_discovery_counting_and_reading_through_a_bucket(synth_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same globbing, counting and reading the kernel does on gs://, here on ram://."""
    for var in ("KIT_DATA_DIR", "KIT_INPUT_ROOT", "COLAB_RELEASE_TAG", "COLAB_TPU_ADDR", "TPU_NAME"):
        monkeypatch.delenv(var, raising=False)
    url = _fresh_ram("melanoma-32x32")
    copy_to_fs(synth_dir, url)
    local = from_dict({"name": "bucket", "data": {"dataset": str(synth_dir), "image_size": 32, "folds": 2},
                       "augment": {"ops": ["dihedral"]}, "train": {"batch_size": 8}})
    bucket = dataclasses.replace(local, data=dataclasses.replace(local.data, dataset=url))
    here, there = discover_files(local), discover_files(bucket)
    assert all(f.startswith(url + "/") for f in there.train + there.test)
    assert [os.path.basename(f) for f in there.train] == [os.path.basename(f) for f in here.train]
    assert len(there.train) == 4 and count_examples(there.train) == 64 and count_examples(there.test) == 24
    pd.testing.assert_frame_equal(read_records_meta(there.train, True), read_records_meta(here.train, True))
    hw = detect_hardware(bucket)
    (img_a, lab_a), (img_b, lab_b) = _eval_arrays(here.train, local, hw), _eval_arrays(there.train, bucket, hw)
    assert img_b.shape == (64, 32, 32, 3) and np.array_equal(img_a, img_b) and np.array_equal(lab_a, lab_b)
    ds, steps = train_dataset(there.train[:2], bucket, hw)
    x, y = next(iter(ds))
    assert steps >= 1 and x.shape == (8, 32, 32, 3) and y.shape == (8, 1)
    # Colab: the config's data.gcs_path is read, whatever data.dataset says
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-test")
    colab = dataclasses.replace(local, data=dataclasses.replace(local.data, dataset="cdeotte/melanoma-32x32",
                                                                gcs_path=url))
    assert discover_files(colab) == there
    monkeypatch.setenv("COLAB_TPU_ADDR", "10.0.0.2:8470")
    no_bucket = dataclasses.replace(colab, data=dataclasses.replace(colab.data, gcs_path=""))
    with pytest.raises(DataLocationError) as exc:
        discover_files(no_bucket)
    assert "data.gcs_path" in _one_line(exc)


def test_a_bucket_without_tfrecords_fails_in_one_line(synth_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KIT_DATA_DIR", raising=False)
    url = _fresh_ram("csv-only")
    tf.io.gfile.makedirs(url)
    tf.io.gfile.copy(str(synth_dir / "train.csv"), f"{url}/train.csv")
    exp = from_dict({"name": "empty-bucket", "data": {"dataset": url}})
    with pytest.raises(DataLocationError) as exc:
        discover_files(exp)
    assert url in _one_line(exc) and "train" in str(exc.value)
