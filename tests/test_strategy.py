"""kernels.strategy: hardware detection and the decisions that follow, under the TensorFlow backend in
this process and under the JAX backend (two virtual CPU devices -> keras DataParallel) in a subprocess,
where the kernel's pipeline, the device augmentation layer and a tiny model also run end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import pytest
import tensorflow as tf

from kernels.config import from_dict
from kernels.strategy import (
    Hardware,
    detect_hardware,
    global_batch_size,
    hw_policy,
    hw_switch,
    scaled_lr,
    strategy_scope,
)

ROOT = Path(__file__).resolve().parent.parent


def experiment(**train: object):
    where = train.pop("where", "auto")
    return from_dict({"name": "t", "train": {"batch_size": 16, "lr": 1e-3, "reference_batch": 32, **train},
                      "augment": {"where": where}})


def run_python(code: str, env: dict[str, str], timeout: int = 240) -> dict:
    """Run `code` in a fresh interpreter (the Keras backend is fixed per process); return its last JSON line."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT), **env}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "stdout": proc.stdout}


def test_cpu_under_tensorflow_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    hw = detect_hardware(experiment())
    assert (hw.kind, hw.backend, hw.replicas) == ("cpu", "tensorflow", 1)
    assert hw.strategy is tf.distribute.get_strategy() and hw.devices
    assert hw.mixed_precision is None and not hw.jit_compile and not hw.augment_on_device
    assert keras.mixed_precision.global_policy().name == "float32"
    out = capsys.readouterr().out
    assert "[kit] hardware: cpu x1 (tensorflow backend" in out and "augmentation on the host" in out


def test_settings_override_the_automatic_choices() -> None:
    try:
        hw = detect_hardware(experiment(mixed_precision="on", jit_compile="on", where="device"))
        assert hw.mixed_precision == "mixed_bfloat16" and keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        assert hw.jit_compile and hw.augment_on_device
    finally:
        hw = detect_hardware(experiment())
    assert keras.mixed_precision.global_policy().name == "float32" and hw.mixed_precision is None


@pytest.mark.parametrize(("mode", "kind", "policy"), [
    ("auto", "tpu", "mixed_bfloat16"), ("auto", "gpu", "mixed_float16"), ("auto", "cpu", None),
    ("on", "cpu", "mixed_bfloat16"), ("on", "gpu", "mixed_float16"), ("off", "tpu", None),
])
def test_precision_policy_table(mode: str, kind: str, policy: str | None) -> None:
    assert hw_policy(mode, kind) == policy


def test_switches_batch_and_learning_rate_scaling() -> None:
    assert hw_switch("auto", True) and not hw_switch("auto", False) and hw_switch("on", False)
    assert not hw_switch("off", True)
    exp = experiment()
    tpu = Hardware(kind="tpu", backend="jax", replicas=8, devices=tuple(f"tpu:{i}" for i in range(8)))
    assert global_batch_size(exp, tpu) == 128
    assert scaled_lr(exp, tpu) == pytest.approx(1e-3 * 128 / 32)
    one = Hardware(kind="cpu", backend="tensorflow", replicas=1, devices=("CPU:0",))
    assert global_batch_size(exp, one) == 16 and scaled_lr(exp, one) == pytest.approx(5e-4)


def test_strategy_scope_enters_the_strategy_or_nothing() -> None:
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy_scope(Hardware("cpu", "tensorflow", 1, ("CPU:0",), strategy=strategy)):
        assert tf.distribute.get_strategy() is strategy
    with strategy_scope(Hardware("cpu", "jax", 1, ("cpu:0",), strategy=None)):
        assert not tf.distribute.has_strategy()


def test_tpu_host_without_a_usable_tpu_falls_back_to_cpu() -> None:
    """A TPU marker makes TensorFlow try TPUClusterResolver(tpu="local"); with no TPU it must fall back."""
    result = run_python("""
        import json
        from kernels.bootstrap import select_backend
        select_backend({"backend": "tensorflow"})
        from kernels.config import from_dict
        from kernels.strategy import detect_hardware
        hw = detect_hardware(from_dict({"name": "t"}))
        print(json.dumps({"kind": hw.kind, "replicas": hw.replicas}))
    """, {"TPU_NAME": "local", "KERAS_BACKEND": ""})
    assert (result["kind"], result["replicas"]) == ("cpu", 1)
    assert "TensorFlow cannot use a TPU here" in result["stdout"]


