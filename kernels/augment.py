"""Augmentation registry: each op written once, run on the host (tf.data) or on the accelerator (Keras layer).

In:  a BATCH of images [B, H, W, 3] (uint8 or float32, 0..255), the experiment's ``augment`` section
     (``ops`` in order, per-op ``params`` over each op's documented ``defaults``, ``mix``).
Out: the augmented batch as float32 in 0..255 (same shape); labels untouched except by mixup/cutmix.

- ``AUGMENTATIONS`` maps a name to an `AugSpec`. Adding one is one function and one decorator line:
  a *geometric* op returns per-image 3x3 matrices (output -> source, centred pixel coordinates) and
  consecutive geometric ops are multiplied into ONE projective transform per image, applied to the
  batch in one warp (bilinear sampling, reflect fill); any other op maps the float batch to a float batch.
- Two warps do that (``augment.warp``, `AUG_WARPS`): "projective" is the framework's projective-transform
  op (``tf.raw_ops.ImageProjectiveTransformV3`` on the host and under TensorFlow, ``keras.ops.image.
  affine_transform`` on the device); "fused" (default) computes the same bilinear/reflect sampling as one
  XLA-compiled kernel. They agree to float rounding; on a 2-core CPU a host pipeline with the TF op runs
  at ~0.4x the reference notebook's pipeline, with the fused warp at ~2x it (``make bench`` shows both).
- Every op is written against a small ops namespace: `AugTFOps` (TensorFlow with stateless random
  draws from a seed, for tf.data) or `AugKerasOps` (``keras.ops`` + ``keras.random``, so the same op
  runs inside a Keras layer under the JAX and the TensorFlow backends).
- `host_augment_fn` compiles the whole chain (+ mixup/cutmix) into one function per batch (with the
  fused warp: one XLA kernel, ~2x the reference notebook's per-pixel ``gather_nd`` pipeline).
- `DeviceAugmentation` is the same chain as a float32 Keras layer, active only when training=True.
- `dihedral_view` gives the 8 exact flips/transposes for test-time augmentation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import keras
import tensorflow as tf

from kernels.config import ConfigError, Experiment

AUG_DIHEDRAL_VIEWS = 8
AUG_PIXEL_MAX = 255.0
AUG_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights: the grey a saturation change blends towards
AUG_ZOOM_MIN, AUG_ZOOM_MAX = 0.5, 2.0  # a zoom draw is clipped to this range
AUG_HAIR_RGB = (1.0, 0.8, 0.65)  # hair colour direction (dark brown), scaled by a random darkness
AUG_HAIR_LEVEL = (10.0, 70.0)  # range of the hair's brightest channel, 0..255
AUG_HAIR_RADIUS = (0.5, 3.0)  # radius of a hair's arc, in image sizes (bigger = straighter)
AUG_HAIR_POS = (0.1, 0.9)  # where a hair's mid point lies, as a fraction of the image
AUG_HAIR_LENGTH_SHARE = (0.3, 1.0)  # a hair's length as a share of the ``length`` parameter
AUG_EPS = 1e-6
AUG_HOST_JIT = True  # compile the host chain with XLA (when its warp allows)
AUG_SEED_MAX = 2**31 - 1
AUG_RNG = "philox"  # fixed (auto_select differs by device); XLA and plain TF still draw different streams
AUG_MIX_STREAM = 1_000_003  # fold-in tag of the mixing weights' random stream

AugParams = Mapping[str, float | int | bool]


# ---------------------------------------------------------------------------------------------
# Ops namespaces: the same augmentation code runs on TensorFlow (host) and keras.ops (device).
# ---------------------------------------------------------------------------------------------
class AugTFOps:
    """TensorFlow ops; random draws are stateless, derived from `seed` ([2] ints) one draw at a time."""

    def __init__(self, seed: Any) -> None:
        self.seed = tf.cast(seed, tf.int64)
        self.draws = 0

    def _next(self) -> tf.Tensor:
        self.draws += 1
        return tf.random.experimental.stateless_fold_in(self.seed, self.draws, alg=AUG_RNG)

    def uniform(self, shape: Sequence[Any], low: float = 0.0, high: float = 1.0) -> tf.Tensor:
        return tf.random.stateless_uniform(shape, self._next(), low, high, alg=AUG_RNG)

    def normal(self, shape: Sequence[Any]) -> tf.Tensor:
        return tf.random.stateless_normal(shape, self._next(), alg=AUG_RNG)

    def batch(self, x: Any) -> Any:
        return tf.shape(x)[0]

    cast = staticmethod(tf.cast)
    cos = staticmethod(tf.cos)
    sin = staticmethod(tf.sin)
    tan = staticmethod(tf.tan)
    sqrt = staticmethod(tf.sqrt)
    abs = staticmethod(tf.abs)
    floor = staticmethod(tf.floor)
    log = staticmethod(tf.math.log)
    exp = staticmethod(tf.exp)
    minimum = staticmethod(tf.minimum)
    maximum = staticmethod(tf.maximum)
    clip = staticmethod(tf.clip_by_value)
    where = staticmethod(tf.where)
    stack = staticmethod(tf.stack)
    reshape = staticmethod(tf.reshape)
    matmul = staticmethod(tf.matmul)
    transpose = staticmethod(tf.transpose)
    ones = staticmethod(tf.ones)
    zeros = staticmethod(tf.zeros)

    @staticmethod
    def mean(x: Any, axis: Any, keepdims: bool = False) -> Any:
        return tf.reduce_mean(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def max(x: Any, axis: Any) -> Any:
        return tf.reduce_max(x, axis=axis)

    @staticmethod
    def take(x: Any, indices: Any) -> Any:
        return tf.gather(x, indices)

    @staticmethod
    def take_rows(x: Any, indices: Any) -> Any:
        """Per image: x [B, N, C], indices [B, M] -> [B, M, C] (a gather that keeps the batch axis)."""
        return tf.gather(x, indices, batch_dims=1)

    @staticmethod
    def arange(n: int) -> Any:
        return tf.range(n, dtype=tf.float32)

    @staticmethod
    def projective(images: Any, transforms: Any) -> Any:
        """TensorFlow's projective-transform op: bilinear, reflect fill, [B, 8] output->source rows."""
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=transforms, output_shape=tf.shape(images)[1:3], fill_value=0.0,
            interpolation="BILINEAR", fill_mode="REFLECT")


