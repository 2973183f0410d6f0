"""The model registry: every backbone name resolves, a representative subset builds and predicts at a
tiny size, the scratch CNN builder, normalisation, pooling, heads, metadata, BN momentum, weights files."""

from __future__ import annotations

import os
import typing
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pytest

from kernels.config import ModelSection, ScratchSection, from_dict
from kernels.models import (
    BACKBONES,
    BN_KERAS_DEFAULT_MOMENTUM,
    BN_SHORT_RUN_MOMENTUM,
    NORMALIZATIONS,
    POOLINGS,
    SCRATCH_BLOCKS,
    GeMPooling2D,
    ModelWeightsError,
    build_model,
    construct_backbone,
    load_model_weights,
    model_core,
    model_prediction,
    normalization_layer,
    resolve_weights,
    save_model_weights,
    scratch_widths,
)
from kernels.schema import DIAGNOSES, MELANOMA_INDEX

ISSUE_BACKBONES = {
    *(f"efficientnet_b{i}" for i in range(8)),
    *(f"efficientnetv2_b{i}" for i in range(4)),
    "efficientnetv2_s", "efficientnetv2_m", "efficientnetv2_l",
    "resnet50v2", "resnet101v2", "resnet152v2", "densenet121", "densenet169", "densenet201",
    "inception_v3", "xception", "convnext_tiny", "convnext_small", "convnext_base",
    "mobilenet_v3_small", "mobilenet_v3_large",
}
LITE_BACKBONES = {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}  # tests/test_effnetlite.py
# One per family and normalisation kind, at the smallest size each accepts (64 px, 96 for Inception).
REPRESENTATIVE = ("efficientnet_b0", "efficientnetv2_b0", "resnet50v2", "densenet121", "inception_v3",
                  "convnext_tiny", "mobilenet_v3_small")


@dataclass(frozen=True)
class CpuHardware:
    """The parts of kernels.strategy.Hardware the model builder reads."""

    augment_on_device: bool = False


