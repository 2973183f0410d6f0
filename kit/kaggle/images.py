"""Kaggle's accelerator images as a version table, and the second environment built from it.

In:  nothing (the table below), and the project's setup.py.
Out: `IMAGES` (image -> package -> version, with `SOURCES`); `requirements()`: the pins of the second
     environment (`.venv-kaggle`, built by `make venv-kaggle`): the packages these images pin, at their
     versions, plus every other pin of setup.py as it is. `python -m kit.kaggle.images` prints them.

Why: the project's own pins move ahead of Kaggle's (TensorFlow 2.21, Keras 3.15, jax 0.10 here); the
kernel runs on Kaggle's. `make test` runs the tiny TPU and GPU rehearsals (tests/test_accelerators.py,
`-k rehearsed`) once more in the second environment, so an API Kaggle's Keras or JAX lacks fails here
first. One environment holds both images' packages: the TPU image's tensorflow-cpu is the GPU image's
TensorFlow without CUDA (the same 2.20.0 code), and the rehearsals run on CPUs anyway.
Re-check the table before relying on it (sources below; read 2026-12).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

SOURCES = {
    "tpu": "Kaggle/docker-python tpu/config.txt, tpu/requirements.in, tpu/Dockerfile (commit of 2026-08-12): "
           "tensorflow-cpu==2.20.0, keras>3 and jax[tpu] unpinned, libtpu pinned to 0.0.17, which the "
           "Dockerfile pairs with jax 0.7.2",
    "gpu": "Kaggle/docker-python Dockerfile.tmpl on the Colab base of 2026-05-14; Colab's package list of "
           "2026-05-08: TensorFlow 2.20.0, Keras 3.13.2, jax 0.7.2",
    "numpy/pandas": "Colab's long-standing pins (numpy 2.0.2, pandas 2.2.2), which TensorFlow 2.20 and "
                    "jax 0.7.2 accept; not read off the 2026-05-08 list itself (re-check)",
}
IMAGES: dict[str, dict[str, str]] = {
    "tpu": {"tensorflow-cpu": "2.20.0", "keras": "3.13.2", "jax": "0.7.2", "jaxlib": "0.7.2",
            "numpy": "2.0.2", "pandas": "2.2.2"},
    "gpu": {"tensorflow": "2.20.0", "keras": "3.13.2", "jax": "0.7.2", "jaxlib": "0.7.2",
            "numpy": "2.0.2", "pandas": "2.2.2"},
}
ONE_ENV_DROPS = ("tensorflow",)  # the GPU image's TensorFlow is stood in for by the TPU image's tensorflow-cpu
SETUP = Path(__file__).resolve().parents[2] / "setup.py"
PIN = re.compile(r"^\s*([A-Za-z0-9_.\-\[\]]+)\s*==")


def _setup_pins(setup: Path = SETUP) -> list[str]:
    """INSTALL_REQUIRES + TEST_REQUIRES of setup.py, read without running it."""
    tree = ast.parse(setup.read_text(encoding="utf-8"), filename=str(setup))
    pins: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") in ("INSTALL_REQUIRES", "TEST_REQUIRES")
                                                for t in node.targets):
            pins.extend(str(pin) for pin in ast.literal_eval(node.value))
    return pins


def requirements(setup: Path = SETUP) -> list[str]:
    """The second environment's pins: both images' packages (see ONE_ENV_DROPS), then setup.py's others."""
    kaggle: dict[str, str] = {}
    for image in IMAGES.values():
        for name, version in image.items():
            if name not in ONE_ENV_DROPS:
                kaggle[name] = version
    taken = set(kaggle) | set(ONE_ENV_DROPS)
    rest = [pin for pin in _setup_pins(setup) if (m := PIN.match(pin)) is None or m.group(1).lower() not in taken]
    return [f"{name}=={version}" for name, version in sorted(kaggle.items())] + rest


if __name__ == "__main__":
    sys.stdout.write("\n".join(requirements()) + "\n")
