"""`make device-check`: the kernel's training route on this machine's GPU(s), under both Keras backends.

In:  nothing (``--out`` names the JSON file, ``--seconds`` the timed run; ``--child BACKEND`` is internal).
Out: ``bench/device_check.json``: per backend the hardware the kernel detected (kind, replicas, precision,
     XLA), a tiny check (scratch CNN, 64 px, a few steps: loss before/after), then EfficientNetB0 at 256 px
     (weights none: nothing is downloaded) trained for a timed minute on in-memory images: images/s after
     the first (compiling) steps, loss before/after, and any error as one line. One line per backend is
     printed. Without a GPU it says "no GPU found" and writes that, without training.

Each backend runs in its own process (the Keras backend is fixed per process), through the kernel's own
modules (`kernels.strategy.detect_hardware`, `kernels.models.build_model`, `kernels.train.compile_model`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "device_check.json"
BACKENDS = ("tensorflow", "jax")
TIMED_SECONDS = 60.0
WARMUP_STEPS = 3  # steps excluded from images/s (tracing and XLA compiling)
TINY_STEPS = 5
TINY_SIZE, B0_SIZE = 64, 256
BATCH_PER_DEVICE = 32
CHILD_TIMEOUT_S = 900


def gpu_present() -> tuple[bool, str]:
    """(found, how): an NVIDIA driver that lists a GPU."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False, "nvidia-smi not found"
    proc = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("GPU")]
    return (bool(lines), "; ".join(lines) or proc.stderr.strip()[:200] or "nvidia-smi lists no GPU")


def experiment(size: int, backbone: str, batch: int) -> Any:
    from kernels.config import from_dict

    return from_dict({
        "name": "device-check", "kaggle": {"accelerator": "NvidiaTeslaT4"},
        "data": {"image_size": size}, "augment": {"ops": ["dihedral", "affine", "color"]},
        "model": {"backbone": backbone, "weights": "none", "scratch": {"stages": 3, "width": 16}},
        "train": {"batch_size": batch, "epochs": 1, "lr": 1e-4, "reference_batch": batch, "warmup_epochs": 0.0},
    })


def train_for(exp: Any, hw: Any, seconds: float, max_steps: int) -> dict[str, Any]:
    """Train on random in-memory uint8 images until `seconds` or `max_steps`; loss before/after, images/s."""
    import numpy as np
    import tensorflow as tf

    from kernels.models import build_model
    from kernels.strategy import global_batch_size, strategy_scope
    from kernels.train import compile_model

    batch = global_batch_size(exp, hw)
    size = exp.data.image_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch * 4, size, size, 3), dtype=np.uint8)
    labels = (rng.random((batch * 4, 1)) < 0.3).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(batch, drop_remainder=True)
    with strategy_scope(hw):
        model = build_model(exp, hw, 0, total_steps=max_steps)
        compile_model(model, exp, hw, exp.train.lr, max_steps)
    it = iter(ds)
    losses, times = [], []
    start = time.monotonic()
    while len(losses) < max_steps and time.monotonic() - start < seconds:
        x, y = next(it)
        logs = model.train_on_batch(x, y, return_dict=True)
        losses.append(float(logs["loss"]))
        times.append(time.monotonic())
    timed = times[WARMUP_STEPS:]
    rate = (len(timed) - 1) * batch / (timed[-1] - timed[0]) if len(timed) > 1 else None
    return {"steps": len(losses), "global_batch": batch, "loss_before": losses[0] if losses else None,
            "loss_after": losses[-1] if losses else None, "images_per_s": rate,
            "finite": all(np.isfinite(losses))}


def child(backend: str, seconds: float) -> dict[str, Any]:
    """Run in a fresh process whose KERAS_BACKEND is `backend`."""
    from kernels.strategy import detect_hardware

    result: dict[str, Any] = {"backend": backend}
    try:
        hw = detect_hardware(experiment(TINY_SIZE, "scratch", 8))
        result["hardware"] = {"kind": hw.kind, "replicas": hw.replicas, "devices": list(hw.devices),
                              "precision": hw.mixed_precision or "float32", "jit_compile": hw.jit_compile}
        result["tiny"] = train_for(experiment(TINY_SIZE, "scratch", 8), hw, seconds, TINY_STEPS)
        result["efficientnet_b0_256"] = train_for(experiment(B0_SIZE, "efficientnet_b0", BATCH_PER_DEVICE), hw,
                                                  seconds, max_steps=10**6)
    except Exception as exc:  # recorded, not raised: the other backend still runs
        result["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
    return result


def summary(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"{result['backend']}: error {result['error']}"
    b0 = result.get("efficientnet_b0_256", {})
    hw = result.get("hardware", {})
    rate = b0.get("images_per_s")
    return (f"{result['backend']}: {hw.get('kind')} x{hw.get('replicas')} {hw.get('precision')}, "
            f"B0 256 px {rate:.0f} img/s" if rate else f"{result['backend']}: no timed steps") + (
            f", loss {b0.get('loss_before'):.3f} -> {b0.get('loss_after'):.3f}" if b0.get("loss_before") else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--seconds", type=float, default=TIMED_SECONDS)
    parser.add_argument("--child", choices=BACKENDS, default=None)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.seconds)))
        return 0
    found, how = gpu_present()
    report: dict[str, Any] = {"gpu": found, "gpu_probe": how, "seconds": args.seconds, "results": []}
    if not found:
        print(f"device-check: no GPU found ({how}); nothing trained", flush=True)
    else:
        for backend in BACKENDS:
            env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
            try:
                proc = subprocess.run([sys.executable, "-m", "bench.device_check", "--child", backend,
                                       "--seconds", str(args.seconds)], capture_output=True, text=True, env=env,
                                      cwd=ROOT, timeout=CHILD_TIMEOUT_S)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                result = json.loads(lines[-1]) if lines else {
                    "backend": backend, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}
            except subprocess.TimeoutExpired:
                result = {"backend": backend, "error": f"timed out after {CHILD_TIMEOUT_S} s"}
            report["results"].append(result)
            print(f"device-check: {summary(result)}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out)
    print(f"device-check: wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
