"""Training parts: losses against their formulas, the per-step LR schedule, optimisers that learn, the
melanoma AUC metric against the exact AUC, best-epoch checkpointing / early stopping, the TTA plan."""

from __future__ import annotations

import math
import types
import typing

import keras
import numpy as np
import pytest

from kernels.config import TrainSection, from_dict
from kernels.metrics import auc
from kernels.schema import DIAGNOSES, MELANOMA_INDEX
from kernels.train import (
    DIHEDRAL_VIEWS,
    LOSSES,
    OPTIMIZERS,
    SCHEDULES,
    BestCheckpoint,
    MelanomaAUC,
    WarmupDecay,
    WeightAverage,
    current_lr,
    keep_callbacks,
    kept_description,
    make_loss,
    make_optimizer,
    make_schedule,
    tta_plan,
)


def make_exp(train: dict | None = None, head: str = "sigmoid") -> typing.Any:
    return from_dict({"name": "t", "model": {"head": head}, "train": train or {}})


def literal_choices(key: str) -> set[str]:
    return set(typing.get_args(typing.get_type_hints(TrainSection)[key]))


def numpy_value(x: typing.Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float64)


def test_registries_cover_the_config_choices() -> None:
    assert set(LOSSES) == literal_choices("loss")
    assert set(OPTIMIZERS) == literal_choices("optimizer")
    assert set(SCHEDULES) == literal_choices("schedule")


def test_bce_with_label_smoothing_matches_formula() -> None:
    y = np.array([[1.0], [0.0], [1.0], [0.0]], "float32")
    p = np.array([[0.9], [0.2], [0.3], [0.6]], "float32")
    loss = make_loss(make_exp({"loss": "bce", "label_smoothing": 0.1}))
    ys = y * 0.9 + 0.05
    want = -np.mean(ys * np.log(p) + (1 - ys) * np.log(1 - p))
    assert float(numpy_value(loss(y, p))) == pytest.approx(want, rel=1e-4)
    unsmoothed = make_loss(make_exp({"loss": "bce", "label_smoothing": 0.0}))
    assert float(numpy_value(unsmoothed(y, p))) != pytest.approx(want, rel=1e-3)


def test_focal_loss_matches_formula_and_down_weights_easy_examples() -> None:
    y = np.array([[1.0], [0.0], [1.0], [0.0]], "float32")
    p = np.array([[0.95], [0.05], [0.3], [0.7]], "float32")
    gamma, alpha = 2.0, 0.25
    loss = make_loss(make_exp({"loss": "focal", "focal_gamma": gamma, "focal_alpha": alpha, "label_smoothing": 0.0}))
    pt = np.where(y == 1, p, 1 - p)
    weight = np.where(y == 1, alpha, 1 - alpha)
    want = np.mean(-weight * (1 - pt) ** gamma * np.log(pt))
    assert float(numpy_value(loss(y, p))) == pytest.approx(want, rel=1e-4)
    per_example = -weight * (1 - pt) ** gamma * np.log(pt)
    assert per_example[0] < 0.01 * per_example[2]  # a confident right answer barely counts


@pytest.mark.parametrize("name", ["bce", "focal"])
def test_diagnosis_head_gets_a_categorical_loss(name: str) -> None:
    exp = make_exp({"loss": name, "label_smoothing": 0.0}, head="diagnosis")
    y = keras.ops.one_hot(np.array([MELANOMA_INDEX, 0]), len(DIAGNOSES))
    good = np.full((2, len(DIAGNOSES)), 0.01, "float32")
    good[0, MELANOMA_INDEX] = good[1, 0] = 1 - 0.01 * (len(DIAGNOSES) - 1)
    bad = np.roll(good, 1, axis=1)
    loss = make_loss(exp)
    assert "Categorical" in type(loss).__name__
    assert float(numpy_value(loss(y, good))) < float(numpy_value(loss(y, bad)))
    if name == "bce":
        assert float(numpy_value(loss(y, good))) == pytest.approx(-math.log(good[0, MELANOMA_INDEX]), rel=1e-4)


def schedule_values(schedule: WarmupDecay, steps: range) -> np.ndarray:
    return np.array([float(numpy_value(schedule(s))) for s in steps])


