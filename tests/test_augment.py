"""kernels.augment: the registry, every op on the host (TensorFlow + XLA) and on the device (keras.ops),
the warp against TensorFlow's own projective-transform op, mixing, TTA views and the Keras layer.

Real TensorFlow on tiny images; the JAX-backend run of the device layer is in tests/test_strategy.py
(one subprocess for the whole JAX route).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import kernels.augment as augment_module
from kernels.augment import (
    AUGMENTATIONS,
    AugTFOps,
    DeviceAugmentation,
    aug_warp,
    device_augmentation_layer,
    dihedral_view,
    host_augment_fn,
)
from kernels.config import ConfigError, from_dict
from kit.config import known_registries

REQUIRED_OPS = ("dihedral", "affine", "color", "cutout", "hair", "resized_crop")
SIZE = 33  # odd: the centre pixel is a pixel centre
BATCH = 12


def experiment(ops: list[str] | tuple[str, ...] = (), params: dict | None = None, **augment: object):
    return from_dict({"name": "t", "seed": 3, "augment": {"ops": list(ops), "params": params or {}, **augment}},
                     known=known_registries())


def batch(seed: int = 0, size: int = SIZE, n: int = BATCH) -> np.ndarray:
    """Smooth random colour images (uint8) with some texture, so warps and colour changes show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(40, 215, (n, 1, 1, 3))
    waves = 30 * np.sin(2 * np.pi * (rng.uniform(1, 3, (n, 1, 1, 3)) * x[None, ..., None] + y[None, ..., None]))
    return np.clip(base + waves + rng.normal(0, 5, (n, size, size, 3)), 0, 255).astype(np.uint8)


def labels(n: int = BATCH) -> np.ndarray:
    return (np.arange(n) % 2).astype(np.float32)[:, None]


def run_host(ops, params=None, images=None, seed=(1, 2), jit: bool = False, **augment):
    """One host augmentation call. XLA compilation (what tf.data runs) costs seconds per chain, so
    property tests run the same graph uncompiled; the XLA path is checked where it says jit=True."""
    previous = augment_module.AUG_HOST_JIT
    augment_module.AUG_HOST_JIT = jit
    try:
        fn = host_augment_fn(experiment(ops, params, **augment))
    finally:
        augment_module.AUG_HOST_JIT = previous
    x = batch() if images is None else images
    out, y = fn(tf.constant(x), tf.constant(labels(len(x))), seed=tf.constant(seed))
    return x, out.numpy(), y.numpy()


# ------------------------------------------------------------------ registry and config


def test_registry_names_defaults_and_docs() -> None:
    for name in REQUIRED_OPS:
        spec = AUGMENTATIONS[name]
        assert spec.name == name and spec.doc
        assert spec.defaults and all(isinstance(v, (bool, int, float)) for v in spec.defaults.values())
    assert {"dihedral", "affine", "resized_crop"} == {n for n, s in AUGMENTATIONS.items() if s.geometric}


def test_config_validates_params_against_defaults() -> None:
    exp = experiment(["affine"], {"affine": {"rotation": 45, "p": 0.5}})
    assert exp.augment.params["affine"]["rotation"] == 45
    with pytest.raises(ConfigError, match=r"augment\.params\.affine\.spin"):
        experiment(["affine"], {"affine": {"spin": 1.0}})
    with pytest.raises(ConfigError, match=r"augment\.params\.cutout\.holes"):
        experiment(["cutout"], {"cutout": {"holes": 2.5}})
    with pytest.raises(ConfigError, match=r"augment\.ops\[0\]"):
        experiment(["sharpen"])


# ------------------------------------------------------------------ every op, host and device


@pytest.mark.parametrize("name", REQUIRED_OPS)
def test_each_op_keeps_shape_dtype_range_and_labels(name: str) -> None:
    spec = AUGMENTATIONS[name]
    params = {"p": 1.0} if "p" in spec.defaults else {}
    x, out, y = run_host([name], {name: params} if params else None)
    assert out.shape == x.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 255.0
    np.testing.assert_array_equal(y, labels())
    assert np.abs(out - x).max() > 1.0, f"{name} changed nothing"
    device = np.asarray(spec.device(x.astype(np.float32), params, seed=5))
    assert device.shape == x.shape and device.dtype == np.float32
    assert np.isfinite(device).all() and device.min() >= 0.0 and device.max() <= 255.0
    assert np.abs(device - x).max() > 1.0


