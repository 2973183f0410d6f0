"""CPU rehearsal speed-ups that keep the maths: depthwise-convolution weight gradients by slices (TPU
rehearsal), TensorFlow's graph optimiser off (GPU rehearsal).

In:  nothing at import; `install_rehearsal_ops(hw)` and `quicken_gpu_rehearsal(hw)` are called once by
     `kernels.main` after the hardware is detected.
Out: under a TPU rehearsal (``KIT_REHEARSE=tpu``: the JAX backend on virtual CPU devices) Keras' JAX
     ``depthwise_conv`` is replaced by `depthwise_conv_sliced`, whose forward pass and input gradient are
     XLA's own and whose kernel gradient is the same sum computed tap by tap; returns True when installed.
     Anywhere else (a real TPU or GPU, the CPU route, the TensorFlow backend) nothing changes.

Why: XLA's CPU backend lowers the kernel gradient of a grouped convolution (``feature_group_count`` =
channels) to a dense convolution over channels x channels: for EfficientNet-B6 at 32 px that is about 3 s of a
3.3 s training step on one device (0.47 s for one 3x3 depthwise layer of 3,456 channels, against 0.001 s for
its input gradient). The tap-by-tap form, grad[i, j, c] = sum over n, h, w of x_padded[n, h*s + i, w*s + j, c]
* g[n, h, w, c], is k*k multiply-adds over the activations: the rehearsal's step drops to about 0.7 s while
computing the same numbers (tests/test_rehearsal_ops.py compares both gradients). Accelerators never see it.
"""

from __future__ import annotations

import functools
from typing import Any

REHEARSAL_OPS_TARGET = "tpu"  # the rehearsal whose backend (JAX on CPU devices) needs it
REHEARSAL_GRAPH_TARGET = "gpu"  # the rehearsal whose backend (TensorFlow graphs, no XLA) runs Grappler
REHEARSAL_SPATIAL_DIMS = 2  # images: NHWC


def _rehearsal_depthwise(x: Any, w: Any, strides: tuple[int, int], pads: tuple[tuple[int, int], ...]) -> Any:
    """XLA's depthwise convolution (NHWC input, HWIO kernel with I = 1 and O = channels)."""
    from jax import lax

    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=x.shape[-1])


@functools.cache
def _rehearsal_sliced_op() -> Any:
    """The custom-gradient depthwise convolution (built on first use: JAX is imported only under JAX)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
    def op(x: Any, w: Any, strides: tuple[int, int], pads: tuple[tuple[int, int], ...]) -> Any:
        return _rehearsal_depthwise(x, w, strides, pads)

    def forward(x: Any, w: Any, strides: tuple[int, int], pads: tuple[tuple[int, int], ...]) -> Any:
        return _rehearsal_depthwise(x, w, strides, pads), (x, w)

    def backward(strides: tuple[int, int], pads: tuple[tuple[int, int], ...], saved: Any, g: Any) -> Any:
        x, w = saved
        _, input_vjp = jax.vjp(lambda x_: _rehearsal_depthwise(x_, w, strides, pads), x)
        (grad_x,) = input_vjp(g)
        padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0))).astype(jnp.float32)
        g32 = g.astype(jnp.float32)  # accumulate in float32 under mixed precision, as the convolution does
        (sh, sw), (oh, ow) = strides, g.shape[1:3]
        taps = [
            jnp.sum(lax.slice(padded, (0, i, j, 0), (padded.shape[0], i + (oh - 1) * sh + 1,
                                                      j + (ow - 1) * sw + 1, padded.shape[3]), (1, sh, sw, 1)) * g32,
                    axis=(0, 1, 2))
            for i in range(w.shape[0]) for j in range(w.shape[1])
        ]
        return grad_x, jnp.stack(taps).reshape(w.shape).astype(w.dtype)

    op.defvjp(forward, backward)
    return op


def depthwise_conv_sliced(stock: Any) -> Any:
    """A drop-in for Keras' JAX ``depthwise_conv``: 2-D, channels-last, depth multiplier 1, no dilation go
    through the sliced-gradient op; every other call goes to ``stock`` unchanged."""

    def depthwise_conv(inputs: Any, kernel: Any, strides: Any = 1, padding: str = "valid",
                       data_format: str | None = None, dilation_rate: Any = 1) -> Any:
        import jax.numpy as jnp
        import keras
        from jax import lax

        fmt = data_format or keras.config.image_data_format()
        dilation = (dilation_rate,) * REHEARSAL_SPATIAL_DIMS if isinstance(dilation_rate, int) else tuple(dilation_rate)
        shape = getattr(kernel, "shape", ())
        if (fmt != "channels_last" or len(getattr(inputs, "shape", ())) != REHEARSAL_SPATIAL_DIMS + 2
                or len(shape) != REHEARSAL_SPATIAL_DIMS + 2 or shape[-1] != 1 or set(dilation) != {1}):
            return stock(inputs, kernel, strides, padding, data_format, dilation_rate)
        x, k = keras.ops.convert_to_tensor(inputs), keras.ops.convert_to_tensor(kernel)
        k = jnp.reshape(k, (*k.shape[:2], 1, k.shape[2]))
        step = (strides,) * REHEARSAL_SPATIAL_DIMS if isinstance(strides, int) else tuple(strides)
        pads = tuple(tuple(p) for p in lax.padtype_to_pads(x.shape[1:3], k.shape[:2], step, padding.upper()))
        return _rehearsal_sliced_op()(x, k, step, pads)

    depthwise_conv.stock = stock  # type: ignore[attr-defined]
    return depthwise_conv


def install_rehearsal_ops(hw: Any) -> bool:
    """Under a TPU rehearsal on the JAX backend, route Keras' depthwise convolutions through
    `depthwise_conv_sliced` (once); True when it is in place."""
    if getattr(hw, "rehearsal", "") != REHEARSAL_OPS_TARGET or getattr(hw, "backend", "") != "jax":
        return False
    try:
        from keras.src.backend.jax import nn as jax_nn  # Keras 3's JAX ops: the one place depthwise_conv lives
    except ImportError:  # another Keras layout: the rehearsal is slower, not wrong
        return False
    if not hasattr(jax_nn, "depthwise_conv"):
        return False
    if not hasattr(jax_nn.depthwise_conv, "stock"):
        jax_nn.depthwise_conv = depthwise_conv_sliced(jax_nn.depthwise_conv)
    return True


def quicken_gpu_rehearsal(hw: Any) -> bool:
    """Under a GPU rehearsal (``KIT_REHEARSE=gpu``: TensorFlow MirroredStrategy on logical CPU devices, no XLA),
    switch TensorFlow's graph optimiser (Grappler) off; True when done. Anywhere else nothing changes.

    Grappler rewrites each compiled function once, at its first call: for EfficientNet-B6's train step over two
    replicas that is about a minute of a 2-core CPU (B0: 10 s of a 38 s first step). Its rewrites (op fusion,
    layout, constant folding, pruning) make a graph faster, not different: the same ops compute the same
    values, so the rehearsal still shows what the GPU route computes, shapes, dtypes, the loss scale and a
    non-finite loss, while a real GPU keeps Grappler."""
    if getattr(hw, "rehearsal", "") != REHEARSAL_GRAPH_TARGET or getattr(hw, "backend", "") != "tensorflow":
        return False
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    return True
