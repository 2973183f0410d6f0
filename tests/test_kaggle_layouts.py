"""The kernel on Kaggle's 2026 images: its inputs in every layout, its start (versions printed, JAX asked for its
devices before TensorFlow is imported) and the version table of the second environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kernels.paths import DataLocationError, input_candidates, resolve_dataset
from kit.kaggle.images import IMAGES, SOURCES, requirements

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("layout", ["{root}/{slug}", "{root}/datasets/{owner}/{slug}", "{root}/competitions/{slug}"])
def test_the_kernel_finds_its_data_in_every_kaggle_layout(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "input"
    folder = Path(layout.format(root=root, owner="cdeotte", slug="melanoma-256x256"))
    folder.mkdir(parents=True)
    (folder / "train00-2182.tfrec").write_bytes(b"x")
    env = {"KIT_INPUT_ROOT": str(root)}
    assert resolve_dataset("cdeotte/melanoma-256x256", environ=env) == str(folder)
    if "datasets" not in layout:  # a bare slug (the competition's own data) too
        assert resolve_dataset("melanoma-256x256", environ=env) == str(folder)


def test_a_missing_dataset_names_every_place_looked_in(tmp_path: Path) -> None:
    with pytest.raises(DataLocationError) as info:
        resolve_dataset("someone/absent", environ={"KIT_INPUT_ROOT": str(tmp_path)})
    for place in input_candidates("someone/absent", str(tmp_path)):
        assert place in str(info.value)
    assert input_candidates("siim-isic-melanoma-classification", "/kaggle/input") == [
        "/kaggle/input/siim-isic-melanoma-classification", "/kaggle/input/competitions/siim-isic-melanoma-classification"]


def test_the_kernel_prints_its_versions_and_asks_jax_for_devices_before_tensorflow() -> None:
    code = textwrap.dedent("""
        import json, sys
        from kernels.bootstrap import select_backend
        select_backend({"backend": "jax"})
        print(json.dumps({"tf": "tensorflow" in sys.modules, "jax": "jax" in sys.modules}))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KIT_REHEARSE": "tpu", "KERAS_BACKEND": "", "XLA_FLAGS": ""}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    versions = next(line for line in lines if line.startswith("[kit] versions: "))
    import jax
    import keras

    assert f"keras {keras.__version__}" in versions and f"jax {jax.__version__}" in versions
    assert "[kit] jax devices (asked before TensorFlow is imported): 8 x cpu" in lines
    assert json.loads(lines[-1]) == {"tf": False, "jax": True}


def test_the_version_table_has_its_sources_and_makes_the_second_environment() -> None:
    assert IMAGES["tpu"]["tensorflow-cpu"] == "2.20.0" and IMAGES["tpu"]["jax"] == "0.7.2"
    assert (IMAGES["gpu"]["tensorflow"], IMAGES["gpu"]["keras"], IMAGES["gpu"]["jax"]) == ("2.20.0", "3.13.2", "0.7.2")
    assert set(SOURCES) >= {"tpu", "gpu"}
    pins = requirements()
    names = [pin.split("==")[0] for pin in pins]
    assert len(names) == len(set(names)), "one pin per package"
    assert "tensorflow-cpu==2.20.0" in pins and "keras==3.13.2" in pins and "jax==0.7.2" in pins
    assert "pytest==9.2.0" in pins and "tensorflow" not in names  # the rest of setup.py as it is
