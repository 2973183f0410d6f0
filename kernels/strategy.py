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
CPU); XLA ``auto``: on for TPU and one GPU, off on a CPU (compiling is far slower there) and under
MirroredStrategy (XLA cannot reach the per-replica random-seed variables of another device: "Trying to access
resource seed_generator... located in device CPU:1 from device CPU:0"; Keras turns it off there itself);
augmentation ``auto``: on the device for TPU/GPU, on the host (tf.data) on a CPU. Under mixed_float16
Keras wraps the optimiser in a dynamic ``LossScaleOptimizer`` (`kernels.train.compile_model` checks it).

Rehearsal (``KIT_REHEARSE`` = "tpu" | "gpu", set by `kit preflight` or a test, never by editing the kernel):
"tpu" -> the JAX backend over ``REHEARSAL_DEVICES["tpu"]`` virtual CPU devices (bootstrap sets ``XLA_FLAGS``
before JAX starts) with the TPU route's decisions (bfloat16, XLA, device augmentation, DataParallel);
"gpu" -> TensorFlow ``MirroredStrategy`` over ``REHEARSAL_DEVICES["gpu"]`` logical CPU devices with the GPU
route's decisions (float16 + loss scaling, device augmentation). ``KIT_REHEARSE_DEVICES`` changes the count.

Wrong hardware: on Kaggle (``ISTPUVM`` or any ``KAGGLE_KERNEL_*`` / ``KAGGLE_URL_BASE`` variable set) a
kernel whose ``kaggle.accelerator`` asks for a TPU or GPU and finds something else stops at once with one
line naming what it found (`HardwareMismatch`), unless ``kaggle.allow_cpu`` = true.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kernels.accelerators import accelerator_kind
from kernels.bootstrap import tpu_visible
from kernels.config import Experiment

HW_POLICY = {"tpu": "mixed_bfloat16", "gpu": "mixed_float16", "cpu": None}
HW_POLICY_FORCED_CPU = "mixed_bfloat16"  # train.mixed_precision = "on" on a CPU
HW_JAX_KINDS = {"tpu": "tpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu"}
HW_SHOWN_DEVICES = 4  # devices listed in the printed summary
REHEARSAL_ENV = "KIT_REHEARSE"  # "tpu" | "gpu": simulate that target's topology on CPU devices
REHEARSAL_DEVICES_ENV = "KIT_REHEARSE_DEVICES"
REHEARSAL_DEVICES = {"tpu": 8, "gpu": 2}  # a TPU v5e-8 has 8 chips; Kaggle's GPU machine has 2 T4s
KAGGLE_MARKERS = ("ISTPUVM", "KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_URL_BASE", "KAGGLE_KERNEL_INTEGRATIONS")
KAGGLE_SHOWN_PREFIXES = ("KAGGLE_", "ISTPUVM", "TPU_")


class HardwareMismatch(RuntimeError):
    """The kernel is on Kaggle and did not find the accelerator its experiment asks for (one line)."""


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
    rehearsal: str = ""  # "tpu" | "gpu" when simulating that target on CPU devices (KIT_REHEARSE)


def rehearsal_target(environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    """("tpu" | "gpu", device count) when ``KIT_REHEARSE`` asks for a rehearsal, else ("", 0)."""
    env = os.environ if environ is None else environ
    target = env.get(REHEARSAL_ENV, "").strip().lower()
    if not target:
        return "", 0
    if target not in REHEARSAL_DEVICES:
        raise ValueError(f"{REHEARSAL_ENV}={target!r}: expected one of {', '.join(REHEARSAL_DEVICES)}")
    return target, int(env.get(REHEARSAL_DEVICES_ENV) or REHEARSAL_DEVICES[target])


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


def prepare_devices(environ: Mapping[str, str] | None = None) -> None:
    """Before anything runs on TensorFlow: split the CPU into logical devices for a GPU rehearsal."""
    target, count = rehearsal_target(environ)
    if target != "gpu":
        return
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or ()) < count:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
        except RuntimeError as exc:
            raise RuntimeError(f"{REHEARSAL_ENV}=gpu: TensorFlow started before the CPU could be split into "
                               f"{count} devices ({exc})") from None


def hw_mirrored_cpus(count: int) -> tuple[str, tuple[str, ...], int, Any]:
    """The GPU route rehearsed: MirroredStrategy over ``count`` logical CPU devices (see `prepare_devices`)."""
    import tensorflow as tf

    prepare_devices({REHEARSAL_ENV: "gpu", REHEARSAL_DEVICES_ENV: str(count)})
    names = tuple(d.name for d in tf.config.list_logical_devices("CPU")[:count])
    strategy = tf.distribute.MirroredStrategy(devices=list(names))
    return "gpu", names, int(strategy.num_replicas_in_sync), strategy


def hw_detect_tf(rehearse: tuple[str, int] = ("", 0)) -> tuple[str, tuple[str, ...], int, Any]:
    """(kind, devices, replicas, strategy) under the TensorFlow backend."""
    import tensorflow as tf

    if rehearse[0] == "gpu":
        return hw_mirrored_cpus(rehearse[1])
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


def hw_expected_kind(exp: Experiment) -> str:
    """The kind of hardware the experiment's ``kaggle.accelerator`` asks for (cpu for "none")."""
    return accelerator_kind(exp.kaggle.accelerator)


def on_kaggle(environ: Mapping[str, str] | None = None) -> bool:
    """True inside a Kaggle session (its kernels set ``KAGGLE_KERNEL_RUN_TYPE``; TPU VMs ``ISTPUVM``)."""
    env = os.environ if environ is None else environ
    return any(env.get(name) for name in KAGGLE_MARKERS)


def hw_check_target(exp: Experiment, hw: Hardware, environ: Mapping[str, str] | None = None) -> None:
    """Raise `HardwareMismatch` (one line) on Kaggle when the hardware is not what the experiment asks for."""
    env = os.environ if environ is None else environ
    wanted = hw_expected_kind(exp)
    if hw.rehearsal or not on_kaggle(env) or wanted == "cpu" or hw.kind == wanted:
        return
    if hw.kind == "cpu" and exp.kaggle.allow_cpu:
        print(f"[kit] warning: kaggle.accelerator = {exp.kaggle.accelerator!r} but no {wanted.upper()} was found; "
              "training on the CPU (kaggle.allow_cpu = true)", flush=True)
        return
    shown = sorted(f"{k}={env[k]}" for k in env if k.startswith(KAGGLE_SHOWN_PREFIXES) and "KEY" not in k
                   and "TOKEN" not in k and "SECRET" not in k)
    raise HardwareMismatch(
        f"[kit] wrong hardware: kaggle.accelerator = {exp.kaggle.accelerator!r} needs a {wanted.upper()}, found "
        f"{hw.kind} x{hw.replicas} ({hw.backend} backend: {', '.join(hw.devices[:HW_SHOWN_DEVICES])}); "
        f"environment: {', '.join(shown) or 'no KAGGLE_*/ISTPUVM variables'}. Stopping now instead of training on "
        "the wrong device (pick the accelerator in the kernel's settings, or set kaggle.allow_cpu = true)")


def hw_summary(hw: Hardware) -> str:
    """One line saying what was found and decided."""
    shown = ", ".join(hw.devices[:HW_SHOWN_DEVICES]) + (" ..." if len(hw.devices) > HW_SHOWN_DEVICES else "")
    route = type(hw.strategy).__name__ if hw.strategy is not None else (
        "keras DataParallel" if hw.replicas > 1 else "single device")
    rehearsal = f"rehearsal of the {hw.rehearsal.upper()} route on CPU devices: " if hw.rehearsal else ""
    return (f"[kit] hardware: {rehearsal}{hw.kind} x{hw.replicas} ({hw.backend} backend, {route}) [{shown}]; "
            f"precision {hw.mixed_precision or 'float32'}; XLA {'on' if hw.jit_compile else 'off'}; "
            f"augmentation on the {'device' if hw.augment_on_device else 'host'}")


def detect_hardware(exp: Experiment) -> Hardware:
    """Find the hardware, set the precision policy (and DataParallel under JAX), print and return it.
    On Kaggle, raise `HardwareMismatch` when it is not the hardware the experiment asks for."""
    import keras

    backend = keras.backend.backend()
    rehearse = rehearsal_target()
    kind, devices, replicas, strategy = hw_detect_jax() if backend == "jax" else hw_detect_tf(rehearse)
    if rehearse[0] == "tpu" and backend == "jax" and replicas > 1:
        kind = "tpu"  # the TPU route's decisions on virtual CPU devices
    mirrored = strategy is not None and replicas > 1 and type(strategy).__name__ == "MirroredStrategy"
    policy = hw_policy(exp.train.mixed_precision, kind)
    keras.mixed_precision.set_global_policy(policy or "float32")
    hw = Hardware(
        kind=kind,
        backend=backend,
        replicas=replicas,
        devices=devices,
        strategy=strategy,
        mixed_precision=policy,
        jit_compile=hw_switch(exp.train.jit_compile, kind != "cpu") and not mirrored,
        augment_on_device={"device": True, "host": False}.get(exp.augment.where, kind != "cpu"),
        rehearsal=rehearse[0] if kind == rehearse[0] else "",
    )
    print(hw_summary(hw), flush=True)
    hw_check_target(exp, hw)
    return hw


@contextlib.contextmanager
def strategy_scope(hw: Hardware) -> Iterator[None]:
    """Build models and optimisers inside this: the TF strategy's scope, or nothing under JAX."""
    with hw.strategy.scope() if hw.strategy is not None else contextlib.nullcontext():
        yield


def global_batch_size(exp: Experiment, hw: Hardware) -> int:
    """Per-replica batch x replicas."""
    return exp.train.batch_size * hw.replicas


def eval_batch_size(exp: Experiment, hw: Hardware) -> int:
    """The global batch of validation and prediction passes: ``train.eval_batch_factor`` training batches.
    Without gradients and optimiser state a step holds far less memory, so fewer, larger steps (the public
    TPU notebooks for this competition predict at 4x the training batch)."""
    return global_batch_size(exp, hw) * exp.train.eval_batch_factor


def scaled_lr(exp: Experiment, hw: Hardware) -> float:
    """The learning rate scaled linearly with the global batch (``train.lr`` is for ``reference_batch``)."""
    return exp.train.lr * global_batch_size(exp, hw) / exp.train.reference_batch
