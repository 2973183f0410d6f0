"""Accelerator-side augmentation, measured on this CPU: the device augmentation layer under JAX DataParallel.

In:  nothing (a JAX child process over `DEVICES` virtual CPU devices, random uint8 images).
Out: figures: ``accel_aug_img_s_<warp>_<size>`` (images/s of the default chain, every device augmenting its
     shard, compiled) and ``accel_aug_allgather_mb_<warp>_<size>`` (MB all-gathered per step in the compiled
     step, read from XLA's optimised HLO; the per-image gather keeps it at 0 for the default warp, where a
     gather over the flattened global batch all-gathered every image: ~226 MB per step for the B6 recipe).
     Virtual CPU devices share the same 2 cores, so images/s is the compiled chain's cost, not a TPU's speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVICES = 8
CASES = (("fused", 256, 64), ("projective", 256, 64), ("fused", 384, 32))  # warp, px, global batch
CHILD_TIMEOUT_S = 900

CHILD = textwrap.dedent("""
    import glob, json, os, re, sys, time
    from kernels.bootstrap import select_backend
    select_backend({"backend": "jax"})
    import jax, keras, numpy as np
    from kernels.augment import DeviceAugmentation
    warp, size, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    layer = DeviceAugmentation(["dihedral", "affine", "color", "cutout", "hair"], {}, seed=1, warp=warp)

    class Probe(keras.Model):
        def __init__(self):
            super().__init__()
            self.aug = layer

        def call(self, x, training=False):
            return self.aug(keras.ops.cast(x, "float32"), training=True)

    model = Probe()
    images = np.random.default_rng(0).integers(0, 256, (batch * 4, size, size, 3), dtype=np.uint8)
    model.predict(images[:batch], batch_size=batch, verbose=0)  # compile
    start = time.monotonic()
    model.predict(images, batch_size=batch, verbose=0)
    rate = len(images) / (time.monotonic() - start)
    width = {"f32": 4, "bf16": 2, "f16": 2, "u8": 1, "s32": 4, "pred": 1}
    total = 0
    for path in glob.glob(os.environ["DUMP"] + "/*predict_step*after_optimizations.txt"):
        for line in open(path):
            m = re.search(r"= (\\w+)\\[([\\d,]*)\\][^=]*all-gather", line)
            if m:
                total += int(np.prod([int(d) for d in m.group(2).split(",") if d] or [1])) * width.get(m.group(1), 4)
    print(json.dumps({"rate": rate, "allgather_mb": total / 1e6}))
""")


def measure(warp: str, size: int, batch: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as dump:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "jax",
               "DUMP": dump, "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES} "
                                          f"--xla_dump_to={dump} --xla_dump_hlo_as_text"}
        proc = subprocess.run([sys.executable, "-c", CHILD, warp, str(size), str(batch)], capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=CHILD_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"accelerator_aug {warp} {size}: {proc.stderr.strip()[-300:]}")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    return {f"accel_aug_img_s_{warp}_{size}": round(found["rate"], 1),
            f"accel_aug_allgather_mb_{warp}_{size}": round(found["allgather_mb"], 3)}


def run() -> dict[str, float]:
    results: dict[str, float] = {}
    for warp, size, batch in CASES:
        results.update(measure(warp, size, batch))
    return results


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
