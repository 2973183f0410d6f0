"""Training one fold: losses, optimisers, the per-step LR schedule, checkpointing and TTA prediction.

In:  an `Experiment`, the detected `Hardware`, a built model and the fold's tf.data datasets
     (from kernels.data), or TFRecord files to predict.
Out: `FoldTraining` (the model holding the weights train.keep names: the last epoch's, the best epoch's by
     validation, or the average of the last epochs; per-epoch history, best epoch, epoch times) and `TTAPrediction` (plain and TTA-averaged P(malignant) per image, in file order).

Registries: `LOSSES` (train.loss), `OPTIMIZERS` (train.optimizer), `SCHEDULES` (train.schedule);
adding one is one function and one line. Everything is keras-ops based, so it runs under the
TensorFlow and the JAX backend.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from kernels.augment import dihedral_view
from kernels.config import Experiment
from kernels.data import count_examples, eval_dataset, eval_labels, eval_rows, read_records_meta
from kernels.metrics import auc
from kernels.models import model_prediction
from kernels.schema import MELANOMA_INDEX
from kernels.strategy import eval_batch_size

DIHEDRAL_VIEWS = 8  # identity, flips, transposes: the symmetry group of the square
HISTORY_KEYS = ("loss", "val_loss", "auc", "val_auc", "lr", "epoch_time_s")
AUC_THRESHOLDS = 400  # resolution of the streaming AUC metric (the manifest uses the exact AUC)

# ---------------------------------------------------------------- losses


class MaskedCategoricalLoss(keras.losses.Loss):
    """The diagnosis head's loss, with any label row whose diagnosis is not given masked.

    A label row's sum is the share of it whose diagnosis is known: 1 for every row the pipeline makes
    (`kernels.data.data_labels`: every record has a class of the 9-class head, or the run stops), and after
    mixup too; 0 marks a benign row of unknown kind (a label source that gives none). The known share trains the categorical loss (cross-entropy
    or focal, label smoothing applied to the known share only); the rest is benign of an unknown kind and
    trains the binary target alone: -log(1 - P(melanoma)).
    """

    def __init__(self, kind: str = "cce", label_smoothing: float = 0.0, gamma: float = 2.0, alpha: float = 0.25,
                 **kwargs: Any) -> None:
        kwargs.setdefault("name", kind)
        super().__init__(**kwargs)
        self.kind, self.label_smoothing, self.gamma, self.alpha = kind, label_smoothing, gamma, alpha

    def call(self, y_true: Any, y_pred: Any) -> Any:
        ops = keras.ops
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        known = ops.sum(y_true, axis=-1, keepdims=True)
        classes = float(y_true.shape[-1])
        smoothed = y_true * (1.0 - self.label_smoothing) + known * (self.label_smoothing / classes)
        if self.kind == "focal":
            part = keras.losses.categorical_focal_crossentropy(smoothed, y_pred, alpha=self.alpha, gamma=self.gamma)
        else:
            part = keras.losses.categorical_crossentropy(smoothed, y_pred)
        eps = keras.backend.epsilon()
        p_mel = ops.clip(y_pred[:, MELANOMA_INDEX], eps, 1.0 - eps)
        return part + (1.0 - known[:, 0]) * -ops.log(1.0 - p_mel)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "kind": self.kind, "label_smoothing": self.label_smoothing,
                "gamma": self.gamma, "alpha": self.alpha}


def _train_loss_bce(exp: Experiment) -> keras.losses.Loss:
    t = exp.train
    if exp.model.head == "diagnosis":
        return MaskedCategoricalLoss("cce", label_smoothing=t.label_smoothing)
    return keras.losses.BinaryCrossentropy(label_smoothing=t.label_smoothing, name="bce")


def _train_loss_focal(exp: Experiment) -> keras.losses.Loss:
    t = exp.train
    if exp.model.head == "diagnosis":
        return MaskedCategoricalLoss("focal", label_smoothing=t.label_smoothing, gamma=t.focal_gamma,
                                   alpha=t.focal_alpha)
    return keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=t.focal_alpha, gamma=t.focal_gamma,
        label_smoothing=t.label_smoothing, name="focal",
    )


LOSSES: dict[str, Callable[[Experiment], keras.losses.Loss]] = {
    "bce": _train_loss_bce,  # binary CE on the sigmoid head, categorical CE on the diagnosis head
    "focal": _train_loss_focal,
}


def make_loss(exp: Experiment) -> keras.losses.Loss:
    """The loss named by train.loss, for the experiment's head."""
    return LOSSES[exp.train.loss](exp)


