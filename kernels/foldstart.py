"""One compiled model for every fold: the state each fold starts from, saved once and put back per fold.

In:  a built and compiled Keras model (`kernels.models.build_model` + `kernels.train.compile_model`, under the
     strategy scope) and, per fold, the fold number.
Out: `snapshot_start(model) -> FoldStart` (the model's weights, its random-seed states and its optimiser's
     variables, as numpy, right after building); `restore_start(model, start, fold)` assigns them back
     before a fold trains, with every random-seed state moved to a fold-specific stream; `seed_fold(seed)`
     seeds Python's and NumPy's generators for the fold without touching TensorFlow's caches.

Why: building and compiling the model per fold repeats the most expensive part of a run that is not
training: tracing the train/test/predict steps (TensorFlow traces EfficientNet-B6's train step in about 50 s
per replica on a CPU) and, under XLA, compiling them (a TPU's per-fold compile of a large EfficientNet takes
minutes of the weekly quota; the JAX rehearsal on this CPU 40 s). A kept model reuses its compiled steps,
so only fold 0 pays. Every fold starts from the same initial weights (built under ``exp.seed``), with fresh
optimiser state (moments, step counter, loss scale) and its own augmentation/dropout streams, so a fold's
result still does not depend on which folds ran before it (``--resume`` gives what a full run gives).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

FOLD_SEED_STRIDE = 1_000_003  # added to a seed generator's first state word per fold (a prime: no overlap)
SEED_STATE_MODULUS = 2**32  # seed states are uint32 words


@dataclass(frozen=True)
class FoldStart:
    """What every fold starts from (host copies, so the device copies can be overwritten)."""

    weights: list[np.ndarray]  # model.weights (trainable and non-trainable, e.g. BatchNorm statistics)
    seeds: list[np.ndarray]  # the model's random-seed states (device augmentation, dropout)
    optimizer: list[np.ndarray]  # the optimiser's variables, as built (zeros, step 0, the initial loss scale)


def _foldstart_seed_variables(model: keras.Model) -> list[Any]:
    """The model's variables that are not weights: its SeedGenerator states."""
    weight_ids = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weight_ids]


def snapshot_start(model: keras.Model) -> FoldStart:
    """Build the optimiser's variables now (so they can be reset) and copy everything a fold starts from."""
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    return FoldStart(
        weights=[_foldstart_host(v) for v in model.weights],
        seeds=[_foldstart_host(v) for v in _foldstart_seed_variables(model)],
        optimizer=[_foldstart_host(v) for v in optimizer.variables],
    )


def _foldstart_host(variable: Any) -> np.ndarray:
    """A host copy of a variable's value (gathered from every device under a distribution)."""
    value = variable.value
    return np.array(value.numpy() if hasattr(value, "numpy") else value, copy=True)  # TF tensor | JAX array


def fold_seed_state(state: np.ndarray, fold: int) -> np.ndarray:
    """A seed generator's starting state for ``fold``: its first word moved by ``fold x FOLD_SEED_STRIDE``."""
    moved = np.array(state, copy=True)
    if moved.size:
        moved.flat[0] = (int(moved.flat[0]) + fold * FOLD_SEED_STRIDE) % SEED_STATE_MODULUS
    return moved.astype(state.dtype)


def restore_start(model: keras.Model, start: FoldStart, fold: int) -> None:
    """Put ``start`` back into ``model`` before ``fold`` trains (its weights, its optimiser, its seeds)."""
    seeds = _foldstart_seed_variables(model)
    if len(model.weights) != len(start.weights) or len(seeds) != len(start.seeds) \
            or len(model.optimizer.variables) != len(start.optimizer):
        raise RuntimeError("fold start: the model's variables changed since the snapshot (rebuild the model)")
    for variable, value in zip(model.weights, start.weights, strict=True):
        variable.assign(value)
    for variable, value in zip(seeds, start.seeds, strict=True):
        variable.assign(fold_seed_state(value, fold))
    for variable, value in zip(model.optimizer.variables, start.optimizer, strict=True):
        variable.assign(value)


def seed_fold(seed: int) -> None:
    """Seed Python's and NumPy's global generators for a fold, and nothing of TensorFlow's.

    Not `keras.utils.set_random_seed`: its ``tf.random.set_seed`` clears TensorFlow's kernel and function caches,
    so the next call of every compiled train/test/predict step re-instantiates and re-optimises its graph
    (about 19 s per fold for B0, minutes for B6, on the 2-device GPU rehearsal; on a real GPU the same). The
    fold's other random streams are fixed without it: the model's seed generators by `restore_start`, the
    tf.data shuffles and host augmentation by explicit seeds, TensorFlow's global seed once at the start of
    the run."""
    random.seed(seed)
    np.random.seed(seed)
