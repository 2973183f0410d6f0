"""kernels.data: files, folds, the tf.data pipelines (order, labels, metadata, upsampling, padding,
device mode) and single-image decoding, on a real synthetic dataset written by `kit.data.synth`.

Real TensorFlow, real TFRecord files, small images (64 px) to stay fast.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from kernels.config import ConfigError, from_dict
from kernels.data import (
    META_DIM,
    data_decoder,
    data_ratio,
    decode_image,
    discover_files,
    eval_dataset,
    eval_rows,
    fold_splits,
    metadata_vector,
    missing_metadata_vector,
    prepare_image,
    read_records_meta,
    train_dataset,
)
from kernels.paths import DataLocationError
from kernels.schema import DIAGNOSES, MELANOMA_INDEX, SEXES, SITES, count_from_name
from kernels.strategy import Hardware, eval_batch_size
from kit.data.synth import SynthSpec, write_synth

SIZE = 64
N_TRAIN, N_TEST, SHARDS = 160, 48, 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "synth"
    write_synth(out, SynthSpec(n_train=N_TRAIN, n_test=N_TEST, size=SIZE, shards=SHARDS, seed=7))
    return out


def experiment(folder: Path, batch: int = 8, eval_factor: int = 1, **data: object):
    sections = {k: data.pop(k) for k in ("augment", "model") if k in data}
    return from_dict({"name": "t", "seed": 5, "data": {"dataset": str(folder), "image_size": SIZE, **data},
                      "train": {"batch_size": batch, "eval_batch_factor": eval_factor}, **sections})


def cpu(replicas: int = 1, on_device: bool = False) -> Hardware:
    return Hardware(kind="cpu", backend="tensorflow", replicas=replicas, devices=("CPU:0",), strategy=None,
                    augment_on_device=on_device)


def images_of(x):
    return x["image"] if isinstance(x, dict) else x


# ------------------------------------------------------------------ files and folds


def test_discover_files_sorted_counted_and_external(dataset: Path) -> None:
    files = discover_files(experiment(dataset))
    assert len(files.train) == SHARDS and list(files.train) == sorted(files.train)
    assert sum(count_from_name(f) for f in files.train) == N_TRAIN
    assert sum(count_from_name(f) for f in files.test) == N_TEST and files.external == ()
    ext = discover_files(experiment(dataset, external=str(dataset), external_glob="train0[0-1]*.tfrec"))
    assert [Path(f).name for f in ext.external] == [Path(f).name for f in files.train[:2]]


def test_discover_files_errors_name_the_problem(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(DataLocationError, match=r"no train files match 'nothing\*\.tfrec'"):
        discover_files(experiment(dataset, train_glob="nothing*.tfrec"))
    odd = tmp_path / "odd"
    odd.mkdir()
    shutil.copy(next(dataset.glob("train00-*.tfrec")), odd / "train00.tfrec")
    shutil.copy(next(dataset.glob("test00-*.tfrec")), odd / "test00-23.tfrec")
    with pytest.raises(DataLocationError, match=r"train00\.tfrec: .*-COUNT\.tfrec"):
        discover_files(experiment(odd))


def test_fold_splits_partition_whole_files_reproducibly() -> None:
    splits = fold_splits(15, 5, seed=42)
    assert len(splits) == 5
    vals = [set(v) for _, v in splits]
    assert set().union(*vals) == set(range(15)) and sum(len(v) for v in vals) == 15
    for train, val in splits:
        assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(15))
    assert splits == fold_splits(15, 5, seed=42) and splits != fold_splits(15, 5, seed=43)
    with pytest.raises(ConfigError, match="data.folds: 5 folds need at least 5 train files, found 3"):
        fold_splits(3, 5, seed=1)


# ------------------------------------------------------------------ evaluation order and content


def test_eval_order_is_file_order_and_matches_records_meta(dataset: Path) -> None:
    exp = experiment(dataset)
    files = list(discover_files(exp).train[:2])
    images, targets = [], []
    for x, y in eval_dataset(files, exp, cpu(), labelled=True):
        assert x.dtype == tf.float32 and y.shape[1:] == (1,)
        images.append(x.numpy())
        targets.append(y.numpy()[:, 0])
    meta = read_records_meta(files, labelled=True)
    raw = [tf.io.parse_single_example(r, {"image": tf.io.FixedLenFeature([], tf.string),
                                          "image_name": tf.io.FixedLenFeature([], tf.string)})
           for r in tf.data.TFRecordDataset(files)]
    assert list(meta["image_name"]) == [r["image_name"].numpy().decode() for r in raw]
    np.testing.assert_array_equal(np.concatenate(targets), meta["target"].to_numpy())
    expected = np.stack([tf.io.decode_jpeg(r["image"], channels=3).numpy() for r in raw]).astype(np.float32)
    np.testing.assert_array_equal(np.concatenate(images), expected)
    frame = pd.read_csv(dataset / "train.csv")
    assert set(meta["sex"]) <= set(SEXES) and set(meta["anatom_site_general_challenge"]) <= set(SITES)
    by_name = frame.set_index("image_name").loc[meta["image_name"]]
    np.testing.assert_array_equal(by_name["target"].to_numpy(), meta["target"].to_numpy())
    assert list(by_name["sex"].fillna("missing")) == list(meta["sex"])


def test_unlabelled_eval_yields_inputs_only_and_views_flip(dataset: Path) -> None:
    exp = experiment(dataset, batch=16)
    files = discover_files(exp).test
    plain = np.concatenate([x.numpy() for x in eval_dataset(files, exp, cpu(), labelled=False)])
    assert plain.shape == (N_TEST, SIZE, SIZE, 3)
    flipped = np.concatenate([x.numpy() for x in eval_dataset(files, exp, cpu(), labelled=False, view=1)])
    np.testing.assert_array_equal(flipped, plain[:, :, ::-1])
    assert len(read_records_meta(files, labelled=False)) == N_TEST
    assert "target" not in read_records_meta(files, labelled=False)


def test_tta_passes_are_reproducible_and_distinct(dataset: Path) -> None:
    exp = experiment(dataset, batch=16, augment={"ops": ["affine"]})
    files = discover_files(exp).test[:1]

    def run(**kw):
        return np.concatenate([x.numpy() for x in eval_dataset(files, exp, cpu(), labelled=False, augment=True, **kw)])

    a, b, c = run(tta_pass=3), run(tta_pass=3), run(tta_pass=4)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1.0 and np.abs(run() - run()).max() > 1.0


def test_padding_for_several_replicas_keeps_every_image_once(dataset: Path) -> None:
    exp = experiment(dataset, batch=5)
    files = discover_files(exp).train[:2]
    n = sum(count_from_name(f) for f in files)
    weights, sizes = [], []
    for x, y, w in eval_dataset(files, exp, cpu(replicas=4), labelled=True):
        assert x.shape[0] % 4 == 0 and y.shape[0] == x.shape[0]
        sizes.append(x.shape[0])
        weights.append(w.numpy())
    w = np.concatenate(weights)
    assert w.sum() == n and (w[:n] == 1).all() and (w[n:] == 0).all() and len(w) > n
    assert sizes == [20] * len(sizes)  # the last batch too: one shape per run (eval_full_batches)
    assert eval_rows(n, exp, cpu(replicas=4)) == len(w)  # what predict_tta splits chained passes by


@pytest.mark.parametrize("hw", [Hardware(kind="tpu", backend="jax", replicas=2, devices=("cpu:0", "cpu:1")),
                                Hardware(kind="gpu", backend="tensorflow", replicas=1, devices=("gpu:0",),
                                         jit_compile=True)], ids=["jax", "xla-one-gpu"])
def test_compiled_evaluation_keeps_one_batch_shape(dataset: Path, hw: Hardware) -> None:
    """Under JAX or XLA every evaluation batch has the full size (one compile per step), padding weighted 0."""
    exp = experiment(dataset, batch=4, eval_factor=2)
    for files in (discover_files(exp).train[:1], discover_files(exp).train[1:3]):
        n = sum(count_from_name(f) for f in files)
        assert n % eval_batch_size(exp, hw)  # a short last batch to pad
        batches = list(eval_dataset(files, exp, hw, labelled=True))
        assert {int(x.shape[0]) for x, _, _ in batches} == {eval_batch_size(exp, hw)} == {8 * hw.replicas}
        weights = np.concatenate([w.numpy() for _, _, w in batches])
        assert weights.sum() == n and (weights[:n] == 1).all()
        assert eval_rows(n, exp, hw) == len(weights) == eval_batch_size(exp, hw) * len(batches)


@pytest.mark.parametrize("replicas", [1, 3])
def test_eval_rows_counts_what_a_pass_yields(dataset: Path, replicas: int) -> None:
    exp = experiment(dataset, batch=4)
    for files in (discover_files(exp).test[:1], discover_files(exp).train[:3]):
        n = sum(count_from_name(f) for f in files)
        rows = sum(int(images_of(x).shape[0]) for x in eval_dataset(files, exp, cpu(replicas), labelled=False))
        assert eval_rows(n, exp, cpu(replicas)) == rows


# ------------------------------------------------------------------ training batches


def test_train_batches_are_endless_float_and_augmented(dataset: Path) -> None:
    exp = experiment(dataset, augment={"ops": ["dihedral", "affine", "color"]})
    ds, steps = train_dataset(discover_files(exp).train, exp, cpu())
    assert steps == N_TRAIN // 8 and ds.options().autotune.enabled is False
    seen = 0
    for x, y in ds.take(steps + 5):  # past one epoch: endless
        assert x.shape == (8, SIZE, SIZE, 3) and x.dtype == tf.float32 and y.shape == (8, 1)
        assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 255.0
        assert set(np.unique(y.numpy())) <= {0.0, 1.0}
        seen += 1
    assert seen == steps + 5


def test_upsampling_raises_the_malignant_share(dataset: Path) -> None:
    def share(upsample: int) -> float:
        exp = experiment(dataset, batch=32, upsample_malignant=upsample, augment={"ops": []})
        ds, _ = train_dataset(discover_files(exp).train, exp, cpu(on_device=True))
        return float(np.mean([y.numpy().mean() for _, y in ds.take(30)]))

    base, boosted = share(1), share(5)
    truth = pd.read_csv(dataset / "train.csv")["target"].mean()
    assert abs(base - truth) < 0.05
    assert boosted > 2 * base  # 5x malignant: 0.1 -> ~0.36


def test_device_mode_ships_uint8_and_keeps_host_mixing(dataset: Path) -> None:
    exp = experiment(dataset, augment={"ops": ["affine"], "mix": "mixup", "mix_prob": 1.0}, cache=True)
    ds, _ = train_dataset(discover_files(exp).train, exp, cpu(on_device=True))
    labels = []
    for x, y in ds.take(N_TRAIN // 8 + 3):  # cached: past the first pass
        assert x.dtype == tf.uint8 and x.shape == (8, SIZE, SIZE, 3)
        labels.append(y.numpy())
    y = np.concatenate(labels)
    assert ((y > 0.01) & (y < 0.99)).any() and (y >= 0).all() and (y <= 1).all()
    plain = experiment(dataset)
    x = next(iter(eval_dataset(discover_files(plain).test, plain, cpu(on_device=True), labelled=False)))
    assert x.dtype == tf.uint8


def test_diagnosis_labels_and_metadata_inputs(dataset: Path) -> None:
    exp = experiment(dataset, batch=16, metadata=True, model={"head": "diagnosis"})
    files = discover_files(exp).train[:3]
    metas, labels = [], []
    for x, y in eval_dataset(files, exp, cpu(), labelled=True):
        assert set(x) == {"image", "meta"} and x["meta"].shape[1:] == (META_DIM,)
        metas.append(x["meta"].numpy())
        labels.append(y.numpy())
    meta, y = np.concatenate(metas), np.concatenate(labels)
    frame = read_records_meta(files, labelled=True)
    assert y.shape == (len(frame), len(DIAGNOSES)) and np.allclose(y.sum(axis=1), 1.0)
    np.testing.assert_array_equal(y.argmax(axis=1) == MELANOMA_INDEX, frame["target"].to_numpy() == 1)
    sexes = np.array([SEXES.index(s) for s in frame["sex"]])
    np.testing.assert_array_equal(meta[:, : len(SEXES)].argmax(axis=1), sexes)
    age = frame["age_approx"].to_numpy()
    np.testing.assert_allclose(meta[:, len(SEXES)], np.where(np.isnan(age), 0.0, age / 90.0), atol=1e-6)
    counts = frame.groupby("patient_id")["image_name"].transform("count").to_numpy()
    np.testing.assert_allclose(meta[:, -1], np.log(counts) / 5.0, atol=1e-6)
    train, _ = train_dataset(files, exp, cpu(on_device=True))
    x, y = next(iter(train))
    assert x["meta"].shape == (16, META_DIM) and y.shape == (16, len(DIAGNOSES)) and x["image"].dtype == tf.uint8


def test_metadata_vector_values() -> None:
    v = metadata_vector([1], [45], [SITES.index("torso")], [4]).numpy()[0]
    assert v.shape == (META_DIM,)
    np.testing.assert_allclose(v[:3], [0, 1, 0])
    np.testing.assert_allclose(v[3:5], [0.5, 0.0])
    assert v[5 + SITES.index("torso")] == 1 and v[5:12].sum() == 1
    np.testing.assert_allclose(v[-1], np.log(4) / 5.0, rtol=1e-6)
    missing = missing_metadata_vector()
    np.testing.assert_allclose(missing[:3], [0, 0, 1])
    assert missing[4] == 1 and missing[5 + SITES.index("missing")] == 1 and missing[-1] == 0
    odd = metadata_vector([9], [-1], [-3], [1]).numpy()[0]  # out-of-range codes count as missing
    np.testing.assert_allclose(odd, missing)


# ------------------------------------------------------------------ single images, decode scale, resizing


def test_decode_ratio_from_header_or_stored_size() -> None:
    rng = np.random.default_rng(0)
    big = tf.io.encode_jpeg(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8), quality=95)
    exp = from_dict({"name": "t", "data": {"image_size": 64}})
    assert decode_image(big, exp).shape == (64, 64, 3)  # 1/4 scale from the JPEG header
    assert decode_image(big, exp, stored_size=256).shape == (64, 64, 3)
    assert decode_image(big, from_dict({"name": "t", "data": {"image_size": 96}})).shape == (128, 128, 3)
    assert decode_image(big, from_dict({"name": "t", "data": {"image_size": 64, "decode_ratio": 2}})).shape[0] == 128
    assert [data_ratio(s, 256) for s in (256, 511, 512, 1024, 4096)] == [1, 1, 2, 4, 8]


def jpeg_file(path: Path, sizes: list[int]) -> str:
    """A TFRecord file of square JPEG records, one per entry of ``sizes``."""
    rng = np.random.default_rng(len(sizes))
    with tf.io.TFRecordWriter(str(path)) as writer:
        for side in sizes:
            jpeg = tf.io.encode_jpeg(rng.integers(0, 255, (side, side, 3), dtype=np.uint8), quality=95).numpy()
            feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return str(path)


def test_decoder_fast_path_scaled_path_and_per_image_path(tmp_path: Path) -> None:
    """Probes that all show size x scale decode without a per-image resize check; mixed probes decode
    each image by its own header and resize it; a stray size inside a 'uniform' file is an error."""
    exp = from_dict({"name": "t", "data": {"image_size": 32}})
    exact = jpeg_file(tmp_path / "a.tfrec", [32, 32])
    double = jpeg_file(tmp_path / "b.tfrec", [64, 64])
    odd = jpeg_file(tmp_path / "c.tfrec", [48, 40])

    def decoded(files: list[str]) -> list[tuple[int, ...]]:
        decode = data_decoder(files, exp)
        records = tf.data.TFRecordDataset(files)
        spec = {"image": tf.io.FixedLenFeature([], tf.string)}
        return [tuple(decode(tf.io.parse_single_example(r, spec)["image"]).shape) for r in records]

    assert decoded([exact]) == [(32, 32, 3)] * 2
    assert decoded([double]) == [(32, 32, 3)] * 2  # 1/2 DCT scale, no resize
    assert decoded([exact, double, odd]) == [(32, 32, 3)] * 6  # per image: scale, then resize when needed
    stray = jpeg_file(tmp_path / "d.tfrec", [32, 40])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[40,40,3\] is not compatible with expected shape \[32,32,3\]"):
        decoded([stray])


def test_prepare_image_accepts_any_size_grey_and_rgba() -> None:
    exp = from_dict({"name": "t", "data": {"image_size": 64}})
    rng = np.random.default_rng(1)
    for image in (rng.integers(0, 255, (50, 80, 3), dtype=np.uint8), rng.integers(0, 255, (70, 40), dtype=np.uint8),
                  rng.integers(0, 255, (64, 64, 4), dtype=np.uint8)):
        out = prepare_image(image, exp)
        assert out.shape == (64, 64, 3) and out.dtype == tf.float32
        assert 0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 255
    same = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(prepare_image(same, exp).numpy(), same.astype(np.float32))


@pytest.mark.parametrize("size", [32, 96])
def test_pipeline_fits_stored_images_to_the_model_size(dataset: Path, size: int) -> None:
    exp = from_dict({"name": "t", "data": {"dataset": str(dataset), "image_size": size}, "train": {"batch_size": 8}})
    files = discover_files(exp).test[:1]
    x = next(iter(eval_dataset(files, exp, cpu(), labelled=False)))
    assert x.shape[1:] == (size, size, 3) and x.dtype == tf.float32


def test_eval_batch_count_comes_from_file_names_and_a_lying_name_fails(dataset: Path, tmp_path: Path) -> None:
    exp = experiment(dataset, batch=4, eval_factor=4)  # evaluation batches: 4 training batches (train.eval_batch_factor)
    files = discover_files(exp).test
    ds = eval_dataset(files, exp, cpu(), labelled=False)
    assert int(ds.cardinality()) == -(-N_TEST // 16)
    assert [int(images_of(x).shape[0]) for x in ds][:-1] == [16] * (-(-N_TEST // 16) - 1)
    liar = tmp_path / "test00-99.tfrec"
    shutil.copy(files[0], liar)
    with pytest.raises(tf.errors.FailedPreconditionError, match="expected to contain"):
        list(eval_dataset([str(liar)], exp, cpu(), labelled=False))


@pytest.mark.parametrize("on_device", [False, True])
def test_chained_tta_passes_predict_like_one_call_per_pass(dataset: Path, on_device: bool) -> None:
    """predict_tta chains passes with one element spec into one predict call; it must give exactly what one
    call per pass gives (the same rows, in the same order, padding dropped), also with two spec groups
    (device mode: uint8 views, float32 augmented passes)."""
    import keras

    from kernels.train import chain_groups, predict_pass, predict_tta, tta_plan, with_known_batches

    exp = from_dict({"name": "t", "seed": 5, "data": {"dataset": str(dataset), "image_size": SIZE},
                     "augment": {"ops": ["affine"]}, "train": {"batch_size": 4, "eval_batch_factor": 1, "tta": 2, "tta_dihedral": True}})
    hw = cpu(replicas=3, on_device=on_device)
    files = discover_files(exp).test[:1]
    n = sum(count_from_name(f) for f in files)
    inputs = keras.Input((SIZE, SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3, strides=4)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(pooled))
    got = predict_tta(model, files, exp, hw)
    want = []
    for view, tta_pass in tta_plan(exp):
        ds = eval_dataset(files, exp, hw, labelled=False, augment=tta_pass is not None, view=view, tta_pass=tta_pass)
        want.append(predict_pass(model, with_known_batches(ds, n, eval_batch_size(exp, hw)), exp)[:n])
    np.testing.assert_allclose(got.plain, want[0], rtol=1e-5)
    np.testing.assert_allclose(got.tta, np.mean(want, axis=0), rtol=1e-5)
    assert got.views == len(want) == 10 and len(got.plain) == n
    groups = chain_groups([eval_dataset(files, exp, hw, labelled=False, augment=a, view=v, tta_pass=p)
                           for v, p in tta_plan(exp) for a in [p is not None]])
    assert [len(g) for g in groups] == ([8, 2] if on_device else [10])