# ---------------------------------------------------------------- LR schedule


class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Per-step LR: linear warm-up to peak (from ``warmup_start`` x peak, or from min_lr when that is 0), then
    cosine / exponential / constant towards min_lr. The 1st place's schedule: 1 warm-up epoch from peak/10
    (``warmup_start`` 0.1), then cosine to ~0 (their GradualWarmupSchedulerV2 x10 + cosine annealing).

    exponential: lr = min + (peak - min) * decay_per_epoch ** (steps after warm-up / steps_per_epoch).
    cosine: lr = min + (peak - min) * (1 + cos(pi * progress)) / 2, progress 0 -> 1 over the rest of the run.
    """

    def __init__(
        self, peak_lr: float, min_lr: float, warmup_steps: int, total_steps: int, steps_per_epoch: int,
        kind: str = "cosine", decay_per_epoch: float = 1.0, warmup_start: float = 0.0,
    ) -> None:
        super().__init__()
        if kind not in SCHEDULES:
            raise ValueError(f"train.schedule {kind!r}: expected one of {', '.join(SCHEDULES)}")
        self.peak_lr = float(peak_lr)
        self.min_lr = float(min(min_lr, peak_lr))
        self.warmup_steps = int(max(0, warmup_steps))
        self.total_steps = int(max(total_steps, self.warmup_steps + 1))
        self.steps_per_epoch = int(max(1, steps_per_epoch))
        self.kind = kind
        self.decay_per_epoch = float(decay_per_epoch)
        self.warmup_start = float(warmup_start)

    def __call__(self, step: Any) -> Any:
        ops = keras.ops
        step = ops.cast(step, "float32")
        span = self.peak_lr - self.min_lr
        warm = float(max(1, self.warmup_steps))
        start = self.peak_lr * self.warmup_start if self.warmup_start > 0 else self.min_lr
        warmup_lr = start + (self.peak_lr - start) * ops.minimum((step + 1.0) / warm, 1.0)
        after = ops.maximum(step - float(self.warmup_steps), 0.0)
        decayed = SCHEDULES[self.kind](self, after)
        lr = self.min_lr + span * decayed
        return ops.where(step < float(self.warmup_steps), warmup_lr, lr)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_lr": self.peak_lr, "min_lr": self.min_lr, "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch, "kind": self.kind,
            "decay_per_epoch": self.decay_per_epoch, "warmup_start": self.warmup_start,
        }


def _train_decay_cosine(s: WarmupDecay, after: Any) -> Any:
    progress = keras.ops.minimum(after / float(max(1, s.total_steps - s.warmup_steps)), 1.0)
    return 0.5 * (1.0 + keras.ops.cos(math.pi * progress))


def _train_decay_exponential(s: WarmupDecay, after: Any) -> Any:
    return keras.ops.power(s.decay_per_epoch, after / float(s.steps_per_epoch))


def _train_decay_constant(s: WarmupDecay, after: Any) -> Any:
    return keras.ops.ones_like(after)


SCHEDULES: dict[str, Callable[[WarmupDecay, Any], Any]] = {  # fraction of (peak - min) after warm-up
    "cosine": _train_decay_cosine,
    "exponential": _train_decay_exponential,
    "constant": _train_decay_constant,
}


def make_schedule(exp: Experiment, peak_lr: float, steps_per_epoch: int) -> WarmupDecay:
    """The experiment's schedule at `peak_lr` (already scaled with the global batch)."""
    t = exp.train
    total = max(1, t.epochs * steps_per_epoch)
    return WarmupDecay(
        peak_lr=peak_lr, min_lr=t.min_lr, warmup_steps=int(round(t.warmup_epochs * steps_per_epoch)),
        total_steps=total, steps_per_epoch=steps_per_epoch, kind=t.schedule, decay_per_epoch=t.exp_decay,
        warmup_start=t.warmup_start,
    )