def make_exp(**sections: dict) -> typing.Any:
    base = {"name": "t", "data": {"image_size": 32}, "model": {"backbone": "scratch", "weights": "none"}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return from_dict(base)


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def bn_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    out, stack = [], [model]
    while stack:
        layer = stack.pop()
        stack.extend(getattr(layer, "layers", []) or [])
        if isinstance(layer, keras.layers.BatchNormalization):
            out.append(layer)
    return out


def test_registry_names_resolve_to_keras_applications() -> None:
    assert set(BACKBONES) == ISSUE_BACKBONES | LITE_BACKBONES
    for name, spec in BACKBONES.items():
        assert spec.name == name
        assert name in LITE_BACKBONES or callable(getattr(keras.applications, spec.constructor)), name
        assert spec.normalization in NORMALIZATIONS
        assert spec.default_size >= spec.min_size >= 32
    assert {BACKBONES[n].normalization for n in REPRESENTATIVE} == {"none_0_255", "minus1_1", "torch"}


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_backbone_builds_and_predicts_at_tiny_size(name: str) -> None:
    size = 96 if BACKBONES[name].min_size > 64 else 64
    exp = make_exp(data={"image_size": size}, model={"backbone": name, "dropout": 0.0})
    model = build_model(exp, CpuHardware(), meta_dim=0, total_steps=10)
    out = keras.ops.convert_to_numpy(model(images(2, size), training=False))
    assert out.shape == (2, 1) and out.dtype == np.float32
    assert np.all((out > 0) & (out < 1))
    assert all(layer.momentum == BN_SHORT_RUN_MOMENTUM for layer in bn_layers(model))


def test_backbone_below_its_minimum_size_says_so() -> None:
    exp = make_exp(data={"image_size": 64}, model={"backbone": "inception_v3"})
    with pytest.raises(ValueError, match="data.image_size: got 64, inception_v3 needs at least 75"):
        build_model(exp, CpuHardware(), 0)


def test_normalization_layers_map_pixel_range() -> None:
    x = np.array([[[[0.0, 127.5, 255.0]]]], dtype="float32")
    assert normalization_layer("none_0_255") is None
    np.testing.assert_allclose(np.asarray(normalization_layer("minus1_1")(x)), [[[[-1, 0, 1]]]], atol=1e-6)
    np.testing.assert_allclose(np.asarray(normalization_layer("unit")(x)), [[[[0, 0.5, 1]]]], atol=1e-6)
    mean_pixel = np.array([[[[0.485 * 255, 0.456 * 255, 0.406 * 255]]]], dtype="float32")
    np.testing.assert_allclose(np.asarray(normalization_layer("torch")(mean_pixel)), 0.0, atol=1e-4)
    white = np.asarray(normalization_layer("torch")(np.full((1, 1, 1, 3), 255.0, "float32")))
    np.testing.assert_allclose(white[0, 0, 0], [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225],
                               rtol=1e-4)


@pytest.mark.parametrize("block", sorted(SCRATCH_BLOCKS))
@pytest.mark.parametrize("se", [False, True])
def test_scratch_blocks_build_and_downsample(block: str, se: bool) -> None:
    scratch = {"stages": 3, "width": 8, "depth": [1, 2, 1], "block": block, "se": se, "dropout": 0.1}
    exp = make_exp(data={"image_size": 64}, model={"scratch": scratch, "pooling": "gem"})
    model = build_model(exp, CpuHardware(), 0)
    core = model_core(model)
    names = [layer.name for layer in core.layers]
    assert any(n.endswith("_se") for n in names) == se
    assert sum(n.startswith("stage1_block") and n.endswith("_a_conv") for n in names) == (2 if block != "inverted"
                                                                                           else 0)
    # stem stride 2, then every stage halves: 64 -> 32 -> 16 -> 8 -> 4; the last stage has width 8 * 2**2
    features = core.get_layer("pool").input
    assert tuple(features.shape[1:]) == (4, 4, scratch_widths(exp)[-1]) == (4, 4, 32)
    out = model.predict(images(3, 64), verbose=0)
    assert out.shape == (3, 1) and np.all(np.isfinite(out))


def test_scratch_width_depth_change_the_architecture() -> None:
    def params(**scratch: typing.Any) -> int:
        return build_model(make_exp(model={"scratch": scratch}), CpuHardware(), 0).count_params()

    small = params(stages=3, width=8)
    assert params(stages=3, width=16) > small
    assert params(stages=3, width=8, depth=[2]) > small
    assert params(stages=4, width=8) > small
    assert params(stages=3, width=8, width_mult=1.0) < small


def test_registries_cover_the_config_choices() -> None:
    assert set(POOLINGS) == set(typing.get_args(typing.get_type_hints(ModelSection)["pooling"]))
    assert set(SCRATCH_BLOCKS) == set(typing.get_args(typing.get_type_hints(ScratchSection)["block"]))


def test_gem_pooling_between_average_and_max() -> None:
    x = np.random.default_rng(1).uniform(0.1, 2.0, (2, 4, 4, 3)).astype("float32")
    gem = GeMPooling2D(p=1.0)
    np.testing.assert_allclose(np.asarray(gem(x)), x.mean(axis=(1, 2)), rtol=1e-5)
    high = np.asarray(GeMPooling2D(p=40.0)(x))
    assert np.all(high <= x.max(axis=(1, 2)) + 1e-5) and np.all(high > x.mean(axis=(1, 2)))
    np.testing.assert_allclose(high, x.max(axis=(1, 2)), rtol=0.1)


def test_diagnosis_head_with_metadata_branch() -> None:
    exp = make_exp(data={"metadata": True}, model={"head": "diagnosis", "scratch": {"stages": 2, "width": 8}})
    model = build_model(exp, CpuHardware(), meta_dim=5)
    assert {t.name for t in model.inputs} == {"image", "meta"}
    assert "concat_meta" in [layer.name for layer in model_core(model).layers]
    meta = np.random.default_rng(2).normal(size=(4, 5)).astype("float32")
    out = model.predict({"image": images(4, 32), "meta": meta}, verbose=0)
    assert out.shape == (4, len(DIAGNOSES))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(model_prediction(out, exp), out[:, MELANOMA_INDEX])
    meta2 = meta + 3.0  # the metadata reaches the output
    assert not np.allclose(out, model.predict({"image": images(4, 32), "meta": meta2}, verbose=0))


def test_mixed_precision_keeps_a_float32_output() -> None:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_model(make_exp(model={"scratch": {"stages": 2, "width": 8}}), CpuHardware(), 0)
        conv = model_core(model).get_layer("stem_conv")
        assert conv.compute_dtype == "bfloat16"
        assert model_core(model).get_layer("head").compute_dtype == "float32"
        assert model.predict(images(2, 32), verbose=0).dtype == np.float32
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize(("setting", "total_steps", "expected"), [
    ("auto", 200, BN_SHORT_RUN_MOMENTUM),
    ("auto", 50_000, BN_KERAS_DEFAULT_MOMENTUM),
    ("auto", None, BN_KERAS_DEFAULT_MOMENTUM),
    (0.8, 200, 0.8),
])
def test_bn_momentum_reaches_every_batchnorm(setting: typing.Any, total_steps: int | None, expected: float) -> None:
    exp = make_exp(data={"image_size": 64, "metadata": True},
                   model={"backbone": "mobilenet_v3_small", "bn_momentum": setting})
    model = build_model(exp, CpuHardware(), meta_dim=3, total_steps=total_steps)
    layers = bn_layers(model)
    assert len(layers) > 30  # the nested backbone's and the metadata branch's
    assert {layer.momentum for layer in layers} == {expected}


def test_device_augmentation_layer_is_prepended_and_weights_move_between_settings(tmp_path: Path) -> None:
    exp = make_exp(augment={"ops": ["dihedral", "color"]}, model={"scratch": {"stages": 2, "width": 8}})
    on_device = build_model(exp, CpuHardware(augment_on_device=True), 0)
    assert "device_augmentation" in [layer.name for layer in on_device.layers]
    x = images(2, 32)
    plain = on_device.predict(x, verbose=0)  # inference: augmentation inactive
    path = str(tmp_path / "fold0.weights.h5")
    save_model_weights(on_device, path)
    host = build_model(exp, CpuHardware(augment_on_device=False), 0)
    assert "device_augmentation" not in [layer.name for layer in host.layers]
    load_model_weights(host, path)
    np.testing.assert_allclose(host.predict(x, verbose=0), plain, rtol=1e-5)


def test_weights_from_a_file_or_folder(tmp_path: Path) -> None:
    spec = BACKBONES["mobilenet_v3_small"]
    source = construct_backbone(spec, None, 64)
    folder = tmp_path / "attached-model" / "1"
    folder.mkdir(parents=True)
    path = folder / "mobilenet_v3_small_notop.weights.h5"
    source.save_weights(path)
    for given in (str(path), str(tmp_path / "attached-model")):
        assert resolve_weights(given, spec.name) == str(path)
        exp = make_exp(data={"image_size": 64}, model={"backbone": spec.name, "weights": given})
        model = build_model(exp, CpuHardware(), 0)
        backbone = next(layer for layer in model_core(model).layers if isinstance(layer, keras.Model))
        for got, want in zip(backbone.get_weights(), source.get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)
    with pytest.raises(ModelWeightsError, match="no weights file there for mobilenet_v3_small"):
        resolve_weights(str(tmp_path / "missing"), spec.name)


def test_weights_folder_with_several_backbones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = ["efficientnetb0_notop.h5", "efficientnetv2-b0_notop.h5", "efficientnetb0.h5",
             "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5", "resnet50v2_weights_tf_kernels_notop.h5"]
    folder = tmp_path / "input" / "keras-weights"
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(b"")
    monkeypatch.setenv("KIT_INPUT_ROOT", str(tmp_path / "input"))
    expect = {"efficientnet_b0": names[0], "efficientnetv2_b0": names[1], "mobilenet_v3_small": names[3],
              "resnet50v2": names[4]}
    for backbone, name in expect.items():
        assert resolve_weights("keras-weights", backbone) == str(folder / name)  # found under the input root
    with pytest.raises(ModelWeightsError, match="no weights file there for densenet121"):
        resolve_weights("keras-weights", "densenet121")


def test_failed_imagenet_download_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache = Path(os.path.expanduser("~/.keras/models"))
    if any(cache.glob("weights_mobilenet_v3_small*")):
        pytest.skip("ImageNet weights are cached here, so no download is attempted")
    monkeypatch.setenv("KIT_INPUT_ROOT", str(tmp_path))
    exp = make_exp(data={"image_size": 64}, model={"backbone": "mobilenet_v3_small", "weights": "imagenet"})
    try:
        build_model(exp, CpuHardware(), 0)
    except ModelWeightsError as exc:
        message = str(exc)
        assert "\n" not in message and "mobilenet_v3_small" in message
        assert "attach the weights" in message and "model.weights" in message
    else:
        pytest.skip("this machine could download the ImageNet weights")
