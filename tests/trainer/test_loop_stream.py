"""Training in pieces: the same as the in-memory loop when one buffer holds every row, and it
learns when many buffers do."""

from __future__ import annotations

import numpy as np
import pytest

from continual_trainer.data.errors import UserError
from continual_trainer.trainer.loop import LoopConfig, train, train_stream
from continual_trainer.trainer.models import ModelSpec, build_model, clone


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int32)


def _pieces(x, y, size, w=None):
    def passes(epoch: int):
        for a in range(0, len(y), size):
            yield x[a : a + size], y[a : a + size], None if w is None else w[a : a + size]

    return passes


def _general_model():
    import keras

    inputs = keras.Input((6,))
    h = keras.layers.LayerNormalization()(keras.layers.Dense(8, activation="relu")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))
    return model


@pytest.mark.parametrize("kind", ["dense", "general", "regression", "weighted"])
def test_one_buffer_of_every_row_trains_as_the_in_memory_loop(kind: str) -> None:
    x, y = _data(300)
    w = np.linspace(0.5, 1.5, len(y)).astype(np.float32) if kind == "weighted" else None
    task, std = "classification", 1.0
    if kind == "regression":
        y, task, std = (x[:, 0] * 3 + x[:, 1]).astype(np.float32), "regression", 3.2
        model = build_model(ModelSpec((8,)), 6, 0, seed=1)
    else:
        model = _general_model() if kind == "general" else build_model(ModelSpec((8, 4)), 6, 2, seed=1)
    twin = clone(model)
    config = LoopConfig(epochs=4, batch_size=32, learning_rate=0.01)
    a = train(model, x, y, config, seed=5, sample_weight=w, task=task, target_std=std)
    b = train_stream(twin, _pieces(x, y, 64, w), config, seed=5, buffer_rows=10_000, task=task, target_std=std)
    np.testing.assert_allclose(a.epoch_loss, b.epoch_loss, rtol=1e-5)
    for u, v in zip(model.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


def test_many_small_buffers_still_learn() -> None:
    x, y = _data(4000)
    model = build_model(ModelSpec((16,)), 6, 2, seed=0)
    result = train_stream(model, _pieces(x, y, 250), LoopConfig(epochs=5, batch_size=64), seed=0, buffer_rows=500)
    assert len(result.epoch_loss) == 5 and result.epoch_loss[-1] < result.epoch_loss[0]
    tx, ty = _data(1000, seed=9)
    accuracy = float(((model.predict(tx, verbose=0)[:, 0] > 0.5) == ty).mean())
    assert accuracy > 0.9


def test_patience_stops_on_validation_rows_and_restores_the_best_epoch() -> None:
    x, y = _data(2000)
    vx, vy = _data(400, seed=3)
    vy = 1 - vy  # a validation set the training makes worse: the best epoch is an early one
    model = build_model(ModelSpec((16,)), 6, 2, seed=0)
    config = LoopConfig(epochs=60, batch_size=64, patience=3)
    result = train_stream(model, _pieces(x, y, 500), config, buffer_rows=1000, validation=(vx, vy, None))
    assert result.stopped == "patience" and result.best_epoch is not None and result.best_epoch <= 3
    assert len(result.epoch_loss) == result.best_epoch + 3


@pytest.mark.parametrize("in_pieces", [False, True])
def test_a_trained_model_no_epoch_improves_comes_back_as_it_was(in_pieces: bool) -> None:
    """The starting weights count as epoch 0 of early stopping: a trained model whose training
    only makes its held-out loss worse (a learning rate far too high) is given back unchanged."""
    x, y = _data(2000)
    model = build_model(ModelSpec((16,)), 6, 2, seed=0)
    train(model, x, y, LoopConfig(epochs=20, batch_size=64), seed=0)
    before = [w.copy() for w in model.get_weights()]
    config = LoopConfig(epochs=30, batch_size=64, patience=2, learning_rate=5.0)
    if in_pieces:
        vx, vy = _data(400, seed=3)
        result = train_stream(model, _pieces(x, y, 500), config, buffer_rows=1000, validation=(vx, vy, None))
    else:
        result = train(model, x, y, config, seed=0)
    assert result.stopped == "patience" and result.best_epoch == 0 and len(result.epoch_loss) == 2
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before, strict=True))


def test_a_failing_source_surfaces_its_error_and_patience_is_refused() -> None:
    def broken(epoch: int):
        x, y = _data(100)
        yield x, y, None
        raise OSError("the store went away")

    model = build_model(ModelSpec((4,)), 6, 2, seed=0)
    with pytest.raises(OSError, match="went away"):
        train_stream(model, broken, LoopConfig(epochs=2, batch_size=32), buffer_rows=50)
    with pytest.raises(UserError, match="patience"):
        train_stream(model, broken, LoopConfig(epochs=2, patience=3))