def test_warmup_then_cosine_per_step() -> None:
    exp = make_exp({"epochs": 10, "warmup_epochs": 2.0, "schedule": "cosine", "lr": 1e-3, "min_lr": 1e-5})
    s = make_schedule(exp, peak_lr=2e-3, steps_per_epoch=5)
    assert (s.warmup_steps, s.total_steps) == (10, 50)
    lr = schedule_values(s, range(50))
    assert np.all(np.diff(lr[:10]) > 0) and lr[0] < 0.2 * 2e-3  # linear warm-up, per step
    assert lr[9] == pytest.approx(2e-3) and lr[10] == pytest.approx(2e-3)
    assert np.all(np.diff(lr[10:]) < 0)  # then decays every step
    assert lr[30] == pytest.approx(1e-5 + (2e-3 - 1e-5) * 0.5, rel=1e-4)  # half way: cos = 0
    assert float(numpy_value(s(50))) == pytest.approx(1e-5, rel=1e-4)
    assert float(numpy_value(s(500))) == pytest.approx(1e-5, rel=1e-4)  # stays at min_lr


def test_exponential_and_constant_schedules() -> None:
    exp = make_exp({"epochs": 6, "warmup_epochs": 1.0, "schedule": "exponential", "exp_decay": 0.5, "min_lr": 0.0})
    s = make_schedule(exp, peak_lr=1e-3, steps_per_epoch=4)
    assert float(numpy_value(s(4))) == pytest.approx(1e-3)
    assert float(numpy_value(s(8))) == pytest.approx(0.5e-3, rel=1e-5)  # x0.5 per epoch after warm-up
    assert float(numpy_value(s(10))) == pytest.approx(1e-3 * 0.5**1.5, rel=1e-5)  # per step, not per epoch
    flat = make_schedule(make_exp({"schedule": "constant", "warmup_epochs": 0.0}), peak_lr=3e-4, steps_per_epoch=4)
    assert np.allclose(schedule_values(flat, range(0, 40, 7)), 3e-4)


def tiny_problem(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(256, 4)).astype("float32")
    y = (x @ np.array([1.5, -2.0, 0.5, 0.0]) > 0).astype("float32")[:, None]
    return x, y


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_optimizer_learns_with_the_schedule(name: str) -> None:
    exp = make_exp({"optimizer": name, "lr": 0.05, "epochs": 8, "warmup_epochs": 1.0, "weight_decay": 1e-4})
    keras.utils.set_random_seed(0)
    x, y = tiny_problem()
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    optimizer = make_optimizer(exp, make_schedule(exp, 0.05, steps_per_epoch=8))
    assert type(optimizer).__name__.lower() == name
    model.compile(optimizer=optimizer, loss=make_loss(exp))
    before = float(model.evaluate(x, y, verbose=0))
    model.fit(x, y, batch_size=32, epochs=8, verbose=0)
    assert float(model.evaluate(x, y, verbose=0)) < 0.6 * before
    assert current_lr(model.optimizer) == pytest.approx(exp.train.min_lr, rel=1e-3)  # 64 steps: schedule over


def test_melanoma_auc_metric_tracks_exact_auc() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(500) < 0.2).astype("float32")
    p = np.clip(0.3 * y + rng.random(500) * 0.7, 0, 1).astype("float32")
    metric = MelanomaAUC(name="auc")
    metric.update_state(y[:, None], p[:, None])
    assert float(numpy_value(metric.result())) == pytest.approx(auc(y, p), abs=0.01)
    onehot = np.eye(len(DIAGNOSES), dtype="float32")[np.where(y == 1, MELANOMA_INDEX, 1)]
    probs = rng.random((500, len(DIAGNOSES))).astype("float32")
    probs[:, MELANOMA_INDEX] = p
    diag = MelanomaAUC(column=MELANOMA_INDEX, name="auc")
    diag.update_state(onehot, probs)
    assert float(numpy_value(diag.result())) == pytest.approx(auc(y, p), abs=0.01)


def test_best_checkpoint_restores_best_epoch_and_stops_early() -> None:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    callback = BestCheckpoint("val_auc", patience=2)
    callback.set_model(model)
    values = [0.6, 0.8, float("nan"), 0.7, 0.75]
    kernels = []
    for epoch, value in enumerate(values):
        model.set_weights([np.full((2, 1), epoch, "float32"), np.zeros(1, "float32")])
        kernels.append(epoch)
        model.stop_training = False
        callback.on_epoch_end(epoch, {"val_auc": value})
        if model.stop_training:
            break
    assert epoch == 3  # two epochs without improvement after the best (epoch 2, 1-based)
    callback.on_train_end()
    assert callback.best_epoch == 2 and callback.epochs_run == 4
    np.testing.assert_array_equal(model.get_weights()[0], np.full((2, 1), 1.0))