class AugKerasOps:
    """keras.ops / keras.random (backend-agnostic, XLA-friendly): the device form of every op."""

    def __init__(self, seed_generator: keras.random.SeedGenerator) -> None:
        self.seed_generator = seed_generator

    def uniform(self, shape: Sequence[Any], low: float = 0.0, high: float = 1.0) -> Any:
        return keras.random.uniform(tuple(shape), low, high, seed=self.seed_generator)

    def normal(self, shape: Sequence[Any]) -> Any:
        return keras.random.normal(tuple(shape), seed=self.seed_generator)

    def batch(self, x: Any) -> Any:
        return keras.ops.shape(x)[0]

    @staticmethod
    def cast(x: Any, dtype: Any) -> Any:
        return keras.ops.cast(x, dtype)

    cos = staticmethod(keras.ops.cos)
    sin = staticmethod(keras.ops.sin)
    tan = staticmethod(keras.ops.tan)
    sqrt = staticmethod(keras.ops.sqrt)
    abs = staticmethod(keras.ops.abs)
    floor = staticmethod(keras.ops.floor)
    log = staticmethod(keras.ops.log)
    exp = staticmethod(keras.ops.exp)
    minimum = staticmethod(keras.ops.minimum)
    maximum = staticmethod(keras.ops.maximum)
    clip = staticmethod(keras.ops.clip)
    where = staticmethod(keras.ops.where)
    stack = staticmethod(keras.ops.stack)
    reshape = staticmethod(keras.ops.reshape)
    matmul = staticmethod(keras.ops.matmul)
    transpose = staticmethod(keras.ops.transpose)

    @staticmethod
    def ones(shape: Sequence[Any]) -> Any:
        return keras.ops.ones(tuple(shape))

    @staticmethod
    def zeros(shape: Sequence[Any]) -> Any:
        return keras.ops.zeros(tuple(shape))

    @staticmethod
    def mean(x: Any, axis: Any, keepdims: bool = False) -> Any:
        return keras.ops.mean(x, axis=axis, keepdims=keepdims)

    @staticmethod
    def max(x: Any, axis: Any) -> Any:
        return keras.ops.max(x, axis=axis)

    @staticmethod
    def take(x: Any, indices: Any) -> Any:
        return keras.ops.take(x, indices, axis=0)

    @staticmethod
    def take_rows(x: Any, indices: Any) -> Any:
        """Per image: x [B, N, C], indices [B, M] -> [B, M, C]. A batched gather: under DataParallel each
        device gathers from its own shard (a gather over the flattened batch made XLA all-gather every
        device's images first)."""
        return keras.ops.take_along_axis(x, indices[..., None], axis=1)

    @staticmethod
    def arange(n: int) -> Any:
        return keras.ops.arange(n, dtype="float32")

    @staticmethod
    def projective(images: Any, transforms: Any) -> Any:
        """The backend's projective-transform op (ImageProjectiveTransformV3 under TensorFlow,
        map_coordinates under JAX): bilinear, reflect fill."""
        return keras.ops.image.affine_transform(images, transforms, interpolation="bilinear", fill_mode="reflect")