def test_jax_backend_data_parallel_pipeline_and_device_augmentation(tmp_path: Path) -> None:
    """Kaggle's TPU route on this CPU: JAX backend, two devices, DataParallel, device augmentation,
    uint8 batches from the kernel's pipeline, a short fit and a padded prediction pass."""
    from kit.data.synth import SynthSpec, write_synth

    data = tmp_path / "synth"
    write_synth(data, SynthSpec(n_train=60, n_test=21, size=32, shards=3, seed=3))
    result = run_python(f"""
        import json
        from kernels.bootstrap import select_backend
        select_backend({{"backend": "jax"}})
        import keras, numpy as np
        from kernels.augment import AUGMENTATIONS, DeviceAugmentation
        from kernels.config import from_dict
        from kernels.data import discover_files, eval_dataset, train_dataset
        from kernels.strategy import detect_hardware, global_batch_size, strategy_scope
        exp = from_dict({{"name": "t", "data": {{"dataset": {str(data)!r}, "image_size": 32}},
                         "augment": {{"ops": ["dihedral", "affine", "color", "cutout", "hair", "resized_crop"],
                                      "where": "device", "mix": "cutmix", "mix_prob": 1.0}},
                         "train": {{"batch_size": 4}}}})
        hw = detect_hardware(exp)
        files = discover_files(exp)
        train, steps = train_dataset(files.train, exp, hw)
        from kernels.augment import device_augmentation_layer
        with strategy_scope(hw):
            inp = keras.Input((32, 32, 3), dtype="float32")
            x = device_augmentation_layer(exp)(inp)
            x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(x))
            model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(x))
            model.compile("adam", "binary_crossentropy", metrics=[keras.metrics.AUC()])
        history = model.fit(train, steps_per_epoch=steps, epochs=1, verbose=0,
                            validation_data=eval_dataset(files.train[:1], exp, hw, labelled=True))
        pred = model.predict(eval_dataset(files.test, exp, hw, labelled=False), verbose=0)
        batch = next(iter(train))
        params = {{n: {{"p": 1.0}} for n, s in AUGMENTATIONS.items() if "p" in s.defaults}}
        layer = DeviceAugmentation(list(AUGMENTATIONS), params, seed=1)

        class Probe(keras.Model):  # runs the layer in training mode inside a compiled predict step
            def __init__(self):
                super().__init__()
                self.aug = layer

            def call(self, x, training=False):
                return self.aug(x, training=True)

        images = np.full((8, 32, 32, 3), 100.0, "float32")
        images[:, :, :16] = 200.0
        out = Probe().predict(images, batch_size=8, verbose=0)
        warped = {{w: np.asarray(DeviceAugmentation(["dihedral", "affine"], {{"affine": {{"p": 1.0}}}}, seed=2,
                                                    warp=w)(images, training=True)) for w in ("fused", "projective")}}
        print(json.dumps({{
            "backend": hw.backend, "kind": hw.kind, "replicas": hw.replicas, "strategy": hw.strategy is None,
            "distribution": type(keras.distribution.distribution()).__name__, "global_batch": global_batch_size(exp, hw),
            "batch_dtype": str(batch[0].dtype), "batch_shape": list(batch[0].shape), "pred_rows": int(pred.shape[0]),
            "loss_finite": bool(np.isfinite(history.history["loss"][0])),
            "device_ops_ok": bool(out.shape == images.shape and out.min() >= 0 and out.max() <= 255),
            "device_ops_changed": float(np.abs(out - images).max()),
            "projective_vs_fused": float(np.abs(warped["projective"] - warped["fused"]).max()),
            "warp_changed": float(np.abs(warped["fused"] - images).max()),
        }}))
    """, {"KERAS_BACKEND": "", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert (result["backend"], result["kind"], result["replicas"]) == ("jax", "cpu", 2)
    assert result["strategy"] and result["distribution"] == "DataParallel" and result["global_batch"] == 8
    assert result["batch_dtype"] == "<dtype: 'uint8'>" and result["batch_shape"] == [8, 32, 32, 3]
    assert result["pred_rows"] == 32  # 21 test images in one evaluation batch (4 x 8), padded to full: one shape
    assert result["loss_finite"] and result["device_ops_ok"] and result["device_ops_changed"] > 1.0
    assert result["projective_vs_fused"] < 0.05 and result["warp_changed"] > 10.0  # keras affine_transform
    assert "keras DataParallel" in result["stdout"]