@pytest.mark.parametrize("name", [n for n in REQUIRED_OPS if "p" in AUGMENTATIONS[n].defaults])
def test_probability_zero_is_identity(name: str) -> None:
    x, out, _ = run_host([name], {name: {"p": 0.0}})
    np.testing.assert_allclose(out, x, atol=1e-3)


def test_same_seed_same_draws_other_seed_other_draws() -> None:
    fn = host_augment_fn(experiment(["dihedral", "affine"]))  # XLA-compiled, as in tf.data
    x, y = tf.constant(batch()), tf.constant(labels())
    a, b, c = (fn(x, y, seed=seed)[0].numpy() for seed in ([4, 5], np.array([4, 5]), [4, 6]))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1.0
    assert a.min() >= 0 and a.max() <= 255


# ------------------------------------------------------------------ geometry


def test_warp_matches_tensorflow_projective_transform_bilinear_reflect() -> None:
    """The XLA-friendly warp reproduces ImageProjectiveTransformV3 (BILINEAR, REFLECT) incl. far reflections."""
    rng = np.random.default_rng(0)
    h, w = 20, 27
    x = rng.uniform(0, 255, (6, h, w, 3)).astype(np.float32)
    centred = rng.normal(0, 0.9, (6, 3, 3)).astype(np.float32)
    centred[:, 2] = (0, 0, 1)
    centred[:, :2, 2] *= 30
    shift = np.array([[1, 0, (w - 1) / 2], [0, 1, (h - 1) / 2], [0, 0, 1]], np.float32)
    pixel = shift @ centred @ np.linalg.inv(shift)
    ref = tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=pixel.reshape(6, 9)[:, :8], output_shape=[h, w], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT")
    ours = aug_warp(AugTFOps([0, 0]), tf.constant(x), tf.constant(centred))
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=0.02)
    jit = tf.function(lambda a, m: aug_warp(AugTFOps([0, 0]), a, m), jit_compile=True)
    np.testing.assert_allclose(jit(tf.constant(x), tf.constant(centred)).numpy(), ref.numpy(), atol=0.02)


def test_projective_op_warp_matches_the_fused_warp_on_host_and_device() -> None:
    """augment.warp = "projective" (TF's op on the host, keras.ops.image.affine_transform on the device)
    gives the fused warp's images for the same draws; with XLA on, the host chain runs uncompiled."""
    ops = ["dihedral", "affine", "resized_crop", "color"]
    x, fused, _ = run_host(ops, warp="fused")
    _, projective, _ = run_host(ops, warp="projective")
    assert np.abs(fused - x).max() > 10.0
    np.testing.assert_allclose(projective, fused, atol=0.05)
    _, compiled, y = run_host(ops, warp="projective", jit=True)
    assert compiled.shape == x.shape and compiled.min() >= 0.0 and compiled.max() <= 255.0
    np.testing.assert_array_equal(y, labels())
    outs = {}
    for warp in ("fused", "projective"):
        layer = DeviceAugmentation(ops, {"affine": {"p": 1.0}}, seed=4, warp=warp)
        outs[warp] = np.asarray(layer(x.astype(np.float32), training=True))
        assert layer.get_config()["warp"] == warp
    np.testing.assert_allclose(outs["projective"], outs["fused"], atol=0.05)
    assert np.abs(outs["fused"] - x).max() > 10.0
    with pytest.raises(ValueError, match="warp 'nearest'"):
        DeviceAugmentation(ops, warp="nearest")
    with pytest.raises(ConfigError, match=r"augment\.warp"):
        experiment(ops, warp="nearest")


