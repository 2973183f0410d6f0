"""Choose the Keras backend before Keras is imported (first module of every kernel).

In:  the experiment dict (``backend``: auto | jax | tensorflow) and the environment.
Out: the backend name, also set as ``KERAS_BACKEND`` unless the environment already fixes it.

Kaggle's TPU image has tensorflow-cpu, Keras 3 and JAX: TensorFlow cannot drive its TPU, so
``auto`` picks JAX where a TPU is visible and TensorFlow elsewhere. Detection here must not
import TensorFlow, JAX or Keras.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

TPU_ENV_VARS = ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID", "ISTPUVM")
BOOT_REHEARSAL_BACKENDS = {"tpu": "jax", "gpu": "tensorflow"}  # KIT_REHEARSE -> backend (kernels.strategy)
BOOT_TPU_REHEARSAL_DEVICES = 8
BOOT_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
TPU_DEVICE_GLOBS = ("/dev/accel*", "/dev/vfio/[0-9]*")
BOOT_VERSION_PACKAGES = ("tensorflow", "tensorflow-cpu", "tensorflow-tpu", "keras", "jax", "jaxlib", "libtpu",
                         "numpy", "pandas", "scikit-learn")


def tpu_visible(environ: Mapping[str, str] | None = None) -> bool:
    """True when this machine looks like a TPU host (env vars or TPU device files)."""
    env = os.environ if environ is None else environ
    if any(env.get(name) for name in TPU_ENV_VARS):
        return True
    return any(glob.glob(pattern) for pattern in TPU_DEVICE_GLOBS)


def choose_backend(requested: str, environ: Mapping[str, str] | None = None) -> str:
    """The backend to use: an explicit request wins; auto = jax on a TPU host with JAX, else tensorflow."""
    env = os.environ if environ is None else environ
    if env.get("KERAS_BACKEND"):
        return env["KERAS_BACKEND"]
    if requested != "auto":
        return requested
    if tpu_visible(env) and importlib.util.find_spec("jax") is not None:
        return "jax"
    return "tensorflow"


def boot_rehearsal(environ: MutableMapping[str, str]) -> str:
    """For ``KIT_REHEARSE`` (tpu | gpu): its backend, and for tpu the virtual CPU device count in
    ``XLA_FLAGS`` (JAX reads it once, at start-up); "" when no rehearsal is asked for."""
    target = environ.get("KIT_REHEARSE", "").strip().lower()
    if target not in BOOT_REHEARSAL_BACKENDS:
        return ""
    if target == "tpu" and BOOT_DEVICE_COUNT_FLAG not in environ.get("XLA_FLAGS", ""):
        count = environ.get("KIT_REHEARSE_DEVICES") or str(BOOT_TPU_REHEARSAL_DEVICES)
        environ["XLA_FLAGS"] = f"{environ.get('XLA_FLAGS', '')} {BOOT_DEVICE_COUNT_FLAG}={count}".strip()
    return BOOT_REHEARSAL_BACKENDS[target]


def boot_versions() -> str:
    """'python 3.12.1, tensorflow-cpu 2.20.0, keras 3.13.2, ...': what this kernel runs with, read from the
    installed packages' metadata (nothing is imported)."""
    import importlib.metadata
    import platform

    found = [f"python {platform.python_version()}"]
    for name in BOOT_VERSION_PACKAGES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def boot_claim_jax() -> str:
    """Ask JAX for its devices now, before TensorFlow is imported: only one framework can hold a TPU, and a
    TensorFlow with TPU support (if Kaggle's image brings it back) would take it first. Returns 'N x kind'."""
    import jax

    devices = jax.devices()
    return f"{len(devices)} x {devices[0].platform if devices else 'none'}"


def select_backend(config: Mapping[str, Any]) -> str:
    """Print the versions, set KERAS_BACKEND (and quieter TF logs) for this process and, on the JAX route,
    claim JAX's devices; call before importing keras or TensorFlow."""
    print(f"[kit] versions: {boot_versions()}", flush=True)
    backend = boot_rehearsal(os.environ) or choose_backend(str(config.get("backend", "auto")))
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(f"[kit] keras backend: {backend}")
    if backend == "jax" and "tensorflow" not in sys.modules:
        print(f"[kit] jax devices (asked before TensorFlow is imported): {boot_claim_jax()}", flush=True)
    return backend
