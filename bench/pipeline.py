"""`make bench` part: input-pipeline throughput (images/s) and peak memory, measured side by side.

In:  nothing; it writes its own TFRecords to a temp dir: dermoscopy-like JPEGs from `kit.data.synth`
     (quality 95, ~17 KB at 256 px, ~40 KB at 384 px, like the resized competition re-packs), STORED AT
     THE TARGET SIZE (as ``cdeotte/melanoma-256x256`` / ``-384x384`` that the reference used), 8 files.
Out: ``run() -> dict`` with, at 256 and 384 px:
     decode_only_*       JPEG bytes already in RAM -> decode -> batch (the ceiling; best of fixed and
                         AUTOTUNE parallelism)
     reference_*         `bench.reference_pipeline` (the reference notebook's pipeline, per-image gather_nd)
     pipeline_*          the kernel's `train_dataset` with host augmentation (dihedral, affine = rotation,
                         shear, zoom, shift; color = saturation, contrast, brightness)
     pipeline_device_aug_*  the kernel's `train_dataset` when augmentation runs on the accelerator
     pipeline_projective_*  as pipeline_*, with ``augment.warp = "projective"`` (TensorFlow's
                         ImageProjectiveTransformV3 instead of the fused XLA warp; not a target, shown
                         so the choice of default is visible)
     pipeline_vs_reference_*, device_aug_vs_decode_*  the ratios the targets are about
     (pipeline_projective_vs_reference_* the same ratio for the projective-op warp)
     pipeline_peak_rss_mb  peak RSS of a fresh process running only the kernel's host-augmentation pipeline
                         at 384 px (the heaviest), TensorFlow's ~0.7 GB included; pipeline_device_aug_peak_rss_mb
                         the same in device-augmentation mode
     fit_epoch_s_autotune_on / _off  seconds per Keras epoch over a finite 256-image kernel dataset with
                         tf.data's autotuner on / off (the kernel runs it off: the epoch-end stall)
Each figure is the best of ``ROUNDS`` rounds, the pipelines of one size measured in turn (the machine
may be shared; the ratios are what count).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SIZES = (256, 384)
UNIQUE_IMAGES = 128  # distinct JPEGs per size (records repeat them; decode cost is per record)
RECORDS = 1024
FILES = 8
BATCH = 32
WARMUP_BATCHES = 6  # covers tf.data start-up, buffer fill and XLA compilation
MEASURE_S = 2.0  # each window runs at least this long
MIN_BATCHES = 8
ROUNDS = 3
SEED = 7
HOST_OPS = ("dihedral", "affine", "color")
FIT_FILES = 2  # 256 images
FIT_EPOCHS = 4
KB_PER_MB = 1024


def write_records(folder: Path, size: int) -> list[str]:
    """FILES TFRecord files of RECORDS synthetic competition records at `size` px."""
    import numpy as np
    import tensorflow as tf

    from kernels import schema
    from kit.data.synth import synth_image
    from kit.data.tfrecords import encode_jpeg

    rng = np.random.default_rng(SEED)
    jpegs = [encode_jpeg(synth_image(size, i % 10 == 0, rng)) for i in range(UNIQUE_IMAGES)]
    per_file = RECORDS // FILES
    files = []
    for f in range(FILES):
        path = folder / schema.shard_name(f"train{size}-", f, per_file)
        with tf.io.TFRecordWriter(str(path)) as writer:
            for i in range(per_file):
                n = f * per_file + i
                ints = {"patient_id": n // 4, "sex": n % 3, "age_approx": 30 + n % 50,
                        "anatom_site_general_challenge": n % 7, "diagnosis": n % 9, "target": int(n % 10 == 0)}
                feature = {
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpegs[n % UNIQUE_IMAGES]])),
                    "image_name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"ISIC_{n:07d}".encode()])),
                }
                for key, value in ints.items():
                    feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
                example = tf.train.Example(features=tf.train.Features(feature=feature))
                writer.write(example.SerializeToString())
        files.append(str(path))
    return files


def images_per_s(batches: Iterator[Any]) -> float:
    """Throughput of a fresh, endless batch iterator after a warm-up (start-up, buffers, XLA compile)."""
    for _ in range(WARMUP_BATCHES):
        next(batches)
    n, start = 0, time.perf_counter()
    while True:
        batch = next(batches)
        images = batch[0] if isinstance(batch, tuple) else batch
        images = images["image"] if isinstance(images, dict) else images
        n += int(images.shape[0])
        elapsed = time.perf_counter() - start
        if elapsed >= MEASURE_S and n >= MIN_BATCHES * BATCH:
            return n / elapsed


def decode_only(jpegs: list[bytes], parallel: int | None) -> Iterator[Any]:
    """Bytes in RAM -> decode_jpeg -> batch (parallel None = AUTOTUNE with autotune on)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(tf.constant(jpegs)).repeat()
    calls = tf.data.AUTOTUNE if parallel is None else parallel
    ds = ds.map(lambda b: tf.io.decode_jpeg(b, channels=3), num_parallel_calls=calls, deterministic=False)
    ds = ds.batch(BATCH).prefetch(tf.data.AUTOTUNE if parallel is None else 4)
    if parallel is not None:
        options = tf.data.Options()
        options.autotune.enabled = False
        ds = ds.with_options(options)
    return iter(ds)


