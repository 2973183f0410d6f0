"""One compiled model for every fold (`kernels.foldstart`): a fold starts from the built weights, a fresh
optimiser and its own random streams, and the compiled train step is the one fold 0 traced."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from kernels.foldstart import FOLD_SEED_STRIDE, fold_seed_state, restore_start, seed_fold, snapshot_start


def _model() -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((4,))
    x = keras.layers.Dense(8, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.5)(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    return model


def _seed_states(model: keras.Model) -> list[np.ndarray]:
    ids = {id(v) for v in model.weights}
    return [np.array(v) for v in model.variables if id(v) not in ids]


def test_restore_puts_back_weights_optimizer_and_moves_seeds_per_fold() -> None:
    model = _model()
    start = snapshot_start(model)
    assert model.optimizer.built and start.optimizer and start.seeds  # Adam moments + step; Dropout's seed
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert int(model.optimizer.iterations) == 8
    assert any(not np.array_equal(np.array(v), w) for v, w in zip(model.weights, start.weights, strict=True))
    train_function = model.train_function

    restore_start(model, start, fold=2)
    for variable, value in zip(model.weights, start.weights, strict=True):
        np.testing.assert_array_equal(np.array(variable), value)  # BatchNorm statistics too
    assert int(model.optimizer.iterations) == 0
    for variable, value in zip(model.optimizer.variables, start.optimizer, strict=True):  # moments back to their built zeros
        np.testing.assert_array_equal(np.array(variable), value)
    for state, saved in zip(_seed_states(model), start.seeds, strict=True):
        np.testing.assert_array_equal(state, fold_seed_state(saved, 2))
        assert int(state[0]) == (int(saved[0]) + 2 * FOLD_SEED_STRIDE) % 2**32
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert model.train_function is train_function  # the compiled step is reused, not traced again


def test_fold_result_does_not_depend_on_folds_before() -> None:
    """Fold 1 trained after fold 0 on the kept model == fold 1 trained first on a fresh model."""
    x = np.random.default_rng(1).normal(size=(64, 4)).astype("float32")
    y = (x[:, 1] > 0).astype("float32")

    def train(model: keras.Model, start: object, fold: int) -> list[np.ndarray]:
        restore_start(model, start, fold)  # type: ignore[arg-type]
        seed_fold(100 + fold)  # as kernels.main.run_fold
        model.fit(x, y, epochs=1, batch_size=16, verbose=0, shuffle=False)
        return [np.array(v) for v in model.weights]

    kept = _model()
    kept_start = snapshot_start(kept)
    train(kept, kept_start, 0)
    after_fold0 = train(kept, kept_start, 1)
    fresh = _model()
    alone = train(fresh, snapshot_start(fresh), 1)
    for a, b in zip(after_fold0, alone, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_seed_fold_keeps_tensorflows_compiled_functions() -> None:
    """`seed_fold` leaves TensorFlow's kernel and function caches alone (`tf.random.set_seed` clears them, and
    every compiled step is then re-instantiated in the next fold). Seen through a stateful random op: a kept
    kernel continues its stream, a cleared one starts it again."""
    tf.random.set_seed(7)

    @tf.function
    def draw() -> tf.Tensor:
        return tf.random.uniform([4], seed=1)

    first = draw().numpy()
    seed_fold(8)
    assert not np.allclose(draw().numpy(), first)  # the same kernel, further along its stream
    tf.random.set_seed(7)  # what keras.utils.set_random_seed does: the caches go, the stream restarts
    np.testing.assert_allclose(draw().numpy(), first)
    seed_fold(9)
    assert np.random.rand() == np.random.RandomState(9).rand()