AugOps = AugTFOps | AugKerasOps


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugSpec:
    """One augmentation: its name, documented default parameters and its implementation.

    ``fn(k, x, params)``: geometric ops get ``x`` = the batch and return [B, 3, 3] output->source
    matrices in centred pixel coordinates; other ops return the augmented float32 batch.
    """

    name: str
    defaults: Mapping[str, float | int | bool]
    fn: Callable[..., Any]
    geometric: bool = False
    doc: str = ""

    def host(self, images: Any, params: AugParams | None = None, seed: Any = None) -> tf.Tensor:
        """This op alone on a batch with TensorFlow (``seed``: [2] ints; None = a random one)."""
        seed = aug_random_seed() if seed is None else seed
        return aug_apply_chain(AugTFOps(seed), tf.convert_to_tensor(images), ((self, aug_params(self, params)),))

    def device(self, images: Any, params: AugParams | None = None, seed: Any = None) -> Any:
        """This op alone on a batch with keras.ops (``seed``: a keras SeedGenerator or an int)."""
        gen = seed if isinstance(seed, keras.random.SeedGenerator) else keras.random.SeedGenerator(seed)
        return aug_apply_chain(AugKerasOps(gen), keras.ops.convert_to_tensor(images),
                               ((self, aug_params(self, params)),))


AUGMENTATIONS: dict[str, AugSpec] = {}