def kernel_pipeline(files: list[str], size: int, on_device: bool, warp: str = "fused") -> Iterator[Any]:
    """The kernel's training dataset (host or device augmentation mode, ``augment.warp``) on a 1-replica CPU."""
    from kernels.config import from_dict
    from kernels.data import train_dataset
    from kernels.strategy import Hardware

    exp = from_dict({"name": "bench", "seed": SEED, "data": {"image_size": size},
                     "augment": {"ops": list(HOST_OPS), "where": "device" if on_device else "host", "warp": warp},
                     "train": {"batch_size": BATCH}})
    hw = Hardware(kind="cpu", backend="tensorflow", replicas=1, devices=("CPU:0",), strategy=None,
                  augment_on_device=on_device)
    ds, _ = train_dataset(files, exp, hw)
    return iter(ds)


def fit_epoch_s(files: list[str], autotune: bool) -> float:
    """Seconds per epoch of Keras fitting a trivial model on a finite kernel eval dataset (FIT_IMAGES
    images at 256 px), with tf.data's autotuner on or off: the difference is the epoch-end stall."""
    import keras

    import kernels.data as data
    from kernels.config import from_dict
    from kernels.strategy import Hardware

    exp = from_dict({"name": "bench", "data": {"image_size": SIZES[0]}, "train": {"batch_size": BATCH}})
    hw = Hardware(kind="cpu", backend="tensorflow", replicas=1, devices=("CPU:0",), strategy=None)
    previous, data.DATA_AUTOTUNE = data.DATA_AUTOTUNE, autotune
    try:
        ds = data.eval_dataset(files[:FIT_FILES], exp, hw, labelled=True)
    finally:
        data.DATA_AUTOTUNE = previous
    model = keras.Sequential([keras.Input((SIZES[0], SIZES[0], 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy")
    model.fit(ds, epochs=1, verbose=0, shuffle=False)  # tracing
    start = time.perf_counter()
    model.fit(ds, epochs=FIT_EPOCHS, verbose=0, shuffle=False)
    return (time.perf_counter() - start) / FIT_EPOCHS


def reference(files: list[str], size: int) -> Iterator[Any]:
    from bench.reference_pipeline import reference_dataset

    return iter(reference_dataset(files, size, BATCH))


def stored_jpegs(files: list[str]) -> list[bytes]:
    """The JPEG bytes of every record (what decode_only decodes)."""
    import tensorflow as tf

    spec = {"image": tf.io.FixedLenFeature([], tf.string)}
    return [tf.io.parse_single_example(r, spec)["image"].numpy() for r in tf.data.TFRecordDataset(files)]


def measure(folder: Path) -> dict[str, float]:
    """All figures: per size, each pipeline is built fresh and measured once per round, the five in
    turn (so they see the same share of a busy machine), for ROUNDS rounds; the best round counts.
    (Pipelines are not kept alive between windows: an idle AUTOTUNE pipeline keeps filling buffers.)"""
    from kit.console import console

    best: dict[str, float] = {}
    cores = os.cpu_count() or 1
    files = {size: write_records(folder, size) for size in SIZES}
    for size in SIZES:
        jpegs = stored_jpegs(files[size])
        makers: dict[str, Callable[[], float]] = {  # decode-only: fixed parallelism or AUTOTUNE, the faster
            f"decode_only_{size}_img_s": lambda j=jpegs: max(images_per_s(decode_only(j, cores)),
                                                             images_per_s(decode_only(j, None))),
            f"reference_{size}_img_s": lambda s=size: images_per_s(reference(files[s], s)),
            f"pipeline_{size}_img_s": lambda s=size: images_per_s(kernel_pipeline(files[s], s, False)),
            f"pipeline_device_aug_{size}_img_s": lambda s=size: images_per_s(kernel_pipeline(files[s], s, True)),
            f"pipeline_projective_{size}_img_s": lambda s=size: images_per_s(
                kernel_pipeline(files[s], s, False, warp="projective")),
        }
        for r in range(ROUNDS):
            for key, make in makers.items():
                value = make()
                best[key] = max(best.get(key, 0.0), value)
                console.print(f"    round {r + 1}/{ROUNDS} {key}: {value:,.0f}")
    for autotune in (True, False):
        key = f"fit_epoch_s_autotune_{'on' if autotune else 'off'}"
        best[key] = min(fit_epoch_s(files[SIZES[0]], autotune) for _ in range(2))
        console.print(f"    {key}: {best[key]:.2f}")
    for size in SIZES:
        best[f"pipeline_vs_reference_{size}"] = best[f"pipeline_{size}_img_s"] / best[f"reference_{size}_img_s"]
        best[f"pipeline_projective_vs_reference_{size}"] = (
            best[f"pipeline_projective_{size}_img_s"] / best[f"reference_{size}_img_s"])
        best[f"device_aug_vs_decode_{size}"] = (
            best[f"pipeline_device_aug_{size}_img_s"] / best[f"decode_only_{size}_img_s"])
    return best


def peak_rss_child(folder: str, size: str, on_device: str) -> None:
    """(Child process) run one kernel pipeline; print its peak RSS in MB."""
    files = write_records(Path(folder), int(size))
    images_per_s(kernel_pipeline(files, int(size), on_device == "1"))
    print(json.dumps({"peak_rss_mb": vm_hwm_mb()}))


def vm_hwm_mb() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: on Linux that keeps the
    parent's peak across fork + exec, so a child would report the benchmark process's memory."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / KB_PER_MB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KB_PER_MB


def peak_rss_mb(size: int, on_device: bool) -> float:
    """Peak RSS of a fresh process that runs one kernel pipeline (TensorFlow itself included)."""
    with tempfile.TemporaryDirectory(prefix="kit-bench-rss-") as tmp:
        code = "import sys; from bench.pipeline import peak_rss_child; peak_rss_child(*sys.argv[1:])"
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run([sys.executable, "-c", code, tmp, str(size), str(int(on_device))], capture_output=True,
                             text=True, check=True, cwd=root, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"])


def run() -> dict[str, float]:
    """The pipeline figures for `bench.run` (see the module docstring)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="kit-bench-pipeline-") as tmp:
        results = measure(Path(tmp))
    results["pipeline_peak_rss_mb"] = peak_rss_mb(SIZES[-1], on_device=False)
    results["pipeline_device_aug_peak_rss_mb"] = peak_rss_mb(SIZES[-1], on_device=True)
    return results


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