def test_best_checkpoint_by_loss_and_all_nan() -> None:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    by_loss = BestCheckpoint("val_loss")
    by_loss.set_model(model)
    for epoch, value in enumerate([0.5, 0.4, 0.45]):
        by_loss.on_epoch_end(epoch, {"val_loss": value})
    by_loss.on_train_end()
    assert by_loss.best_epoch == 2 and by_loss.best == pytest.approx(0.4)
    nan = BestCheckpoint("val_auc")
    nan.set_model(model)
    for epoch in range(3):
        nan.on_epoch_end(epoch, {"val_auc": float("nan")})
    nan.on_train_end()
    assert nan.best_epoch == 3 and nan.best_weights is None  # the last epoch is kept


def _run_epochs(model: keras.Model, callbacks: list, values: list[float]) -> None:
    """Epoch e ends with every kernel weight = e (0-based) and val_auc = values[e]."""
    for epoch, value in enumerate(values):
        model.set_weights([np.full((2, 1), epoch, "float32"), np.zeros(1, "float32")])
        for cb in callbacks:
            cb.on_epoch_end(epoch, {"val_auc": value})
    for cb in callbacks:
        cb.on_train_end()


@pytest.mark.parametrize(("keep", "kernel", "kept"), [
    ("best", 1.0, "epoch 2 of 5, best val_auc on this fold (selected)"),
    ("last", 4.0, "epoch 5 (last)"),
    ("swa", 3.0, "mean of epochs 3-5 of 5"),  # (2 + 3 + 4) / 3
])
def test_keep_chooses_the_weights_without_peeking_unless_best(keep: str, kernel: float, kept: str) -> None:
    """The validation AUC peaks at epoch 2; only keep = "best" goes back to it, and says it was selected."""
    exp = make_exp({"keep": keep, "epochs": 5, "swa_epochs": 3})
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    best, average = keep_callbacks(exp)
    callbacks = [best, *([average] if average else [])]
    for cb in callbacks:
        cb.set_model(model)
    _run_epochs(model, callbacks, [0.6, 0.9, 0.7, 0.8, 0.75])
    np.testing.assert_allclose(model.get_weights()[0], np.full((2, 1), kernel))
    assert best.best_epoch == 2 and best.best == pytest.approx(0.9)
    assert kept_description(exp, best, average) == kept


def test_weight_average_with_fewer_epochs_than_asked() -> None:
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    average = WeightAverage(epochs=5, planned=5)
    average.set_model(model)
    _run_epochs(model, [average], [0.5, 0.5])  # early stopping after two epochs: both averaged
    np.testing.assert_allclose(model.get_weights()[0], np.full((2, 1), 0.5))
    assert average.averaged == (1, 2)


def test_tta_plan() -> None:
    assert tta_plan(make_exp({"tta": 0, "tta_dihedral": False})) == [(None, None)]
    plan = tta_plan(make_exp({"tta": 3, "tta_dihedral": True}))
    assert plan[0] == (None, None)
    assert plan[1:DIHEDRAL_VIEWS] == [(k, None) for k in range(1, DIHEDRAL_VIEWS)]
    assert plan[DIHEDRAL_VIEWS:] == [(None, 1), (None, 2), (None, 3)]


EMA_MOMENTUM = 0.8  # high enough to lag the raw weights visibly over a few steps
LR = 0.2  # constant: the raw weights keep moving, so the average lags them clearly


def _ema_problem() -> tuple[typing.Any, typing.Any, int, list[np.ndarray]]:
    import tensorflow as tf

    rng = np.random.default_rng(5)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, :1] + 0.5 * rng.normal(size=(64, 1)) > 0).astype("float32")
    batch = 16
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    val = tf.data.Dataset.from_tensor_slices((x[:32], y[:32])).batch(batch)
    keras.utils.set_random_seed(1)
    init = [np.array(w) for w in tiny_model().get_weights()]
    return train, val, len(x) // batch, init


def tiny_model() -> keras.Model:
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])