def test_dihedral_views_are_the_eight_exact_flips_and_transposes() -> None:
    x = batch(1, size=8, n=2)
    views = [dihedral_view(tf.constant(x), k).numpy() for k in range(8)]
    expected = [np.rot90(x, k, axes=(1, 2)) for k in range(4)]
    expected += [np.flip(e, axis=2) for e in expected]
    as_bytes = {v.tobytes() for v in views}
    assert len(as_bytes) == 8 and as_bytes == {e.tobytes() for e in expected}
    np.testing.assert_array_equal(dihedral_view(tf.constant(x[0]), 5).numpy(), views[5][0])  # single image
    with pytest.raises(ValueError):
        dihedral_view(x, 8)


def test_dihedral_op_gives_exact_views_and_all_eight_occur() -> None:
    x = np.repeat(batch(2, size=8, n=1), 64, axis=0)
    _, out, _ = run_host(["dihedral"], images=x, jit=True)
    views = {dihedral_view(tf.constant(x[0]), k).numpy().astype(np.float32).tobytes(): k for k in range(8)}
    seen = {views[o.tobytes()] for o in out}  # KeyError if any output is not an exact view
    assert seen == set(range(8))


def test_affine_rotation_keeps_the_centre_and_no_transform_is_identity() -> None:
    still = {"rotation": 0.0, "shear": 0.0, "zoom": 0.0, "shift": 0.0}
    x, out, _ = run_host(["affine"], {"affine": still})
    np.testing.assert_allclose(out, x, atol=1e-3)
    x, out, _ = run_host(["affine"], {"affine": {**still, "rotation": 180.0}})
    c = SIZE // 2
    np.testing.assert_allclose(out[:, c, c], x[:, c, c], atol=1e-3)
    assert np.abs(out - x).mean() > 5.0


def test_resized_crop_zooms_in_without_flipping() -> None:
    ramp = np.tile(np.linspace(0, 255, SIZE, dtype=np.float32)[None, None, :, None], (BATCH, SIZE, 1, 3))
    _, out, _ = run_host(["resized_crop"], {"resized_crop": {"scale_min": 0.3}}, images=ramp.astype(np.uint8))
    rows = out[:, SIZE // 2, :, 0]
    assert (np.diff(rows, axis=1) >= -1e-3).all()  # still increasing left to right
    slope = (rows[:, -1] - rows[:, 0]) / (SIZE - 1)
    original = 255 / (SIZE - 1)  # a crop shown at full size: each output pixel steps less across the ramp
    assert (slope <= original + 1e-3).all() and slope.min() < 0.9 * original and slope.min() > 0.5 * original


# ------------------------------------------------------------------ colour, cutout, hair


def test_colour_brightness_shifts_contrast_keeps_means_grey_stays_grey() -> None:
    mid = np.full((BATCH, SIZE, SIZE, 3), 128, np.uint8) + batch(3).astype(np.uint8) // 8
    off = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}
    x, out, _ = run_host(["color"], {"color": {**off, "brightness": 0.1}}, images=mid)
    shift = (out - x).reshape(BATCH, -1)
    assert np.ptp(shift, axis=1).max() < 1e-3 and np.abs(shift[:, 0]).max() <= 25.5 + 1e-3
    x, out, _ = run_host(["color"], {"color": {**off, "contrast": 0.5}}, images=mid)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), x.mean(axis=(1, 2)), atol=0.05)
    grey = np.repeat(batch(4)[..., :1], 3, axis=-1)
    _, out, _ = run_host(["color"], {"color": {**off, "saturation": 0.5, "hue": 30.0}}, images=grey)
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-2)
    np.testing.assert_allclose(out[..., 1], out[..., 2], atol=1e-2)
    _, out, _ = run_host(["color"], {"color": {**off, "hue": 60.0}})
    assert np.abs(out - batch()).max() > 5.0  # hue moves colours


