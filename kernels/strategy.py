"""Hardware strategy: find the accelerator and decide how to train on it.

In:  the experiment (``train.mixed_precision``, ``train.jit_compile``, ``augment.where``,
     ``train.batch_size``, ``train.lr``, ``train.reference_batch``) and the Keras backend chosen by
     `kernels.bootstrap.select_backend` before Keras was imported.
Out: a `Hardware` record (kind, backend, replicas, devices, strategy, precision, jit, where the
     augmentation runs), printed once; the Keras mixed-precision policy and, under JAX with several
     devices, the Keras ``DataParallel`` distribution are set as side effects of `detect_hardware`.

Routes: JAX backend -> ``jax.devices()`` (TPU, GPUs or CPU), ``keras.distribution.DataParallel``
over them when there are several (Kaggle's TPU v5e-8 route). TensorFlow backend -> on a TPU host,
``TPUClusterResolver(tpu="local")`` + ``TPUStrategy`` if this TensorFlow can drive the TPU (falls back
otherwise); several GPUs -> ``MirroredStrategy``; else the default strategy (one GPU or the CPU).
Precision ``auto``: bfloat16 on TPU, float16 on GPU, float32 on CPU (mixed bfloat16 is slower on a
CPU); XLA ``auto``: on for TPU/GPU, off on CPU (compiling is far slower there); augmentation
``auto``: on the device for TPU/GPU, on the host (tf.data) on a CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kernels.bootstrap import tpu_visible
from kernels.config import Experiment

HW_POLICY = {"tpu": "mixed_bfloat16", "gpu": "mixed_float16", "cpu": None}
HW_POLICY_FORCED_CPU = "mixed_bfloat16"  # train.mixed_precision = "on" on a CPU
HW_JAX_KINDS = {"tpu": "tpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu"}
HW_SHOWN_DEVICES = 4  # devices listed in the printed summary


@dataclass(frozen=True)
class Hardware:
    """What `detect_hardware` found and decided."""

    kind: str  # "tpu" | "gpu" | "cpu"
    backend: str  # "jax" | "tensorflow"
    replicas: int
    devices: tuple[str, ...]
    strategy: Any = field(default=None, compare=False, repr=False)  # tf.distribute.Strategy, None under JAX
    mixed_precision: str | None = None  # "mixed_bfloat16" | "mixed_float16" | None
    jit_compile: bool = False
    augment_on_device: bool = False


def hw_policy(mode: str, kind: str) -> str | None:
    """The Keras mixed-precision policy for ``train.mixed_precision`` on this kind of hardware."""
    if mode == "off":
        return None
    if mode == "on":
        return HW_POLICY[kind] or HW_POLICY_FORCED_CPU
    return HW_POLICY[kind]


def hw_switch(mode: str, auto: bool) -> bool:
    """An auto/on/off switch."""
    return {"on": True, "off": False}.get(mode, auto)


def hw_detect_jax() -> tuple[str, tuple[str, ...], int, Any]:
    """(kind, devices, replicas, None) from jax.devices(); sets DataParallel over several devices."""
    import jax
    import keras

    devices = jax.devices()
    kind = HW_JAX_KINDS.get(devices[0].platform, "cpu")
    names = tuple(f"{d.platform}:{d.id}" for d in devices)
    if len(devices) > 1:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    else:
        keras.distribution.set_distribution(None)
    return kind, names, len(devices), None


def hw_tpu_strategy() -> Any:
    """TensorFlow's TPUStrategy on a local TPU, or None (with the reason printed) when TF cannot drive it."""
    import tensorflow as tf

    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except (ValueError, RuntimeError, NotImplementedError, tf.errors.OpError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"[kit] TensorFlow cannot use a TPU here ({type(exc).__name__}: {reason}); "
              "set backend = 'jax' to train on it. Falling back.")
        return None


def hw_detect_tf() -> tuple[str, tuple[str, ...], int, Any]:
    """(kind, devices, replicas, strategy) under the TensorFlow backend."""
    import tensorflow as tf

    if tpu_visible():
        strategy = hw_tpu_strategy()
        if strategy is not None:
            names = tuple(d.name for d in tf.config.list_logical_devices("TPU"))
            return "tpu", names, int(strategy.num_replicas_in_sync), strategy
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
        return "gpu", tuple(g.name for g in gpus), int(strategy.num_replicas_in_sync), strategy
    strategy = tf.distribute.get_strategy()
    if gpus:
        return "gpu", (gpus[0].name,), 1, strategy
    cpus = tf.config.list_physical_devices("CPU")
    return "cpu", tuple(c.name for c in cpus[:1]) or ("CPU:0",), 1, strategy


def hw_summary(hw: Hardware) -> str:
    """One line saying what was found and decided."""
    shown = ", ".join(hw.devices[:HW_SHOWN_DEVICES]) + (" ..." if len(hw.devices) > HW_SHOWN_DEVICES else "")
    route = type(hw.strategy).__name__ if hw.strategy is not None else (
        "keras DataParallel" if hw.replicas > 1 else "single device")
    return (f"[kit] hardware: {hw.kind} x{hw.replicas} ({hw.backend} backend, {route}) [{shown}]; "
            f"precision {hw.mixed_precision or 'float32'}; XLA {'on' if hw.jit_compile else 'off'}; "
            f"augmentation on the {'device' if hw.augment_on_device else 'host'}")


def detect_hardware(exp: Experiment) -> Hardware:
    """Find the hardware, set the precision policy (and DataParallel under JAX), print and return it."""
    import keras

    backend = keras.backend.backend()
    kind, devices, replicas, strategy = hw_detect_jax() if backend == "jax" else hw_detect_tf()
    policy = hw_policy(exp.train.mixed_precision, kind)
    keras.mixed_precision.set_global_policy(policy or "float32")
    hw = Hardware(
        kind=kind,
        backend=backend,
        replicas=replicas,
        devices=devices,
        strategy=strategy,
        mixed_precision=policy,
        jit_compile=hw_switch(exp.train.jit_compile, kind != "cpu"),
        augment_on_device={"device": True, "host": False}.get(exp.augment.where, kind != "cpu"),
    )
    print(hw_summary(hw))
    return hw


@contextlib.contextmanager
def strategy_scope(hw: Hardware) -> Iterator[None]:
    """Build models and optimisers inside this: the TF strategy's scope, or nothing under JAX."""
    with hw.strategy.scope() if hw.strategy is not None else contextlib.nullcontext():
        yield


def global_batch_size(exp: Experiment, hw: Hardware) -> int:
    """Per-replica batch x replicas."""
    return exp.train.batch_size * hw.replicas


def scaled_lr(exp: Experiment, hw: Hardware) -> float:
    """The learning rate scaled linearly with the global batch (``train.lr`` is for ``reference_batch``)."""
    return exp.train.lr * global_batch_size(exp, hw) / exp.train.reference_batch