# ---------------------------------------------------------------- optimisers


def ema_options(exp: Experiment) -> dict[str, Any]:
    """Keras' own weight averaging (an EMA of the trainable weights kept by the optimiser, updated every
    step) when train.ema > 0; `ema_callbacks` swaps the average in for validation, checkpoint and predictions."""
    return {"use_ema": True, "ema_momentum": exp.train.ema} if exp.train.ema > 0 else {}


OPTIMIZERS: dict[str, Callable[[Experiment, Any], keras.optimizers.Optimizer]] = {
    "adam": lambda exp, lr: keras.optimizers.Adam(learning_rate=lr, **ema_options(exp)),
    "adamw": lambda exp, lr: keras.optimizers.AdamW(
        learning_rate=lr, weight_decay=exp.train.weight_decay, **ema_options(exp)),
    "sgd": lambda exp, lr: keras.optimizers.SGD(
        learning_rate=lr, momentum=exp.train.momentum, nesterov=True, **ema_options(exp)),
}


class ReplicaSafeLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras' dynamic loss scaling (mixed_float16) with the finite-gradient check agreed by every replica.

    Keras' own check, under TensorFlow's MirroredStrategy, looks at the FIRST replica's local gradients
    only (its comment assumes they were all-reduced already; they are not yet). When another replica's
    float16 gradients overflow, the step is applied anyway, the all-reduce sums the inf into every weight
    and the loss is NaN a few steps later (the T4x2 route's failure). Here every replica's verdict is
    summed over the replicas first, so either all apply the step or all skip it and halve the scale.
    """

    def check_finite(self, grads: Any) -> Any:
        finite = super().check_finite(grads)
        if keras.backend.backend() != "tensorflow":
            return finite
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync <= 1:
            return finite
        bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), tf.float32))
        return bad < 0.5


def make_optimizer(exp: Experiment, lr: Any) -> keras.optimizers.Optimizer:
    """The optimiser named by train.optimizer with learning rate (or schedule) `lr`; under the
    mixed_float16 policy wrapped in `ReplicaSafeLossScaleOptimizer` (dynamic loss scaling)."""
    optimizer = OPTIMIZERS[exp.train.optimizer](exp, lr)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        return ReplicaSafeLossScaleOptimizer(optimizer)
    return optimizer


# ---------------------------------------------------------------- metric and callbacks


class MelanomaAUC(keras.metrics.AUC):
    """Streaming ROC AUC of P(melanoma): column MELANOMA_INDEX of a diagnosis head, else the one output."""

    def __init__(self, column: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("num_thresholds", AUC_THRESHOLDS)
        super().__init__(**kwargs)
        self.column = column

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        if self.column is not None:
            y_true = y_true[:, self.column : self.column + 1]
            y_pred = y_pred[:, self.column : self.column + 1]
        y_true = keras.ops.cast(y_true >= 0.5, "float32")  # mixed / smoothed labels count by majority
        return super().update_state(y_true, y_pred, sample_weight)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "column": self.column}


def _train_float(value: Any) -> float:
    return float(np.asarray(keras.ops.convert_to_numpy(value)).reshape(-1)[0])


def current_lr(optimizer: keras.optimizers.Optimizer) -> float:
    """The optimiser's learning rate at its current step (schedules evaluated)."""
    return _train_float(optimizer.learning_rate)


class EpochRecorder(keras.callbacks.Callback):
    """Records per epoch loss, val_loss, auc, val_auc, lr and epoch time; prints a `[kit]` progress line."""

    def __init__(self, label: str = "") -> None:
        super().__init__()
        self.label = label
        self.history: dict[str, list[float]] = {k: [] for k in HISTORY_KEYS}
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        seconds = time.monotonic() - self._start
        row = {k: float(logs.get(k, float("nan"))) for k in HISTORY_KEYS[:4]}
        row["lr"] = current_lr(self.model.optimizer)
        row["epoch_time_s"] = seconds
        for key in HISTORY_KEYS:
            self.history[key].append(row[key])
        total = self.params.get("epochs", "?") if self.params else "?"
        times = self.history["epoch_time_s"]
        left = (total - epoch - 1) * sum(times) / len(times) if isinstance(total, int) else float("nan")
        print(  # one line per epoch, also in a log: the fold's ETA at the mean epoch time so far
            f"[kit] {self.label}epoch {epoch + 1}/{total} loss {row['loss']:.4f} val_loss {row['val_loss']:.4f} "
            f"auc {row['auc']:.4f} val_auc {row['val_auc']:.4f} lr {row['lr']:.2e} {seconds:.1f} s "
            f"eta {left:.0f} s",
            flush=True,
        )


class UnpaddedValLoss(keras.callbacks.Callback):
    """Puts the epoch's ``val_loss`` back on the real validation rows. Where evaluation pads its last batch
    (`kernels.data.eval_full_batches`), the padding rows weigh 0 but Keras divides each batch's weighted loss
    sum by the full batch size, so its ``val_loss`` is the true mean x examples / rows; multiplied by
    ``rows / examples`` it is the mean over the real images. First in the callback list, so the printed line,
    the history and a ``val_loss`` checkpoint all see the true mean (the AUC metric already skips padding)."""

    def __init__(self, examples: int, rows: int) -> None:
        super().__init__()
        self.scale = rows / examples if examples else 1.0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None and "val_loss" in logs and self.scale != 1.0:
            logs["val_loss"] = float(logs["val_loss"]) * self.scale


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/inf (or exploded) loss; the message is the one line to show (fold, epoch, step,
    lr, advice)."""


# The clipped cross-entropies are below -log(keras epsilon 1e-7) ~ 16 per image; a training loss this large
# means the weights have blown up (a diverging recipe: lr = 1000 reaches 1e12 with finite numbers).
GUARD_DIVERGED_LOSS = 1e4


NONFINITE_ADVICE = ("try a lower train.lr (or a longer train.warmup_epochs), train.mixed_precision = 'off', "
                    "or check the input data")


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops the fold at the first NaN/inf training loss (or one above `GUARD_DIVERGED_LOSS`) by raising
    `NonFiniteLoss` (one line: fold, epoch, step, learning rate, what to try), instead of training on NaN to
    the end of the session. Checked after every compiled call (``train.steps_per_execution`` steps)."""

    def __init__(self, label: str = "") -> None:
        super().__init__()
        self.label = label
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get("loss")
        if value is None:
            return
        loss = _train_float(value)
        if math.isfinite(loss) and abs(loss) < GUARD_DIVERGED_LOSS:
            return
        lr = current_lr(self.model.optimizer)
        what = "non-finite" if not math.isfinite(loss) else "diverged (non-finite ahead)"
        raise NonFiniteLoss(
            f"[kit] {what} loss ({loss:.4g}) in {self.label.strip() or 'training'}, epoch {self.epoch + 1}, "
            f"step {batch + 1}, learning rate {lr:.3g}: the run stops here; {NONFINITE_ADVICE}")


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the weights of the best epoch by `monitor` (max for AUC, min for loss), stops early after
    `patience` epochs without improvement (0 = never), and puts the best weights back at the end.

    Weights are held in host memory, so nothing half-written is ever on disk. A NaN monitor value
    (a validation fold with one class) never counts as best; if no epoch had a finite value, the
    last epoch is kept.
    """

    def __init__(self, monitor: str = "val_auc", patience: int = 0, restore: bool = True) -> None:
        super().__init__()
        self.restore = restore  # False: only record the best epoch (train.keep = "last" / "swa")
        self.monitor = monitor
        self.patience = patience
        self.maximize = not monitor.endswith("loss")
        self.best = -math.inf if self.maximize else math.inf
        self.best_epoch = 0  # 1-based; 0 = none yet
        self.epochs_run = 0
        self.best_weights: list[np.ndarray] | None = None

    def _better(self, value: float) -> bool:
        return value > self.best if self.maximize else value < self.best

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epochs_run = epoch + 1
        value = float((logs or {}).get(self.monitor, float("nan")))
        if math.isfinite(value) and self._better(value):
            self.best, self.best_epoch = value, epoch + 1
            self.best_weights = [np.array(w, copy=True) for w in self.model.get_weights()] if self.restore else []
        elif self.patience and self.best_epoch and self.epochs_run - self.best_epoch >= self.patience:
            print(f"[kit] early stopping after epoch {self.epochs_run}: {self.monitor} best at epoch {self.best_epoch}")
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.best_weights is None:
            self.best_epoch = self.epochs_run
        elif self.restore:
            self.model.set_weights(self.best_weights)


class WeightAverage(keras.callbacks.Callback):
    """Stochastic weight averaging over epochs: the equal-weight mean of the model's weights (trainable and
    not: BatchNorm's moving statistics are averaged too, exact where they are frozen) taken at the end of each
    of the last `epochs` epochs of `planned`, loaded into the model when training ends. With early stopping,
    the epochs that ran last are averaged. Nothing is chosen on the validation fold."""

    def __init__(self, epochs: int, planned: int) -> None:
        super().__init__()
        self.epochs = max(1, epochs)
        self.planned = planned
        self.snapshots: list[list[np.ndarray]] = []
        self.averaged: tuple[int, int] = (0, 0)  # 1-based first and last epoch averaged

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.snapshots.append([np.array(w, copy=True) for w in self.model.get_weights()])
        self.snapshots = self.snapshots[-self.epochs:]
        self.averaged = (epoch + 2 - len(self.snapshots), epoch + 1)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.snapshots:
            self.model.set_weights([np.mean(ws, axis=0).astype(ws[0].dtype) for ws in zip(*self.snapshots, strict=True)])


def keep_callbacks(exp: Experiment) -> tuple[BestCheckpoint, WeightAverage | None]:
    """train.keep's callbacks: `BestCheckpoint` always (it records the best epoch and early-stops), restoring
    that epoch only for keep = "best"; a `WeightAverage` for keep = "swa"."""
    t = exp.train
    best = BestCheckpoint(t.monitor, t.early_stopping, restore=t.keep == "best")
    return best, WeightAverage(t.swa_epochs, t.epochs) if t.keep == "swa" else None


def kept_description(exp: Experiment, best: BestCheckpoint, average: WeightAverage | None) -> str:
    """Which weights a fold predicts with, in words (the manifest's folds[].kept)."""
    if exp.train.keep == "best":
        return f"epoch {best.best_epoch} of {best.epochs_run}, best {exp.train.monitor} on this fold (selected)"
    if average is not None and average.averaged[1]:
        first, last = average.averaged
        return f"mean of epochs {first}-{last} of {best.epochs_run}" if first < last else f"epoch {last} (last)"
    return f"epoch {best.epochs_run} (last)"


class ExactValidation(keras.callbacks.Callback):
    """The epoch's validation, exactly (``train.val_auc = "exact"``): at each epoch end the whole validation fold
    is predicted (the unlabelled evaluation pass the OOF prediction uses, padding rows dropped), and
    ``val_auc`` = the exact ROC AUC of P(melanoma) against the target (`kernels.metrics.auc`, ties half; NaN
    for a one-class fold) and ``val_loss`` = the training loss's mean over the real rows are written into the
    epoch's logs, in place of Keras' validation pass (its ``val_auc`` is a streaming 400-threshold estimate,
    coarse where label smoothing squeezes the scores into a narrow band). It must come after the EMA swap (the
    average is judged) and before `EpochRecorder` and `BestCheckpoint` in the callback list."""

    def __init__(self, exp: Experiment, inputs: Any, labels: np.ndarray, targets: np.ndarray) -> None:
        super().__init__()
        self.exp, self.inputs, self.labels, self.targets = exp, inputs, labels, targets
        self.loss = make_loss(exp)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        n = len(self.targets)
        out = np.asarray(keras.ops.convert_to_numpy(self.model.predict(self.inputs, verbose=0)), np.float32)[:n]
        if logs is not None:
            logs["val_auc"] = auc(self.targets, model_prediction(out, self.exp)) if n else float("nan")
            per_row = self.loss.call(keras.ops.convert_to_tensor(self.labels), keras.ops.convert_to_tensor(out))
            logs["val_loss"] = float(np.mean(keras.ops.convert_to_numpy(per_row)))


def exact_validation(exp: Experiment, hw: Any, files: Sequence[str]) -> ExactValidation | None:
    """The `ExactValidation` of a fold's validation ``files`` (None with ``train.val_auc = "streaming"``)."""
    if exp.train.val_auc != "exact":
        return None
    meta = read_records_meta(files, labelled=True)
    inputs = with_known_batches(eval_dataset(list(files), exp, hw, labelled=False), len(meta), eval_batch_size(exp, hw))
    return ExactValidation(exp, inputs, eval_labels(meta, exp.model.head), meta["target"].to_numpy())


def ema_callbacks(exp: Experiment) -> list[keras.callbacks.Callback]:
    """With train.ema: Keras' SwapEMAWeights, swapping the averaged weights into the model for each
    validation pass and at each epoch end (back to the raw weights at the next epoch's start). It must come
    BEFORE `BestCheckpoint` in the callback list, so that the best epoch is judged on, and keeps, the average;
    at the end of fit the model holds the average (Keras' finalize step), which the predictions use."""
    return [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if exp.train.ema > 0 else []


# ---------------------------------------------------------------- one fold


@dataclass
class FoldTraining:
    """What training one fold gives: the model (best weights loaded) and how it got there."""

    model: keras.Model
    history: dict[str, list[float]]
    best_epoch: int  # 1-based (0 when no epoch ran)
    epochs_run: int
    epoch_times_s: list[float]
    train_s: float
    best_value: float | None = None
    kept: str = ""  # which weights the model holds (train.keep), in words


def effective_jit_compile(hw: Any) -> bool:
    """XLA for the train/predict steps: the hardware's choice, and always under JAX (un-jitted JAX crawls)."""
    return bool(getattr(hw, "jit_compile", False)) or getattr(hw, "backend", "") == "jax"


def compile_model(model: keras.Model, exp: Experiment, hw: Any, peak_lr: float, steps_per_epoch: int) -> None:
    """Compile with the experiment's loss, optimiser (per-step schedule at `peak_lr`) and the melanoma AUC."""
    column = MELANOMA_INDEX if exp.model.head == "diagnosis" else None
    model.compile(
        optimizer=make_optimizer(exp, make_schedule(exp, peak_lr, steps_per_epoch)),
        loss=make_loss(exp),
        metrics=[MelanomaAUC(column=column, name="auc")],
        jit_compile=effective_jit_compile(hw),
        steps_per_execution=exp.train.steps_per_execution,
    )


def train_fold(
    model: keras.Model, exp: Experiment, train_ds: Any, steps_per_epoch: int, val_ds: Any, label: str = "",
    val_rows: tuple[int, int] | None = None, exact: ExactValidation | None = None,
) -> FoldTraining:
    """Fit a compiled model; end with the weights train.keep names (`keep_callbacks`).
    ``val_rows``: (validation examples, rows the padded pass yields), to report the true ``val_loss``
    (`UnpaddedValLoss`). ``exact``: the exact validation (`exact_validation`) in place of Keras' pass over
    ``val_ds``. Raises `NonFiniteLoss` at the first NaN/inf training loss."""
    unpad = [UnpaddedValLoss(*val_rows)] if val_rows and exact is None else []
    recorder = EpochRecorder(label)
    best, average = keep_callbacks(exp)
    guard = NonFiniteGuard(label)
    start = time.monotonic()
    if exp.train.epochs > 0:
        model.fit(
            train_ds, epochs=exp.train.epochs, steps_per_epoch=steps_per_epoch,
            validation_data=val_ds if exact is None else None,
            callbacks=[*unpad, guard, *ema_callbacks(exp), *([exact] if exact else []), recorder, best,
                       *([average] if average else [])],
            verbose=exp.train.verbose,
            shuffle=False,  # tf.data shuffles
        )
    value = best.best if best.best_weights is not None else None
    return FoldTraining(
        model=model, history=recorder.history, best_epoch=best.best_epoch, epochs_run=best.epochs_run,
        epoch_times_s=list(recorder.history["epoch_time_s"]), train_s=time.monotonic() - start, best_value=value,
        kept=kept_description(exp, best, average),
    )


def with_known_batches(ds: Any, n_examples: int, batch_size: int) -> Any:
    """Tell tf.data how many batches a finite eval dataset has (ceil(n / batch), from the file names), so
    Keras neither warns that the validation data "ran out" nor guesses progress."""
    return ds.apply(tf.data.experimental.assert_cardinality(math.ceil(n_examples / batch_size)))


# ---------------------------------------------------------------- prediction with TTA


@dataclass(frozen=True)
class TTAPrediction:
    """P(malignant) per image in file order: one plain pass, and the mean over every TTA view."""

    plain: np.ndarray
    tta: np.ndarray
    views: int  # number of passes averaged into `tta`


def tta_plan(exp: Experiment) -> list[tuple[int | None, int | None]]:
    """The passes to average: (dihedral view or None, augmented pass number or None), the plain pass first."""
    plan: list[tuple[int | None, int | None]] = [(None, None)]
    if exp.train.tta_dihedral:
        plan += [(k, None) for k in range(1, DIHEDRAL_VIEWS)]
    plan += [(None, i) for i in range(1, exp.train.tta + 1)]
    return plan


def predict_pass(model: keras.Model, ds: Any, exp: Experiment) -> np.ndarray:
    """P(malignant) for every element of a finite dataset."""
    return model_prediction(model.predict(ds, verbose=0), exp)


def predict_tta(model: keras.Model, files: Sequence[str], exp: Experiment, hw: Any) -> TTAPrediction:
    """Predict `files` in eval order: the plain pass, then the dihedral views and train.tta augmented passes
    (each seeded by its pass number, so the same run gives the same TTA). Passes whose batches look alike
    (all dihedral views; the augmented passes) are chained into one dataset and predicted by one
    ``model.predict`` call: every call pays a fixed cost (gathering the model state onto the devices, starting
    the input pipeline) that on 8 devices outweighs a small pass. Padding rows are dropped. The passes read no
    labels, so validation and test files give batches of one spec: one traced/compiled predict step per run."""
    n = count_examples(files)
    rows = eval_rows(n, exp, hw)
    passes = []
    for view, tta_pass in tta_plan(exp):
        ds = eval_dataset(list(files), exp, hw, labelled=False, augment=tta_pass is not None, view=view,
                          tta_pass=tta_pass)
        passes.append(with_known_batches(ds, n, eval_batch_size(exp, hw)))
    preds: list[np.ndarray] = []
    for group in chain_groups(passes):
        chained = group[0]
        for ds in group[1:]:
            chained = chained.concatenate(ds)
        pred = predict_pass(model, chained, exp)
        if len(pred) != rows * len(group):
            raise ValueError(f"predict: {len(pred)} predictions for {len(group)} pass(es) of {rows} rows "
                             f"({n} records in {len(files)} file(s))")
        preds += [pred[i * rows:i * rows + n] for i in range(len(group))]
    stacked = np.stack(preds)
    return TTAPrediction(plain=stacked[0], tta=stacked.mean(axis=0), views=len(preds))


def chain_groups(passes: Sequence[Any]) -> list[list[Any]]:
    """Consecutive datasets with the same element spec, grouped (only those can be concatenated)."""
    groups: list[list[Any]] = []
    for ds in passes:
        if groups and groups[-1][0].element_spec == ds.element_spec:
            groups[-1].append(ds)
        else:
            groups.append([ds])
    return groups


def dihedral_views(images: Any) -> list[Any]:
    """All 8 dihedral views of a batch (for in-memory TTA, e.g. `kit predict`)."""
    return [dihedral_view(images, k) for k in range(DIHEDRAL_VIEWS)]
