"""The compiled loop trains like Keras `fit` and honours weights, frozen layers and seeds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from continual_trainer.trainer.loop import LoopConfig, LossHook, Penalty, lay_out, train
from continual_trainer.trainer.models import ModelSpec, build_model, clone


def _data(n: int = 64, n_classes: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32) if n_classes == 2 else rng.integers(0, n_classes, n).astype(np.int32)
    return x, y


def _fit(model, x, y, config: LoopConfig, sample_weight=None):
    import keras

    opt = (
        keras.optimizers.SGD(config.learning_rate, momentum=config.momentum)
        if config.optimizer == "sgd"
        else keras.optimizers.Adam(config.learning_rate)
    )
    loss = "binary_crossentropy" if model.layers[-1].units == 1 else "sparse_categorical_crossentropy"
    model.compile(optimizer=opt, loss=loss)
    model.fit(x, y, epochs=config.epochs, batch_size=config.batch_size, sample_weight=sample_weight, verbose=0)


@pytest.mark.parametrize(
    ("optimizer", "n_classes", "weighted"),
    [("sgd", 2, False), ("sgd", 2, True), ("adam", 2, False), ("sgd", 3, False), ("adam", 3, True)],
)
def test_full_batch_training_matches_keras_fit(optimizer: str, n_classes: int, weighted: bool) -> None:
    # With one batch per epoch the shuffle order cannot matter, so the loop and fit
    # must follow the same trajectory from the same initial weights.
    x, y = _data(n_classes=n_classes)
    w = np.linspace(0.2, 2.0, len(y)).astype(np.float32) if weighted else None
    config = LoopConfig(epochs=20, batch_size=len(y), learning_rate=0.05, optimizer=optimizer)
    ours = build_model(ModelSpec((8, 4)), 6, n_classes, seed=3)
    keras_model = clone(ours)
    train(ours, x, y, config, sample_weight=w)
    _fit(keras_model, x, y, config, sample_weight=w)
    for a, b in zip(ours.get_weights(), keras_model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_minibatch_training_learns_and_is_deterministic() -> None:
    x, y = _data(n=200)
    config = LoopConfig(epochs=30, batch_size=16)
    a = build_model(ModelSpec((8, 4)), 6, 2, seed=1)
    b = build_model(ModelSpec((8, 4)), 6, 2, seed=1)
    ra = train(a, x, y, config, seed=7)
    train(b, x, y, config, seed=7)
    assert ra.epoch_loss[-1] < ra.epoch_loss[0] / 2
    accuracy = ((np.asarray(a(x))[:, 0] > 0.5) == y).mean()
    assert accuracy > 0.9
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
    c = build_model(ModelSpec((8, 4)), 6, 2, seed=1)
    train(c, x, y, config, seed=8)
    assert not np.allclose(a.get_weights()[0], c.get_weights()[0])


def test_frozen_layers_do_not_change() -> None:
    x, y = _data()
    model = build_model(ModelSpec((8, 4)), 6, 2, seed=0)
    model.layers[0].trainable = False
    before = [w.copy() for w in model.get_weights()]
    train(model, x, y, LoopConfig(epochs=3, batch_size=8))
    after = model.get_weights()
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert not np.array_equal(before[2], after[2])


def test_zero_weight_rows_are_ignored() -> None:
    x, y = _data(n=128)
    keep = y == 0
    model = build_model(ModelSpec((8,)), 6, 2, seed=0)
    train(model, x, y, LoopConfig(epochs=40, batch_size=16), sample_weight=keep.astype(np.float32))
    # Only class-0 rows carry weight, so the model learns to predict class 0 everywhere.
    assert (np.asarray(model(x))[:, 0] < 0.5).mean() > 0.95


def test_soft_targets_and_a_penalty_hook() -> None:
    import tensorflow as tf

    x, y = _data(n_classes=3)
    soft = np.full((len(y), 3), 1 / 3, np.float32)
    model = build_model(ModelSpec((8,)), 6, 3, seed=0)
    train(model, x, soft, LoopConfig(epochs=100, batch_size=16))
    assert np.abs(np.asarray(model(x)) - 1 / 3).mean() < 0.03

    penalised = build_model(ModelSpec((8,)), 6, 3, seed=0)
    free = clone(penalised)

    def l2(weights):
        return 10.0 * tf.add_n([tf.reduce_sum(tf.square(w)) for w in weights])

    train(penalised, x, y, LoopConfig(epochs=10, batch_size=16), hooks=(Penalty(l2),))
    train(free, x, y, LoopConfig(epochs=10, batch_size=16))
    norm = lambda m: sum(float(np.square(w).sum()) for w in m.get_weights())  # noqa: E731
    assert norm(penalised) < norm(free) / 2


@dataclasses.dataclass(frozen=True)
class _Gate(LossHook):
    """A hook the loop has never heard of: one column per row scaling the row's loss."""

    def width(self, units: int) -> int:
        return 1

    def row_loss(self, base, logits, columns, units):
        return base * columns[:, 0]

    def held_out_rows(self, base, columns, units):
        return base * columns[:, 0]


