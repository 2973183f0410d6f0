"""`make bench` part: `kit predict` throughput on the CPU (images/s), at the demo experiments' image size.

In:  nothing; the two demo experiments (experiments/demo-mobilenet.toml: MobileNetV3-Small, and
     experiments/demo-scratch.toml: the from-scratch residual SE CNN; each at its own image size and fold count,
     64 px and 4 folds as shipped, 8-view dihedral TTA) get run folders in a temp dir with randomly initialised fold weights (speed does not depend on
     the values), and `N_IMAGES` dermoscopy-like JPEGs from `kit.data.synth` are written at `IMAGE_PX` px,
     the size of the vendored real sample (decoded at a DCT ratio, then resized to the model size by the kernel's code).
Out: ``run() -> dict``:
     predict_img_s            the demo ensemble (both runs, every fold model x 8 TTA views, rank-mean
                              blend): images/s from file to probability, models already loaded
     predict_img_s_mobilenet  demo-mobilenet alone (its folds x 8 views)
     predict_img_s_scratch    demo-scratch alone (its folds x 8 views)
     predict_load_s           building and loading the ensemble's fold models
Each rate is the best of `ROUNDS` timed passes after one warm-up pass (traces the predict functions).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

EXPERIMENTS = {"mobilenet": "experiments/demo-mobilenet.toml", "scratch": "experiments/demo-scratch.toml"}
N_IMAGES = 48
WARMUP_IMAGES = 8
IMAGE_PX = 512
ROUNDS = 2
SEED = 11


def _fake_run(root: Path, exp: Any) -> Path:
    """A run folder with a valid manifest and randomly initialised fold weights for `exp`."""
    import keras

    from kernels.config import to_dict
    from kernels.contracts import MANIFEST_SCHEMA, WEIGHTS_PATTERN
    from kernels.data import meta_dim
    from kernels.models import build_model, save_model_weights
    from kit.predict import cpu_hardware, predict_experiment

    folder = root / exp.name / "v1"
    folder.mkdir(parents=True)
    folds = list(range(exp.data.folds))
    for fold in folds:
        keras.utils.set_random_seed(SEED + fold)
        model = build_model(predict_experiment(exp), cpu_hardware(), meta_dim(exp))
        save_model_weights(model, str(folder / WEIGHTS_PATTERN.format(fold=fold)))
    manifest = {
        "schema": MANIFEST_SCHEMA, "experiment": exp.name, "config": to_dict(exp), "versions": {}, "seed": exp.seed,
        "hardware": {"kind": "cpu"}, "folds": [{"fold": k, "auc": 0.5, "best_epoch": 1} for k in folds],
        "oof_auc": 0.5, "timings": {}, "files": {},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _images(folder: Path, n: int) -> list[Any]:
    from kit.data.images import ImageFile
    from kit.data.synth import image_rng, synth_image
    from kit.data.tfrecords import encode_jpeg

    folder.mkdir()
    files = []
    for i in range(n):
        path = folder / f"lesion_{i:03d}.jpg"
        path.write_bytes(encode_jpeg(synth_image(IMAGE_PX, i % 2 == 0, image_rng(SEED, i))))
        files.append(ImageFile(path))
    return files


def _rate(files: list[Any], source: Any, models: list[list[Any]]) -> float:
    from kit.predict import predict

    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        frame = predict(files, source, models=models)
        best = min(best, time.perf_counter() - start)
        assert (frame["error"] == "").all()
    return len(files) / best


def run() -> dict[str, float]:
    from kit.config import load_experiment
    from kit.predict import Source, load_member_models, member_from_run, predict
    from kit.run.folders import run_from_folder

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        root = Path(tmp)
        members = {}
        for key, toml in EXPERIMENTS.items():
            exp = load_experiment(toml)
            members[key] = member_from_run(run_from_folder(_fake_run(root / "runs", exp)))
        files = _images(root / "images", N_IMAGES)
        start = time.perf_counter()
        models = {key: load_member_models(m) for key, m in members.items()}
        results["predict_load_s"] = time.perf_counter() - start
        for key, member in members.items():
            source = Source(f"run {member.run_id}", (member,))
            predict(files[:WARMUP_IMAGES], source, models=[models[key]])
            results[f"predict_img_s_{key}"] = _rate(files, source, [models[key]])
        blend = {
            "method": "rank_mean", "params": {}, "transform": "rank", "link": "identity",
            "weights": [0.5, 0.5], "bias": 0.0, "calibration": None,
            "runs": [{"run_id": m.run_id, "reference": {"quantiles": np.linspace(0, 1, 101).tolist()}}
                     for m in members.values()],
        }
        ensemble = Source("demo ensemble", tuple(members.values()), blend)
        results["predict_img_s"] = _rate(files, ensemble, list(models.values()))
    return results


if __name__ == "__main__":
    print(run())
