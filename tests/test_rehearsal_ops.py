"""The TPU rehearsal's depthwise convolution (`kernels.rehearsal`): same forward values and same gradients as
XLA's grouped convolution, installed only under a TPU rehearsal on JAX, and in use inside Keras' layer."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from kernels.rehearsal import install_rehearsal_ops
from kernels.strategy import Hardware

ROOT = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent("""
    import numpy as np
    import jax, keras
    from jax import lax
    from kernels.rehearsal import depthwise_conv_sliced, install_rehearsal_ops
    from kernels.strategy import Hardware
    from keras.src.backend.jax import nn as jax_nn

    stock = jax_nn.depthwise_conv
    sliced = depthwise_conv_sliced(stock)
    rng = np.random.default_rng(0)
    cases = 0
    for size, channels, k, stride, padding, dtype in [
        (9, 5, 3, 1, "same", "float32"), (9, 5, 3, 2, "same", "float32"), (8, 4, 5, 2, "valid", "float32"),
        (7, 6, 5, 1, "valid", "float32"), (6, 3, 3, 2, "same", "bfloat16"), (1, 7, 3, 1, "same", "float32"),
    ]:
        x = rng.normal(size=(2, size, size, channels)).astype("float32")
        w = rng.normal(size=(k, k, channels, 1)).astype("float32")
        x, w = jax.numpy.asarray(x, dtype), jax.numpy.asarray(w, dtype)
        def loss(fn, x, w):
            return (fn(x, w, stride, padding) ** 2).astype("float32").sum()
        want = jax.grad(lambda x, w: loss(stock, x, w), argnums=(0, 1))(x, w)
        got = jax.jit(jax.grad(lambda x, w: loss(sliced, x, w), argnums=(0, 1)))(x, w)
        tol = 5e-2 if dtype == "bfloat16" else 1e-4
        np.testing.assert_allclose(np.asarray(sliced(x, w, stride, padding), "float32"),
                                   np.asarray(stock(x, w, stride, padding), "float32"), rtol=tol, atol=tol)
        for a, b in zip(got, want):
            np.testing.assert_allclose(np.asarray(a, "float32"), np.asarray(b, "float32"), rtol=tol, atol=tol * 10)
        cases += 1

    # installed only for a TPU rehearsal, and then used by Keras' own DepthwiseConv2D (its kernel gradient too)
    assert not install_rehearsal_ops(Hardware("cpu", "jax", 1, ("cpu:0",)))
    assert jax_nn.depthwise_conv is stock
    assert install_rehearsal_ops(Hardware("tpu", "jax", 8, ("cpu:0",), rehearsal="tpu"))
    assert jax_nn.depthwise_conv is not stock and jax_nn.depthwise_conv.stock is stock
    layer = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False)
    x = jax.numpy.asarray(rng.normal(size=(1, 8, 8, 4)), "float32")
    layer.build(x.shape)
    kernel = layer.kernel.value
    def layer_loss(kv):
        out, _ = layer.stateless_call([kv], [], x)
        return (out ** 2).sum()
    def stock_loss(kv):
        return (stock(x, kv, 2, "same") ** 2).sum()
    # XLA's kernel gradient of a depthwise convolution is a convolution with batch_group_count = channels
    assert "batch_group_count=4" in str(jax.make_jaxpr(jax.grad(stock_loss))(kernel))
    assert "batch_group_count=4" not in str(jax.make_jaxpr(jax.grad(layer_loss))(kernel))
    np.testing.assert_allclose(np.asarray(jax.grad(layer_loss)(kernel)), np.asarray(jax.grad(stock_loss)(kernel)),
                               rtol=1e-4, atol=1e-4)
    print("OK", cases)
""")


def test_sliced_depthwise_gradient_equals_xla_and_is_used_by_keras() -> None:
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "OK 6" in proc.stdout


def test_not_installed_off_the_tpu_rehearsal() -> None:
    for hw in (Hardware("gpu", "tensorflow", 2, ("cpu:0", "cpu:1"), rehearsal="gpu"),
               Hardware("tpu", "jax", 8, ("tpu:0",)),
               Hardware("cpu", "tensorflow", 1, ("cpu:0",))):
        assert not install_rehearsal_ops(hw)


def test_gpu_rehearsal_switches_grappler_off_and_nothing_else_does() -> None:
    """Only the GPU rehearsal (TensorFlow on logical CPU devices) turns TensorFlow's graph optimiser off."""
    import tensorflow as tf

    from kernels.rehearsal import quicken_gpu_rehearsal

    for hw in (Hardware("gpu", "tensorflow", 2, ("gpu:0", "gpu:1")), Hardware("cpu", "tensorflow", 1, ("cpu:0",)),
               Hardware("tpu", "jax", 8, ("cpu:0",), rehearsal="tpu")):
        assert not quicken_gpu_rehearsal(hw)
        assert not tf.config.optimizer.get_experimental_options().get("disable_meta_optimizer", False)
    try:
        assert quicken_gpu_rehearsal(Hardware("gpu", "tensorflow", 2, ("CPU:0", "CPU:1"), rehearsal="gpu"))
        assert tf.config.optimizer.get_experimental_options()["disable_meta_optimizer"] is True
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": False})
