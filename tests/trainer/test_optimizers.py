"""Every optimizer the loop runs follows Keras `fit`'s trajectory, and a model's `compile()` is read."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from continual_trainer.trainer.loop import LoopConfig, train
from continual_trainer.trainer.models import ModelSpec, build_model, clone, to_bytes
from continual_trainer.trainer.optimizers import compile_config, from_compile_config, keras_optimizer

# Each optimizer with the settings that change its rule (the test's learning rates are large
# enough that a wrong rule, a missed decay or clip, or a slot in the wrong place shows).
SETTINGS = {
    "sgd": {"optimizer": "sgd", "momentum": 0.9},
    "sgd-nesterov": {"optimizer": "sgd", "momentum": 0.8, "nesterov": True},
    "sgd-plain": {"optimizer": "sgd", "momentum": 0.0},
    "adam": {"optimizer": "adam", "learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.99},
    "adamw": {"optimizer": "adamw", "learning_rate": 0.01, "weight_decay": 0.05},
    "rmsprop": {"optimizer": "rmsprop", "learning_rate": 0.01, "momentum": 0.0, "rho": 0.8},
    "rmsprop-momentum-centered": {"optimizer": "rmsprop", "learning_rate": 0.005, "momentum": 0.5, "centered": True},
    "adagrad": {"optimizer": "adagrad", "learning_rate": 0.1, "initial_accumulator_value": 0.2},
    "sgd-clipnorm-decay": {"optimizer": "sgd", "clipnorm": 0.05, "weight_decay": 0.01},
    "adam-global-clipnorm": {"optimizer": "adam", "learning_rate": 0.01, "global_clipnorm": 0.1},
    "rmsprop-clipvalue": {"optimizer": "rmsprop", "learning_rate": 0.01, "momentum": 0.0, "clipvalue": 0.01},
}


def _data(n: int = 64, n_classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32) % n_classes


def _same_trajectory(ours, x, y, config: LoopConfig) -> None:
    theirs = clone(ours)
    train(ours, x, y, config)
    theirs.compile(optimizer=keras_optimizer(config), loss="sparse_categorical_crossentropy")
    theirs.fit(x, y, epochs=config.epochs, batch_size=config.batch_size, verbose=0, shuffle=False)
    for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_every_optimizer_follows_fits_trajectory_on_the_fast_path(name: str) -> None:
    # One batch per epoch: the shuffle order cannot matter, so the trajectories must agree.
    x, y = _data()
    config = LoopConfig(**{"epochs": 15, "batch_size": len(y), "learning_rate": 0.05, **SETTINGS[name]})
    _same_trajectory(build_model(ModelSpec((8, 4)), 6, 3, seed=3), x, y, config)


@pytest.mark.parametrize("name", ["sgd-nesterov", "adamw", "rmsprop-momentum-centered", "adagrad"])
def test_every_optimizer_follows_fits_trajectory_through_a_models_own_call(name: str) -> None:
    import keras

    x, y = _data()
    model = keras.Sequential(  # a Dropout-free model the fast path does not take (a named input layer in a dict)
        [keras.Input((6,)), keras.layers.Dense(8, activation="elu"), keras.layers.Dense(3, activation="softmax")]
    )
    config = LoopConfig(**{"epochs": 10, "batch_size": len(y), "learning_rate": 0.05, **SETTINGS[name]})
    _same_trajectory(model, x, y, config)


def test_one_clip_at_a_time_as_keras_allows() -> None:
    with pytest.raises(ValueError, match="at most one of clipnorm"):
        LoopConfig(clipnorm=1.0, clipvalue=0.5)


def _compiled(optimizer, loss="sparse_categorical_crossentropy", units: int = 3) -> dict:
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units, activation="softmax")])
    model.compile(optimizer=optimizer, loss=loss)
    return compile_config(to_bytes(model))


def test_a_models_compile_becomes_the_loops_settings_and_is_described() -> None:
    import keras

    settings, words, ignored = from_compile_config(
        _compiled(keras.optimizers.AdamW(learning_rate=0.002, weight_decay=0.01, beta_2=0.98)), "classification"
    )
    assert settings["optimizer"] == "adamw" and settings["learning_rate"] == 0.002
    assert (settings["weight_decay"], settings["beta_2"]) == (0.01, 0.98)
    assert words.startswith("AdamW (learning_rate 0.002") and words.endswith("loss sparse_categorical_crossentropy")
    assert ignored == []
    config = dataclasses.replace(LoopConfig(), **settings)
    assert type(keras_optimizer(config)).__name__ == "AdamW"

    settings, _, _ = from_compile_config(_compiled(keras.optimizers.SGD(0.05, momentum=0.5, nesterov=True)), "x")
    assert settings["optimizer"] == "sgd" and settings["nesterov"] is True and settings["momentum"] == 0.5
    assert from_compile_config({}, "classification") == ({}, "", [])
    assert compile_config(b"not a zip") == {}


def test_what_the_loop_cannot_honour_is_named() -> None:
    import keras

    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, 100, 0.9)
    adam = keras.optimizers.Adam(schedule, amsgrad=True)
    settings, _, ignored = from_compile_config(_compiled(adam), "classification")
    assert settings["learning_rate"] == 0.01  # the schedule's start
    assert any("ExponentialDecay" in i for i in ignored) and any("amsgrad" in i for i in ignored)
    settings, _, ignored = from_compile_config(_compiled(keras.optimizers.Nadam()), "classification")
    assert "optimizer" not in settings and ignored[0].startswith("optimizer Nadam")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    _, _, ignored = from_compile_config(_compiled("sgd", loss), "classification")
    assert ignored == ["loss sparse_categorical_crossentropy from logits (trained with cross-entropy)"]
    _, words, ignored = from_compile_config(_compiled("sgd", "mean_squared_logarithmic_error", units=1), "regression")
    assert ignored == ["loss mean_squared_logarithmic_error (trained with mean squared error)"]
    assert words.startswith("SGD")


@pytest.mark.parametrize(
    ("loss", "compiled"),
    [("mae", "mae"), ("mae", "mean_absolute_error"), ("huber", "huber"), ("mse", "mean_squared_error")],
)
def test_a_regression_models_loss_is_read_from_its_compile(loss: str, compiled: str) -> None:
    import keras

    settings, words, ignored = from_compile_config(_compiled("sgd", compiled, units=1), "regression")
    assert settings["loss"] == loss and ignored == [] and words.endswith(f"loss {compiled}")
    object_loss = {"mae": keras.losses.MeanAbsoluteError(), "huber": keras.losses.Huber()}.get(loss)
    if object_loss is not None:  # a loss object, as Keras's guides also compile
        assert from_compile_config(_compiled("sgd", object_loss, units=1), "regression")[0]["loss"] == loss


@pytest.mark.parametrize("loss", ["mae", "huber"])
@pytest.mark.parametrize("fast", [True, False])
def test_mae_and_huber_follow_fits_trajectory_in_label_units(loss: str, fast: bool) -> None:
    """A regression head trained with MAE or Huber: the loop's loss is in label standard
    deviations, so `fit` on the same labels matches with the rate scaled by 1 / std**k
    (k = 1 for MAE, 2 for Huber, whose delta stays 1 in label units)."""
    import keras

    x, _ = _data()
    y = (3.0 * x[:, 0] - 2.0 * x[:, 1] + 0.5).astype(np.float32)
    std = 2.0
    if fast:
        ours = build_model(ModelSpec((8,)), 6, 0, seed=3)  # a Dense stack with a linear head
    else:
        ours = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="elu"), keras.layers.Dense(1)])
    theirs = clone(ours)
    config = LoopConfig(epochs=12, batch_size=len(y), learning_rate=0.05, momentum=0.0, loss=loss)
    train(ours, x, y, config, task="regression", target_std=std)
    rate = config.learning_rate / std ** (1 if loss == "mae" else 2)
    theirs.compile(optimizer=keras.optimizers.SGD(rate), loss={"mae": "mae", "huber": keras.losses.Huber()}[loss])
    theirs.fit(x, y, epochs=config.epochs, batch_size=len(y), verbose=0, shuffle=False)
    for a, b in zip(ours.get_weights(), theirs.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_a_regression_loss_on_a_classifier_is_a_users_mistake() -> None:
    from continual_trainer.data.errors import UserError

    x, y = _data()
    with pytest.raises(UserError, match="loss='mae': applies to regression"):
        train(build_model(ModelSpec((4,)), 6, 3, seed=0), x, y, LoopConfig(epochs=1, loss="mae"))