def register_augmentation(
    name: str, defaults: Mapping[str, float | int | bool], geometric: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: add ``fn`` to `AUGMENTATIONS` under ``name`` with its documented ``defaults``."""

    def add(fn: Callable[..., Any]) -> Callable[..., Any]:
        AUGMENTATIONS[name] = AugSpec(name, MappingProxyType(dict(defaults)), fn, geometric, (fn.__doc__ or "").strip())
        return fn

    return add


def aug_params(spec: AugSpec, overrides: AugParams | None) -> dict[str, Any]:
    """The op's defaults updated with the experiment's overrides (the config validated key and type)."""
    params = dict(spec.defaults)
    for key, value in (overrides or {}).items():
        if key not in params:
            raise ConfigError(f"augment.params.{spec.name}.{key}: unknown (expected one of {', '.join(sorted(params))})")
        params[key] = value
    return params


def aug_chain(exp: Experiment) -> tuple[tuple[AugSpec, dict[str, Any]], ...]:
    """The experiment's ops in order, each with its merged parameters."""
    chain = []
    for name in exp.augment.ops:
        if name not in AUGMENTATIONS:
            raise ConfigError(f"augment.ops: unknown augmentation {name!r} (expected one of {', '.join(AUGMENTATIONS)})")
        spec = AUGMENTATIONS[name]
        chain.append((spec, aug_params(spec, exp.augment.params.get(name))))
    return tuple(chain)


def aug_random_seed() -> tf.Tensor:
    """A fresh [2] seed from TensorFlow's global generator (for calls that pass none)."""
    return tf.random.uniform([2], maxval=AUG_SEED_MAX, dtype=tf.int32)


# ---------------------------------------------------------------------------------------------
# Shared helpers (geometry, selection masks, the warp)
# ---------------------------------------------------------------------------------------------
def aug_select(k: AugOps, n: Any, p: float) -> Any:
    """[n] booleans: which images of the batch this op touches (probability ``p``)."""
    return k.uniform([n]) < p


def aug_identity(k: AugOps, n: Any) -> Any:
    """[n, 3, 3] identity matrices."""
    one, zero = k.ones([n]), k.zeros([n])
    return aug_matrix(k, one, zero, zero, zero, one, zero)


def aug_matrix(k: AugOps, a00: Any, a01: Any, a02: Any, a10: Any, a11: Any, a12: Any) -> Any:
    """[n, 3, 3] affine matrices from six [n] rows ((a00 a01 a02), (a10 a11 a12), (0 0 1))."""
    zero = a00 * 0.0
    rows = [k.stack([a00, a01, a02], -1), k.stack([a10, a11, a12], -1), k.stack([zero, zero, zero + 1.0], -1)]
    return k.stack(rows, 1)


def aug_keep(k: AugOps, chosen: Any, mats: Any) -> Any:
    """Per image: ``mats`` where chosen, the identity elsewhere."""
    return k.where(chosen[:, None, None], mats, aug_identity(k, k.batch(mats)))


def aug_reflect(k: AugOps, c: Any, size: int) -> Any:
    """Map a continuous source coordinate into [0, size-1] the way TensorFlow's REFLECT fill does
    (``d c b a | a b c d | d c b a``)."""
    if size <= 1:
        return c * 0.0
    sz2 = 2.0 * size
    low = k.where(c < -sz2, sz2 * k.floor(-c / sz2) + c, c)
    low = k.where(low < -size, low + sz2, -low - 1.0)
    high = c - sz2 * k.floor(c / sz2)
    high = k.where(high >= size, sz2 - high - 1.0, high)
    out = k.where(c < 0.0, low, k.where(c > size - 1.0, high, c))
    return k.clip(out, 0.0, size - 1.0)


def aug_warp(k: AugOps, images: Any, mats: Any) -> Any:
    """Affine warp of a batch: output pixel q samples the source at ``mats @ (q - centre) + centre``
    with bilinear interpolation and reflect fill (matches ImageProjectiveTransformV3 to float error)."""
    height, width, channels = int(images.shape[1]), int(images.shape[2]), int(images.shape[3])
    n = k.batch(images)
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    xs = k.arange(width) - cx
    ys = k.arange(height) - cy
    m = [[mats[:, r, c] for c in range(3)] for r in range(2)]
    sx = m[0][0][:, None, None] * xs[None, None, :] + (m[0][1][:, None] * ys[None, :] + m[0][2][:, None] + cx)[:, :, None]
    sy = m[1][0][:, None, None] * xs[None, None, :] + (m[1][1][:, None] * ys[None, :] + m[1][2][:, None] + cy)[:, :, None]
    sx, sy = aug_reflect(k, sx, width), aug_reflect(k, sy, height)
    fx, fy = k.floor(sx), k.floor(sy)
    wx, wy = (sx - fx)[..., None], (sy - fy)[..., None]
    x0, y0 = k.cast(fx, "int32"), k.cast(fy, "int32")
    x1, y1 = k.minimum(x0 + 1, width - 1), k.minimum(y0 + 1, height - 1)
    flat = k.reshape(images, [n, height * width, channels])

    def pick(yy: Any, xx: Any) -> Any:  # per image, so a batch sharded over devices stays sharded
        rows = k.take_rows(flat, k.reshape(yy * width + xx, [n, height * width]))
        return k.cast(k.reshape(rows, [n, height, width, channels]), "float32")

    top = pick(y0, x0) * (1.0 - wx) + pick(y0, x1) * wx
    bottom = pick(y1, x0) * (1.0 - wx) + pick(y1, x1) * wx
    return top * (1.0 - wy) + bottom * wy


def aug_projective(k: AugOps, images: Any, mats: Any) -> Any:
    """The same warp as `aug_warp` done by the framework's projective-transform op, one transform per
    image: centred output->source matrices become the op's [B, 8] pixel-coordinate rows."""
    height, width = int(images.shape[1]), int(images.shape[2])
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    a00, a01, a02 = mats[:, 0, 0], mats[:, 0, 1], mats[:, 0, 2]
    a10, a11, a12 = mats[:, 1, 0], mats[:, 1, 1], mats[:, 1, 2]
    zero = a00 * 0.0
    rows = [a00, a01, a02 + cx - a00 * cx - a01 * cy, a10, a11, a12 + cy - a10 * cx - a11 * cy, zero, zero]
    return k.projective(k.cast(images, "float32"), k.stack(rows, -1))


AUG_WARPS: Mapping[str, Callable[..., Any]] = MappingProxyType({
    "fused": aug_warp,  # one compiled bilinear/reflect gather per batch (XLA on the host)
    "projective": aug_projective,  # ImageProjectiveTransformV3 / keras.ops.image.affine_transform
})
AUG_XLA_WARPS = frozenset({"fused"})  # warps XLA can compile on a CPU (the TF projective op cannot)


def aug_apply_chain(k: AugOps, images: Any, chain: Sequence[tuple[AugSpec, Mapping[str, Any]]],
                    warp: str = "fused") -> Any:
    """Run ops in order; runs of geometric ops are multiplied into one warp (``warp``: an `AUG_WARPS` name)."""
    warp_fn = AUG_WARPS[warp]
    pending = None
    x = images
    for spec, params in chain:
        if spec.geometric:
            mats = spec.fn(k, x, params)
            pending = mats if pending is None else k.matmul(pending, mats)
            continue
        if pending is not None:
            x, pending = warp_fn(k, x, pending), None
        x = spec.fn(k, k.cast(x, "float32"), params)
    if pending is not None:
        x = warp_fn(k, x, pending)
    return k.cast(x, "float32")


# ---------------------------------------------------------------------------------------------
# The augmentations
# ---------------------------------------------------------------------------------------------
@register_augmentation("dihedral", {"flip_lr": True, "flip_ud": True, "transpose": True}, geometric=True)
def aug_dihedral(k: AugOps, x: Any, params: Mapping[str, Any]) -> Any:
    """One of the 8 flips/transposes per image, uniformly (each flag enables one generator).
    Exact: pixel centres map onto pixel centres."""
    n = k.batch(x)
    one, zero = k.ones([n]), k.zeros([n])

    def coin(enabled: bool) -> Any:
        return k.uniform([n]) < 0.5 if enabled else k.zeros([n]) > 1.0

    lr, ud, tr = coin(params["flip_lr"]), coin(params["flip_ud"]), coin(params["transpose"])
    sx, sy = k.where(lr, -one, one), k.where(ud, -one, one)
    t = k.where(tr, one, zero)
    # flips then transpose: rows (sx*(1-t), sx*t) / (sy*t, sy*(1-t))
    return aug_matrix(k, sx * (1.0 - t), sx * t, zero, sy * t, sy * (1.0 - t), zero)


@register_augmentation(
    "affine", {"p": 1.0, "rotation": 180.0, "shear": 2.0, "zoom": 0.125, "shift": 0.03}, geometric=True
)
def aug_affine(k: AugOps, x: Any, params: Mapping[str, Any]) -> Any:
    """Random affine with probability p: rotation uniform in +-rotation degrees, shear ~ N(0, shear)
    degrees, zoom per axis 1 + N(0, zoom) (clipped to 0.5..2), shift per axis ~ N(0, shift) x size.
    Defaults follow the reference notebook (rotation 180, shear 2, zoom 1/8, shift 8 px at 256)."""
    n = k.batch(x)
    height, width = int(x.shape[1]), int(x.shape[2])
    angle = k.uniform([n], -1.0, 1.0) * (params["rotation"] * math.pi / 180.0)
    shear = k.normal([n]) * (params["shear"] * math.pi / 180.0)
    zx = k.clip(1.0 + params["zoom"] * k.normal([n]), AUG_ZOOM_MIN, AUG_ZOOM_MAX)
    zy = k.clip(1.0 + params["zoom"] * k.normal([n]), AUG_ZOOM_MIN, AUG_ZOOM_MAX)
    tx = k.normal([n]) * (params["shift"] * width)
    ty = k.normal([n]) * (params["shift"] * height)
    c, s, sh = k.cos(angle), k.sin(angle), k.tan(shear)
    # source = R(angle) @ Shear @ diag(1/zx, 1/zy) @ q + t
    a00, a01 = c / zx, (c * sh - s) / zy
    a10, a11 = s / zx, (s * sh + c) / zy
    mats = aug_matrix(k, a00, a01, tx, a10, a11, ty)
    return aug_keep(k, aug_select(k, n, params["p"]), mats)


@register_augmentation("resized_crop", {"p": 1.0, "scale_min": 0.6, "ratio_max": 1.333}, geometric=True)
def aug_resized_crop(k: AugOps, x: Any, params: Mapping[str, Any]) -> Any:
    """With probability p, crop a random box (area fraction in scale_min..1, aspect ratio in
    1/ratio_max..ratio_max, inside the image) and resize it to the full image."""
    n = k.batch(x)
    height, width = int(x.shape[1]), int(x.shape[2])
    area = k.uniform([n], params["scale_min"], 1.0)
    log_ratio = math.log(max(params["ratio_max"], 1.0))
    ratio = k.exp(k.uniform([n], -log_ratio, log_ratio))
    fw = k.minimum(k.sqrt(area * ratio), 1.0)
    fh = k.minimum(k.sqrt(area / ratio), 1.0)
    ox = (k.uniform([n]) - 0.5) * (1.0 - fw) * width
    oy = (k.uniform([n]) - 0.5) * (1.0 - fh) * height
    zero = fw * 0.0
    mats = aug_matrix(k, fw, zero, ox, zero, fh, oy)
    return aug_keep(k, aug_select(k, n, params["p"]), mats)


def aug_colour_matrix_apply(k: AugOps, x: Any, a: Any, t: Any) -> Any:
    """Per image: out = A @ rgb + t for every pixel, clipped to 0..255 (one broadcast expression,
    which XLA fuses better than a matmul or per-channel slices)."""
    out = x[..., 0:1] * a[:, None, None, :, 0] + x[..., 1:2] * a[:, None, None, :, 1]
    out = out + x[..., 2:3] * a[:, None, None, :, 2] + t[:, None, None, :]
    return k.clip(out, 0.0, AUG_PIXEL_MAX)


@register_augmentation("color", {"p": 1.0, "brightness": 0.1, "contrast": 0.2, "saturation": 0.3, "hue": 0.0})
def aug_color(k: AugOps, x: Any, params: Mapping[str, Any]) -> Any:
    """With probability p: saturation x U(1-s, 1+s) (blend with grey), contrast x U(1-c, 1+c) about
    the per-channel mean, brightness + U(-b, b) x 255, hue rotation U(-h, h) degrees about the grey
    axis. All four are linear in RGB, so they are folded into one 3x3 matrix + offset per image.
    Defaults follow the reference notebook (saturation 0.7-1.3, contrast 0.8-1.2, brightness 0.1)."""
    n = k.batch(x)
    eye = aug_identity(k, n)
    luma = k.reshape(k.stack([k.ones([1]) * w for w in AUG_LUMA], -1), [1, 1, 3])
    s = k.uniform([n], 1.0 - params["saturation"], 1.0 + params["saturation"])[:, None, None]
    a = s * eye + (1.0 - s) * k.reshape(k.ones([1, 3]), [1, 3, 1]) * luma  # s*I + (1-s) 1 w^T
    mean = k.matmul(a, k.mean(x, axis=(1, 2))[:, :, None])[:, :, 0]  # channel means after saturation
    c = k.uniform([n], 1.0 - params["contrast"], 1.0 + params["contrast"])[:, None]
    a = a * c[:, :, None]
    t = (1.0 - c) * mean
    t = t + k.uniform([n], -params["brightness"], params["brightness"])[:, None] * AUG_PIXEL_MAX
    theta = k.uniform([n], -1.0, 1.0) * (params["hue"] * math.pi / 180.0)
    cos, sin = k.cos(theta)[:, None, None], k.sin(theta)[:, None, None]
    third = 1.0 / 3.0
    root = math.sqrt(third)
    # Rodrigues rotation about u = (1,1,1)/sqrt(3): cos I + sin [u]x + (1 - cos) u u^T
    cross = k.reshape(k.stack([k.ones([1]) * v for v in (0.0, -root, root, root, 0.0, -root, -root, root, 0.0)], -1),
                      [1, 3, 3])
    hue = cos * eye[:1] + sin * cross + (1.0 - cos) * third
    a = k.matmul(hue, a)
    t = k.matmul(hue, t[:, :, None])[:, :, 0]
    chosen = aug_select(k, n, params["p"])
    a = k.where(chosen[:, None, None], a, eye)
    t = k.where(chosen[:, None], t, t * 0.0)
    return aug_colour_matrix_apply(k, x, a, t)


def aug_box_mask(k: AugOps, cy: Any, cx: Any, hh: Any, hw: Any, height: int, width: int) -> Any:
    """[n, H, W] 0/1 float mask of the union of boxes (centres/half sizes [n, m] in pixels)."""
    ys = k.arange(height)[None, None, :]
    xs = k.arange(width)[None, None, :]
    rows = k.cast(k.abs(ys - cy[:, :, None]) <= hh[:, :, None], "float32")  # [n, m, H]
    cols = k.cast(k.abs(xs - cx[:, :, None]) <= hw[:, :, None], "float32")  # [n, m, W]
    return k.minimum(k.matmul(k.transpose(rows, (0, 2, 1)), cols), 1.0)  # overlaps counted once


@register_augmentation("cutout", {"p": 0.5, "holes": 8, "size": 0.1, "fill": 0.0})
def aug_cutout(k: AugOps, x: Any, params: Mapping[str, Any]) -> Any:
    """Coarse dropout: with probability p, ``holes`` squares of side size x image side (random
    centres, may overlap the border) are filled with ``fill`` (0..255)."""
    n = k.batch(x)
    height, width = int(x.shape[1]), int(x.shape[2])
    holes = max(int(params["holes"]), 1)
    cy = k.uniform([n, holes], 0.0, float(height))
    cx = k.uniform([n, holes], 0.0, float(width))
    chosen = k.cast(aug_select(k, n, params["p"]), "float32")[:, None]
    half = params["size"] * min(height, width) / 2.0
    hh = chosen * half - (1.0 - chosen)  # unchosen images get an empty box (half size -1)
    mask = aug_box_mask(k, cy, cx, hh, hh, height, width)[..., None]
    return x * (1.0 - mask) + mask * float(params["fill"])


@register_augmentation("hair", {"p": 0.3, "max_hairs": 6, "width": 0.006, "length": 0.6, "darkness": 0.85})
def aug_hair(k: AugOps, x: Any, params: Mapping[str, Any]) -> Any:
    """Draw 1..max_hairs thin dark curves (anti-aliased circle arcs) on an image with probability p;
    ``width`` and ``length`` are fractions of the image side, ``darkness`` the opacity (0..1)."""
    n = k.batch(x)
    height, width = int(x.shape[1]), int(x.shape[2])
    size = float(min(height, width))
    m = max(int(params["max_hairs"]), 1)
    chosen = aug_select(k, n, params["p"])
    count = k.floor(k.uniform([n], 1.0, m + 1.0))
    active = k.where(chosen[:, None], k.arange(m)[None, :] < count[:, None], k.zeros([n, m]) > 1.0)
    lo, hi = AUG_HAIR_POS
    py, px = k.uniform([n, m], lo * height, hi * height), k.uniform([n, m], lo * width, hi * width)
    direction = k.uniform([n, m], 0.0, 2.0 * math.pi)
    radius = k.uniform([n, m], *AUG_HAIR_RADIUS) * size
    half_span = k.uniform([n, m], *AUG_HAIR_LENGTH_SHARE) * (params["length"] * size / 2.0) / radius  # half-angle
    cy, cx = py + radius * k.cos(direction), px - radius * k.sin(direction)  # circle centre, normal to the hair
    ys = k.arange(height)[None, None, :, None]
    xs = k.arange(width)[None, None, None, :]
    dy, dx = ys - cy[:, :, None, None], xs - cx[:, :, None, None]
    r = k.sqrt(dy * dy + dx * dx) + AUG_EPS
    rad = radius[:, :, None, None]
    # inside the arc: the angle between (pixel - centre) and (mid point - centre) is below half_span
    cos_angle = (dy * (py - cy)[:, :, None, None] + dx * (px - cx)[:, :, None, None]) / (r * rad)
    inside = cos_angle >= k.cos(half_span)[:, :, None, None]
    half_width = params["width"] * size / 2.0
    cover = k.clip(half_width + 0.5 - k.abs(r - rad), 0.0, 1.0)
    cover = k.where(inside & active[:, :, None, None], cover, cover * 0.0)
    alpha = k.max(cover, axis=1)[..., None] * params["darkness"]  # [n, H, W, 1]
    level = k.uniform([n], *AUG_HAIR_LEVEL)[:, None, None, None]
    rgb = k.reshape(k.stack([k.ones([1]) * v for v in AUG_HAIR_RGB], -1), [1, 1, 1, 3]) * level
    return x * (1.0 - alpha) + rgb * alpha


# ---------------------------------------------------------------------------------------------
# Batch-level mixing (host only: it needs the labels)
# ---------------------------------------------------------------------------------------------
def aug_mix(k: AugTFOps, x: Any, labels: Any, meta: Any, lam: Any, mode: str, prob: float) -> tuple[Any, Any, Any]:
    """Mixup / cutmix each image with its mirror in the batch (image n-1-i), with probability ``prob``.
    ``lam`` [B] ~ Beta(alpha, alpha) is the share of the image itself; labels (and metadata) mix
    by the same share (for cutmix: the share of pixels actually kept)."""
    n = k.batch(x)
    height, width = int(x.shape[1]), int(x.shape[2])
    chosen = aug_select(k, n, prob)
    lam = tf.where(chosen, lam, tf.ones_like(lam))
    other = tf.reverse(x, [0])
    if mode == "mixup":
        share = lam
        x = x * lam[:, None, None, None] + other * (1.0 - lam[:, None, None, None])
    else:
        cut = tf.sqrt(1.0 - lam)
        cy, cx = k.uniform([n], 0.0, float(height)), k.uniform([n], 0.0, float(width))
        y0, y1 = tf.clip_by_value(cy - cut * height / 2, 0, height), tf.clip_by_value(cy + cut * height / 2, 0, height)
        x0, x1 = tf.clip_by_value(cx - cut * width / 2, 0, width), tf.clip_by_value(cx + cut * width / 2, 0, width)
        ys, xs = tf.range(height, dtype=tf.float32) + 0.5, tf.range(width, dtype=tf.float32) + 0.5
        rows = tf.cast((ys[None] >= y0[:, None]) & (ys[None] < y1[:, None]), tf.float32)
        cols = tf.cast((xs[None] >= x0[:, None]) & (xs[None] < x1[:, None]), tf.float32)
        mask = (rows[:, :, None] * cols[:, None, :])[..., None]
        x = x * (1.0 - mask) + other * mask
        share = 1.0 - tf.reduce_sum(rows, 1) * tf.reduce_sum(cols, 1) / float(height * width)
    labels = tf.cast(labels, tf.float32)
    labels = labels * share[:, None] + tf.reverse(labels, [0]) * (1.0 - share[:, None])
    if meta is not None:
        meta = meta * share[:, None] + tf.reverse(meta, [0]) * (1.0 - share[:, None])
    return x, labels, meta


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------
AUG_COMPILED: dict[Any, Any] = {}  # chain -> its tf.function, so TTA passes and folds reuse one XLA compile


def aug_compiled(chain: Sequence[tuple[AugSpec, Mapping[str, Any]]], mode: str, prob: float,
                 warp: str = "fused") -> Any:
    """The (cached) batch function for this chain, mixing mode and warp: XLA-compiled when
    ``AUG_HOST_JIT`` and the warp allows it (the TF projective op has no XLA kernel)."""
    jit = AUG_HOST_JIT and (warp in AUG_XLA_WARPS or not any(spec.geometric for spec, _ in chain))
    key = (tuple((spec.name, tuple(sorted(params.items()))) for spec, params in chain), mode, prob, warp, jit)
    if key not in AUG_COMPILED:

        @tf.function(jit_compile=jit)
        def aug_core(images: Any, labels: Any, meta: Any, seed: Any, lam: Any) -> tuple[Any, Any, Any]:
            k = AugTFOps(seed)
            x = aug_apply_chain(k, images, chain, warp) if chain else tf.cast(images, tf.float32)
            if mode != "none":
                x, labels, meta = aug_mix(k, x, labels, meta, lam, mode, prob)
            return x, labels, meta

        AUG_COMPILED[key] = aug_core
    return AUG_COMPILED[key]


def host_augment_fn(exp: Experiment, mix: bool = True, ops: bool = True) -> Callable[..., tuple[Any, Any]]:
    """For tf.data: ``fn(inputs, labels, seed=None) -> (inputs, labels)`` on a batch.

    ``inputs`` is the image batch (uint8 or float32) or the dict {"image", "meta"}; images come back
    float32 0..255. ``seed`` ([2] ints) makes the draws reproducible (None: a random one). ``ops`` /
    ``mix`` switch the per-image chain and the batch mixing (the device mode keeps only the mixing).
    The chain runs as one compiled function per batch shape (XLA unless ``augment.warp`` = "projective").
    """
    chain = aug_chain(exp) if ops else ()
    mode = exp.augment.mix if mix else "none"
    alpha, prob = exp.augment.mix_alpha, exp.augment.mix_prob
    aug_core = aug_compiled(chain, mode, prob, exp.augment.warp)

    def augment(inputs: Any, labels: Any, seed: Any = None) -> tuple[Any, Any]:
        images, meta = (inputs["image"], inputs.get("meta")) if isinstance(inputs, Mapping) else (inputs, None)
        seed = tf.cast(aug_random_seed() if seed is None else seed, tf.int64)  # a tensor: no retrace per value
        lam = tf.zeros([tf.shape(images)[0]])
        if mode != "none":  # Beta(alpha, alpha) = g1 / (g1 + g2); gamma draws cannot be XLA-compiled
            gseed = tf.random.experimental.stateless_fold_in(seed, AUG_MIX_STREAM, alg=AUG_RNG)
            g = tf.random.stateless_gamma([2, tf.shape(images)[0]], gseed, alpha=alpha)
            lam = tf.math.divide_no_nan(g[0], g[0] + g[1])
        x, labels, meta = aug_core(images, labels, meta, seed, lam)
        if isinstance(inputs, Mapping):
            out = dict(inputs)
            out["image"] = x
            if meta is not None:
                out["meta"] = meta
            return out, labels
        return x, labels

    return augment


class DeviceAugmentation(keras.layers.Layer):
    """The experiment's augmentation chain as a Keras layer (float32, keras.ops only, so it runs on
    a TPU under JAX or a GPU under TensorFlow). Identity unless called with training=True."""

    def __init__(self, ops: Sequence[str] = (), params: Mapping[str, Mapping[str, Any]] | None = None,
                 seed: int = 0, warp: str = "fused", **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.op_names = tuple(ops)
        self.op_params = {name: dict(p) for name, p in (params or {}).items()}
        self.seed = int(seed)
        if warp not in AUG_WARPS:
            raise ValueError(f"DeviceAugmentation: warp {warp!r}, expected one of {sorted(AUG_WARPS)}")
        self.warp = warp
        self.chain = tuple((AUGMENTATIONS[n], aug_params(AUGMENTATIONS[n], self.op_params.get(n))) for n in self.op_names)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if not training or not self.chain:
            return inputs
        return aug_apply_chain(AugKerasOps(self.seed_generator), inputs, self.chain, self.warp)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"ops": list(self.op_names), "params": self.op_params, "seed": self.seed, "warp": self.warp})
        return config


