"""The kernel on the two Kaggle targets, rehearsed on this CPU (``KIT_REHEARSE``), and its guards.

- TPU v5e-8 route: the rendered kernel under JAX over 8 virtual CPU devices (keras DataParallel), with the
  TPU route's decisions (bfloat16, XLA, device augmentation).
- T4x2 route: the rendered kernel under TensorFlow MirroredStrategy over 2 logical CPU devices with the GPU
  route's decisions (mixed_float16 + dynamic loss scaling, device augmentation, XLA off under Mirrored).
- Loss scaling that all replicas agree on (the cause of the T4x2 route's NaN), the non-finite guard and
  the wrong-hardware stop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from kernels.config import from_dict, to_dict
from kernels.contracts import MANIFEST_FILE, read_manifest, read_oof, verify_files
from kernels.main import kernel_main
from kernels.strategy import HardwareMismatch, detect_hardware, hw_check_target, on_kaggle
from kernels.train import NonFiniteGuard, NonFiniteLoss
from kit.data.synth import SynthSpec, write_external_labels, write_synth
from kit.render.kernel import render_script
from kit.run.local import run_kernel

ROOT = Path(__file__).resolve().parents[1]
TINY = SynthSpec(n_train=72, n_test=12, size=32, shards=3, seed=5, malignant_rate=0.25)
TINY_EXTERNAL = SynthSpec(n_train=24, n_test=4, size=32, shards=3, seed=6, malignant_rate=0.25)


def shrunk_recipe(**sections: dict[str, Any]) -> dict[str, Any]:
    """A shrunk copy of the B6 recipe's shape: external data, diagnosis head, device augmentation, 3 folds
    (a tiny scratch CNN at 32 px stands in for the backbone; the rehearsal tests the route, not the model)."""
    config: dict[str, Any] = {
        "name": "shrunk",
        "seed": 4,
        "kaggle": {"accelerator": "NvidiaTeslaT4"},
        "data": {"dataset": "synthetic", "external": "external", "external_labels": "train.csv", "image_size": 32,
                 "folds": 3, "upsample_malignant": 2, "shuffle_buffer": 32},
        "augment": {"ops": ["dihedral", "affine", "color", "cutout"]},
        "model": {"backbone": "scratch", "weights": "none", "head": "diagnosis", "dropout": 0.2,
                  "scratch": {"stages": 2, "width": 8}},
        "train": {"epochs": 2, "batch_size": 4, "lr": 1e-3, "reference_batch": 8, "warmup_epochs": 0.5,
                  "verbose": 0, "tta": 0, "tta_dihedral": False, "save_weights": False, "max_steps_per_epoch": 4},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return to_dict(from_dict(config))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("acc")
    write_synth(root / "main", TINY)
    write_synth(root / "external", TINY_EXTERNAL)
    write_external_labels(root / "external" / "train.csv", TINY_EXTERNAL)  # the diagnosis head's external labels
    return root / "main", root / "external"


def rehearse(config: dict[str, Any], target: str, data: tuple[Path, Path], tmp: Path) -> tuple[dict, str]:
    """Render the kernel, run it with KIT_REHEARSE=target; return (manifest, log)."""
    script = tmp / "kernel.py"
    script.write_text(render_script(from_dict(config)))
    out = tmp / "out"
    env = {"KIT_REHEARSE": target, "KIT_EXTERNAL_DIR": str(data[1]), "KERAS_BACKEND": ""}
    result = run_kernel(script, out, data_dir=str(data[0]), extra_env=env, timeout_s=300)
    log = result.log_path.read_text()
    assert result.returncode == 0, log[-3000:]
    manifest = read_manifest(out / MANIFEST_FILE)
    verify_files(out, manifest)
    assert np.isfinite(read_oof(out / "oof.csv")["pred"]).all()
    return manifest, log


def test_gpu_route_rehearsed_mirrored_float16_three_folds(tiny_data: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, log = rehearse(shrunk_recipe(), "gpu", tiny_data, tmp_path)
    hw = manifest["hardware"]
    assert (hw["kind"], hw["backend"], hw["replicas"]) == ("gpu", "tensorflow", 2)
    assert hw["mixed_precision"] == "mixed_float16" and hw["augment_on_device"] is True
    assert hw["jit_compile"] is False  # XLA off under MirroredStrategy (per-replica seed variables)
    assert len(manifest["folds"]) == 3 and "non-finite" not in log  # the guard would have ended the run
    assert "rehearsal of the GPU route" in log and "MirroredStrategy" in log


def test_tpu_route_rehearsed_jax_eight_devices(tiny_data: tuple[Path, Path], tmp_path: Path) -> None:
    config = shrunk_recipe(kaggle={"accelerator": "TpuV5E8"}, data={"folds": 3, "run_folds": [0]},
                           train={"batch_size": 2, "reference_batch": 16, "epochs": 1})
    manifest, log = rehearse(config, "tpu", tiny_data, tmp_path)
    hw = manifest["hardware"]
    assert (hw["kind"], hw["backend"], hw["replicas"]) == ("tpu", "jax", 8)
    assert hw["mixed_precision"] == "mixed_bfloat16" and hw["augment_on_device"] is True and hw["jit_compile"]
    assert hw["global_batch"] == 16
    assert "keras DataParallel" in log


def test_loss_scaling_skips_a_step_that_overflows_on_any_replica() -> None:
    """Keras' LossScaleOptimizer under MirroredStrategy checks only the first replica's gradients: an overflow
    on the second replica is applied (weights become non-finite). The kernel's optimiser skips the step."""
    code = textwrap.dedent("""
        import json
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras, numpy as np
        from kernels.config import from_dict
        from kernels.train import make_optimizer
        keras.mixed_precision.set_global_policy("mixed_float16")
        rng = np.random.default_rng(0)
        x = rng.normal(size=(8, 4)).astype("float32")
        x[4:] *= 3e3  # the second replica's half overflows float16 gradients at the initial scale 2**15
        y = (rng.random((8, 1)) > 0.5).astype("float32")
        result = {}
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        for name in ("keras", "kernel"):
            keras.utils.set_random_seed(0)
            with strategy.scope():
                inp = keras.Input((4,))
                out = keras.layers.Dense(1, activation="sigmoid", dtype="float32")(keras.layers.Dense(8)(inp))
                model = keras.Model(inp, out)
                adam = keras.optimizers.Adam(1e-3)
                opt = make_optimizer(from_dict({"name": "t", "train": {"lr": 1e-3}}), 1e-3) if name == "kernel" else adam
                model.compile(opt, "binary_crossentropy")
            model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(2), epochs=1, verbose=0)
            result[name] = {"finite": all(bool(np.isfinite(w).all()) for w in model.get_weights()),
                            "scale": float(model.optimizer.dynamic_scale.numpy())}
        print(json.dumps(result))
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT), "KERAS_BACKEND": "tensorflow"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["keras"]["finite"] is False  # the upstream behaviour this guards against
    assert result["kernel"] == {"finite": True, "scale": 2.0**15 / 4}  # both steps skipped, scale halved twice


def test_non_finite_loss_stops_training_at_the_first_bad_step() -> None:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), "mse")
    x = np.ones((40, 3), "float32")
    x[20:] = np.nan  # batches of 4: step 6 of the first epoch is the first with a NaN
    guard = NonFiniteGuard("fold 2 ")
    with pytest.raises(NonFiniteLoss) as caught:
        model.fit(x, np.zeros((40, 1), "float32"), batch_size=4, epochs=3, shuffle=False, verbose=0,
                  callbacks=[guard])
    line = str(caught.value)
    assert "\n" not in line and "fold 2, epoch 1, step 6" in line and "learning rate 0.01" in line
    assert "train.lr" in line and model.optimizer.iterations.numpy() == 6


def test_diverging_recipe_ends_the_run_with_one_line(tiny_data: tuple[Path, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIT_DATA_DIR", str(tiny_data[0]))
    monkeypatch.setenv("KIT_EXTERNAL_DIR", str(tiny_data[1]))
    monkeypatch.setenv("KIT_OUTPUT_DIR", str(tmp_path))
    config = shrunk_recipe(train={"lr": 1000.0, "warmup_epochs": 0.0, "epochs": 1},
                           data={"external": "", "run_folds": [1]})
    with pytest.raises(SystemExit) as caught:
        kernel_main(config)
    assert "loss" in str(caught.value) and "fold 1, epoch 1, step" in str(caught.value)
    assert not (tmp_path / MANIFEST_FILE).exists()  # no fold finished: nothing is written


KAGGLE_TPU_ENV = {"KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_URL_BASE": "https://www.kaggle.com"}


def test_wrong_hardware_on_kaggle_stops_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    exp = from_dict({"name": "t", "kaggle": {"accelerator": "TpuV5E8"}})
    assert not on_kaggle({}) and on_kaggle({"ISTPUVM": "1"})
    hw = detect_hardware(exp)  # no Kaggle variables here: local runs train on the CPU
    with pytest.raises(HardwareMismatch) as caught:
        hw_check_target(exp, hw, {**KAGGLE_TPU_ENV, "ISTPUVM": "1", "KAGGLE_KEY": "secret"})
    line = str(caught.value)
    assert "\n" not in line and "'TpuV5E8' needs a TPU, found cpu x1 (tensorflow backend" in line
    assert "ISTPUVM=1" in line and "KAGGLE_KERNEL_RUN_TYPE=Batch" in line and "secret" not in line
    allowed = from_dict({"name": "t", "kaggle": {"accelerator": "TpuV5E8", "allow_cpu": True}})
    hw_check_target(allowed, hw, KAGGLE_TPU_ENV)  # the experiment allows the CPU: no stop
    hw_check_target(from_dict({"name": "t", "kaggle": {"accelerator": "none"}}), hw, KAGGLE_TPU_ENV)

    for key, value in KAGGLE_TPU_ENV.items():  # the whole kernel stops before it reads any data
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KIT_OUTPUT_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as stopped:
        kernel_main(to_dict(from_dict({"name": "t", "kaggle": {"accelerator": "NvidiaTeslaT4"},
                                       "data": {"dataset": str(tmp_path / "absent")}})))
    assert "wrong hardware" in str(stopped.value) and "needs a GPU" in str(stopped.value)


def test_device_augmentation_stays_on_each_shard_under_data_parallel(tmp_path: Path) -> None:
    """Compile the kernel's training step (default warp, device augmentation) on the 8-device rehearsal
    and read the optimised HLO XLA dumps: no all-gather may carry an image-sized tensor (every device
    augments its own shard; a gather over the flattened global batch made XLA all-gather all images)."""
    dump = tmp_path / "hlo"
    result = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import glob, json, os
        from kernels.bootstrap import select_backend
        select_backend({"backend": "jax"})
        import numpy as np
        from kernels.config import from_dict
        from kernels.models import build_model
        from kernels.strategy import detect_hardware
        from kernels.train import compile_model
        exp = from_dict({"name": "t", "data": {"image_size": 32},
                         "augment": {"ops": ["dihedral", "affine", "color", "cutout", "hair"]},
                         "model": {"backbone": "scratch", "weights": "none", "scratch": {"stages": 2, "width": 8}},
                         "train": {"batch_size": 2, "epochs": 1}})
        hw = detect_hardware(exp)
        model = build_model(exp, hw, 0, total_steps=1)
        compile_model(model, exp, hw, 1e-3, 1)
        x = np.random.default_rng(0).integers(0, 255, (16, 32, 32, 3)).astype("uint8")
        model.fit(x, np.zeros((16, 1), "float32"), batch_size=16, epochs=1, verbose=0)
        modules = glob.glob(os.environ["DUMP"] + "/*train_step*after_optimizations.txt")
        gathers = [line.strip() for path in modules for line in open(path) if "all-gather" in line]
        print(json.dumps({"modules": len(modules), "warp": exp.augment.warp, "replicas": hw.replicas,
                          "gathers": gathers}))
    """)], capture_output=True, text=True, timeout=300, cwd=ROOT, env={
        **os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "KIT_REHEARSE": "tpu",
        "KERAS_BACKEND": "", "DUMP": str(dump), "XLA_FLAGS": f"--xla_dump_to={dump} --xla_dump_hlo_as_text"})
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["modules"] >= 1 and found["warp"] == "fused" and found["replicas"] == 8
    image_elements = 32 * 32 * 3  # one image; the global batch is 16 of them

    def elements(line: str) -> int:
        shape = line.split("=", 1)[1].split("all-gather", 1)[0]
        dims = [int(d) for d in shape[shape.index("[") + 1: shape.index("]")].split(",") if d] if "[" in shape else []
        return int(np.prod(dims)) if dims else 1

    big = [line[:160] for line in found["gathers"] if elements(line) >= image_elements]
    assert not big, big