def _raw_and_ema_per_epoch(train: typing.Any, steps: int, init: list[np.ndarray], epochs: int) -> tuple[list, list]:
    """Replays training without EMA, recording the raw weights after every step, and computes Keras' EMA
    formula by hand (the average starts at the first step's weights): per-epoch-end raw and averaged weights."""
    from kernels.train import compile_model

    exp = make_exp({"epochs": epochs, "lr": LR, "schedule": "constant", "warmup_epochs": 0.0, "ema": 0.0, "monitor": "val_loss"})
    model = tiny_model()
    model.set_weights(init)
    compile_model(model, exp, types.SimpleNamespace(jit_compile=False, backend="tensorflow"), LR, steps)
    steps_seen: list[list[np.ndarray]] = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda b, logs: steps_seen.append([np.array(w) for w in model.get_weights()]))
    model.fit(train, epochs=epochs, steps_per_epoch=steps, callbacks=[record], verbose=0, shuffle=False)
    raw, ema, average = [], [], None
    for i, w in enumerate(steps_seen):
        average = w if average is None else [EMA_MOMENTUM * a + (1 - EMA_MOMENTUM) * v for a, v in zip(average, w, strict=True)]
        if (i + 1) % steps == 0:
            raw.append(w)
            ema.append(average)
    return raw, ema


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_ema_weights_are_validated_checkpointed_and_predicted(policy: str) -> None:
    """train.ema: validation, the best-epoch checkpoint and the final model (hence predictions and saved
    weights) use the optimiser's moving average, not the raw weights; also under the loss-scale wrapper."""
    from kernels.train import ReplicaSafeLossScaleOptimizer, compile_model, train_fold

    epochs = 3
    train, val, steps, init = _ema_problem()
    raw, ema = _raw_and_ema_per_epoch(train, steps, init, epochs)
    exp = make_exp({"epochs": epochs, "lr": LR, "schedule": "constant", "warmup_epochs": 0.0, "ema": EMA_MOMENTUM,
                    "keep": "best", "monitor": "val_loss", "verbose": 0})
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = tiny_model()
        model.set_weights(init)
        compile_model(model, exp, types.SimpleNamespace(jit_compile=False, backend="tensorflow"), LR, steps)
        if policy == "mixed_float16":
            assert isinstance(model.optimizer, ReplicaSafeLossScaleOptimizer)
            assert model.optimizer.inner_optimizer.use_ema
        fold = train_fold(model, exp, train, steps, val)
        tol = 1e-2 if policy == "mixed_float16" else 1e-5
        best = fold.best_epoch - 1
        for got, want in zip(model.get_weights(), ema[best], strict=True):
            np.testing.assert_allclose(got, want, atol=tol)
        lag = max(float(np.max(np.abs(a - r))) for a, r in zip(ema[best], raw[best], strict=True))
        assert lag > 10 * tol  # the average really differs from the raw weights
        x, y = next(iter(val.unbatch().batch(32)))
        kernel, bias = ema[best]
        want_pred = 1 / (1 + np.exp(-(np.asarray(x) @ kernel + bias)))
        np.testing.assert_allclose(model.predict(x, verbose=0), want_pred, atol=tol)
        for epoch in range(epochs):  # each epoch's validation loss is that of its averaged weights
            probe = tiny_model()
            probe.set_weights(ema[epoch])
            probe.compile(loss=make_loss(exp))
            assert fold.history["val_loss"][epoch] == pytest.approx(
                float(probe.evaluate(val, verbose=0)), abs=10 * tol)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_ema_is_off_by_default_and_validated() -> None:
    from kernels.config import ConfigError
    from kernels.train import ema_callbacks

    exp = make_exp()
    assert exp.train.ema == 0.0 and not make_optimizer(exp, 0.01).use_ema and ema_callbacks(exp) == []
    on = make_optimizer(make_exp({"ema": 0.99}), 0.01)
    assert on.use_ema and on.ema_momentum == pytest.approx(0.99)
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="train.ema"):
            make_exp({"ema": bad})


def test_val_loss_is_the_mean_over_the_real_rows_when_evaluation_pads() -> None:
    """The accelerator routes pad the last validation batch with weight-0 rows (`kernels.data.data_pad`);
    Keras still divides by the full batch, so without `UnpaddedValLoss` the printed and recorded val_loss
    is low by the padding's share. With it, val_loss is the loss over the real rows."""
    import tensorflow as tf

    from kernels.data import data_pad
    from kernels.train import train_fold

    x, y = tiny_problem(3)
    n, batch = 10, 8  # 10 real rows in two batches of 8: the second holds 2 real and 6 padding rows
    val = tf.data.Dataset.from_tensor_slices((x[:n], y[:n])).batch(batch).map(
        lambda images, labels: data_pad(images, labels, batch))
    rows = 2 * batch
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    exp = make_exp({"epochs": 1, "loss": "bce", "label_smoothing": 0.0, "monitor": "val_loss"})

    def recorded(val_rows: tuple[int, int] | None) -> tuple[float, float]:
        keras.utils.set_random_seed(4)
        model = tiny_model()
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=make_loss(exp))
        trained = train_fold(model, exp, train, len(x) // 32, val, val_rows=val_rows)
        real = float(numpy_value(make_loss(exp)(y[:n], model.predict(x[:n], verbose=0))))
        return trained.history["val_loss"][0], real

    unpadded, real = recorded((n, rows))
    assert unpadded == pytest.approx(real, rel=1e-4)
    keras_alone, real_again = recorded(None)
    assert real_again == pytest.approx(real, rel=1e-5)
    assert keras_alone == pytest.approx(real * n / rows, rel=1e-4)  # what it printed before