@pytest.mark.parametrize("general", [False, True])
def test_a_new_loss_hook_needs_no_change_to_the_loop(general: bool) -> None:
    """A strategy's own per-row term reaches both compiled paths through `hooks`: rows of
    classes 1 and 2 gated to 0 teach nothing, so the model predicts class 0 everywhere; with early
    stopping its held-out loss is gated the same way."""
    import keras

    x, y = _data(n=150, n_classes=3)
    model = build_model(ModelSpec((8,)), 6, 3, seed=0)
    if general:  # not a pure Dense stack: the model's own call
        dense = [keras.layers.Dense(8, activation="relu"), keras.layers.Dropout(0.0)]
        model = keras.Sequential([keras.Input((6,)), *dense, keras.layers.Dense(3, activation="softmax")])
    gate = (y == 0).astype(np.float32)[:, None]
    config = LoopConfig(epochs=40, batch_size=16, patience=40)
    result = train(model, x, lay_out(y, 3, [gate]), config, hooks=(_Gate(),))
    assert (np.asarray(model(x)).argmax(axis=1) == 0).mean() > 0.95
    assert result.best_epoch is not None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"learning_rate": -1.0}, "learning_rate must be > 0"),
        ({"momentum": 1.0}, "momentum must be in"),
        ({"optimizer": "nadam"}, "optimizer must be one of"),
    ],
)
def test_loop_config_says_what_is_wrong(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LoopConfig(**kwargs)


class _Looks:
    """Milestones every 3 epochs: what the model predicted then; stops training at epoch 6."""

    def __init__(self, x: np.ndarray) -> None:
        self.x, self.epochs, self.seen = x, 0, []

    def until_next(self) -> int:
        return 3 - self.epochs % 3

    def ran(self, epochs: int, model) -> None:
        self.epochs += epochs
        if self.epochs % 3 == 0:
            self.seen.append((self.epochs, np.asarray(model(self.x)).copy()))
        if self.epochs == 6:
            raise KeyboardInterrupt  # any exception ends the training where it is


@pytest.mark.parametrize("streamed", [False, True])
def test_milestones_see_the_model_as_it_trains_and_can_stop_it(streamed: bool) -> None:
    """A sweep's scheduler looks at the model every K epochs of the compiled loop (whose chunks
    end there) and may stop it: the model it saw differs from one look to the next."""
    from continual_trainer.trainer.loop import train_stream
    from continual_trainer.trainer.progress import watching

    x, y = _data(n=200)
    model = build_model(ModelSpec((8,)), 6, 2, seed=0)
    looks = _Looks(x)
    config = LoopConfig(epochs=50, batch_size=32)
    with watching(looks), pytest.raises(KeyboardInterrupt):
        if streamed:
            train_stream(model, lambda epoch: iter([(x, y, None)]), config)
        else:
            train(model, x, y, config)
    assert [e for e, _ in looks.seen] == [3, 6] and looks.epochs == 6
    assert not np.allclose(looks.seen[0][1], looks.seen[1][1])


def test_an_epoch_expected_to_end_further_past_the_budget_than_short_of_it_is_not_begun(monkeypatch) -> None:
    """With `max_seconds` 2.4 and epochs of 1 s (a clock the epochs advance): after epoch 2 the
    third would end 1.6 s past the budget but started only 0.4 s short of it, so training stops
    at 2 epochs (without the rule: 3, ending 0.6 s past it)."""
    from continual_trainer.data.schema import InputInfo
    from continual_trainer.trainer import loop

    clock, run = [0.0], loop._run

    def epochs_of_one_second(*args, **kwargs):
        out = run(*args, **kwargs)
        clock[0] += float(args[5])  # k epochs ran
        return out

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 3)).astype(np.float32), rng.integers(0, 2, 64)
    model = build_model(ModelSpec((4,)), {"numeric": InputInfo((3,), "float32")}, 2, 0)
    monkeypatch.setattr(loop, "_run", epochs_of_one_second)
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock[0])
    result = train(model, x, y, LoopConfig(epochs=100, max_seconds=2.4))
    assert result.stopped == "budget" and len(result.epoch_loss) == 2