def device_augmentation_layer(exp: Experiment) -> DeviceAugmentation | None:
    """The on-device augmentation layer for this experiment, or None when it has no ops.
    (Mixup/cutmix need labels, so they stay on the host even in device mode.)"""
    if not exp.augment.ops:
        return None
    params = {name: dict(p) for name, p in exp.augment.params.items()}
    return DeviceAugmentation(exp.augment.ops, params, seed=exp.seed, warp=exp.augment.warp, name="device_augmentation")


def dihedral_view(images: Any, k: int) -> tf.Tensor:
    """View ``k`` (0..7) of an image [H, W, C] or a batch [B, H, W, C]: bit 0 flips left-right,
    bit 1 flips up-down, bit 2 transposes (applied first). The 8 views are the dihedral group."""
    if not 0 <= k < AUG_DIHEDRAL_VIEWS:
        raise ValueError(f"dihedral_view: k={k}, expected 0..{AUG_DIHEDRAL_VIEWS - 1}")
    x = tf.convert_to_tensor(images)
    rank = len(x.shape)
    if k & 4:
        perm = list(range(rank))
        perm[-3], perm[-2] = perm[-2], perm[-3]
        x = tf.transpose(x, perm)
    if k & 1:
        x = tf.reverse(x, [rank - 2])
    if k & 2:
        x = tf.reverse(x, [rank - 3])
    return x