def test_cutout_blanks_square_holes_only() -> None:
    x, out, _ = run_host(["cutout"], {"cutout": {"p": 1.0, "holes": 1, "size": 0.25, "fill": 0.0}})
    changed = np.any(out != x, axis=-1)
    side = int(0.25 * SIZE) + 1
    for i in range(BATCH):
        assert (out[i][changed[i]] == 0).all()
        assert changed[i].sum() <= side * side
        ys, xs = np.nonzero(changed[i])
        if len(ys):  # the hole is one rectangle
            assert changed[i][ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()
    assert changed.any(axis=(1, 2)).mean() > 0.5


def test_hair_draws_thin_dark_curves() -> None:
    white = np.full((BATCH, 64, 64, 3), 250, np.uint8)
    x, out, _ = run_host(["hair"], {"hair": {"p": 1.0, "max_hairs": 3}}, images=white)
    assert (out <= x + 1e-3).all()  # only darkens
    dark = (out < 200).all(axis=-1)
    assert dark.any(axis=(1, 2)).all()  # every image got a hair
    assert dark.mean() < 0.1  # thin


# ------------------------------------------------------------------ batch mixing


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mix_blends_images_and_labels_by_the_same_share(mode: str) -> None:
    n = 16
    images = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    images[: n // 2] = 200  # image i is 200 and its mirror partner n-1-i is 0 (and vice versa)
    y = np.zeros((n, 1), np.float32)
    y[: n // 2] = 1.0
    exp = experiment([], mix=mode, mix_prob=1.0, mix_alpha=1.0)
    out, lab = host_augment_fn(exp)(tf.constant(images), tf.constant(y), seed=tf.constant([9, 9]))
    share = out.numpy().mean(axis=(1, 2, 3)) / 200.0
    np.testing.assert_allclose(lab.numpy()[:, 0], share, atol=1e-4)
    assert ((lab.numpy() > 0.01) & (lab.numpy() < 0.99)).any()
    assert (lab.numpy() >= 0).all() and (lab.numpy() <= 1).all()


def test_mix_off_keeps_labels_and_mix_with_metadata_mixes_meta() -> None:
    exp = experiment(["color"], mix="mixup", mix_prob=1.0)
    fn = host_augment_fn(exp, mix=False)
    x = batch()
    out, y = fn({"image": tf.constant(x), "meta": tf.ones([BATCH, 4])}, tf.constant(labels()), seed=[1, 1])
    np.testing.assert_array_equal(y.numpy(), labels())
    assert set(out) == {"image", "meta"} and out["image"].dtype == tf.float32
    meta = np.arange(BATCH, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)
    out, y = host_augment_fn(exp)({"image": tf.constant(x), "meta": tf.constant(meta)}, tf.constant(labels()),
                                  seed=[1, 1])
    share = (y.numpy()[:, 0] - labels()[::-1, 0]) / (labels()[:, 0] - labels()[::-1, 0])
    np.testing.assert_allclose(out["meta"].numpy()[:, 0], share * meta[:, 0] + (1 - share) * meta[::-1, 0],
                               atol=1e-4)


# ------------------------------------------------------------------ the device layer (TensorFlow backend here)


def test_device_layer_is_identity_at_inference_and_augments_in_training() -> None:
    exp = experiment(["dihedral", "affine", "color", "cutout", "hair"])
    layer = device_augmentation_layer(exp)
    assert isinstance(layer, DeviceAugmentation) and layer.dtype_policy.name == "float32"
    x = batch().astype(np.float32)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    out = np.asarray(layer(x, training=True))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255 and np.abs(out - x).max() > 1
    assert device_augmentation_layer(experiment([])) is None
    clone = DeviceAugmentation.from_config(layer.get_config())
    assert clone.op_names == layer.op_names and clone.seed == layer.seed


def test_device_layer_trains_inside_a_mixed_precision_model() -> None:
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        inp = keras.Input((SIZE, SIZE, 3), dtype="float32")
        x = device_augmentation_layer(experiment(["dihedral", "affine", "color"]))(inp)
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(x))
        model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", dtype="float32")(x))
        model.compile("adam", "binary_crossentropy")
        history = model.fit(batch().astype(np.float32), labels(), epochs=2, batch_size=4, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
    finally:
        keras.mixed_precision.set_global_policy("float32")
