"""The general path of the compiled loop: any Keras model trains like `fit`."""

from __future__ import annotations

import numpy as np
import pytest

from continual_trainer.data.errors import UserError
from continual_trainer.trainer.loop import LoopConfig, train


def _fit(model, x, y, config: LoopConfig, loss: str, sample_weight=None) -> None:
    import keras

    opt = (
        keras.optimizers.SGD(config.learning_rate, momentum=config.momentum)
        if config.optimizer == "sgd"
        else keras.optimizers.Adam(config.learning_rate)
    )
    model.compile(optimizer=opt, loss=loss)
    model.fit(x, y, epochs=config.epochs, batch_size=config.batch_size, sample_weight=sample_weight, verbose=0)


def _twin(model):
    import keras

    other = keras.models.clone_model(model)
    other.set_weights(model.get_weights())
    return other


def _same(a, b, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(wa, wb, rtol=rtol, atol=atol)


def cnn(n_classes: int = 3, seed: int = 0):
    import keras

    init = keras.initializers.GlorotUniform
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", kernel_initializer=init(seed)),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(4, 2, activation="relu", kernel_initializer=init(seed + 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(n_classes, activation="softmax", kernel_initializer=init(seed + 2)),
        ]
    )


def _images(n: int = 48, n_classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 1)).astype(np.float32)
    y = (x[:, :4, :4, 0].mean(axis=(1, 2)) > 0).astype(np.int32) + (x[:, 4:, 4:, 0].mean(axis=(1, 2)) > 0)
    return x, y.astype(np.int32) % n_classes


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_cnn_follows_fits_trajectory(optimizer: str) -> None:
    x, y = _images()
    config = LoopConfig(epochs=10, batch_size=len(y), learning_rate=0.05, optimizer=optimizer)
    ours = cnn()
    theirs = _twin(ours)
    train(ours, x, y, config)
    _fit(theirs, x, y, config, "sparse_categorical_crossentropy")
    _same(ours, theirs)


def test_batch_normalization_updates_its_moving_statistics_like_fit() -> None:
    import keras

    rng = np.random.default_rng(1)
    x = (rng.normal(size=(64, 5)) * 3 + 2).astype(np.float32)
    y = (x[:, 0] > 2).astype(np.int32)
    ours = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(6, kernel_initializer=keras.initializers.GlorotUniform(0)),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.GlorotUniform(1)),
        ]
    )
    theirs = _twin(ours)
    config = LoopConfig(epochs=15, batch_size=len(y), learning_rate=0.05)
    train(ours, x, y, config)
    _fit(theirs, x, y, config, "binary_crossentropy")
    bn = ours.layers[1]
    assert not np.allclose(bn.moving_mean.numpy(), 0)  # updated, not left at its initial value
    _same(ours, theirs)  # weights, gamma/beta and the moving statistics


def test_regularization_losses_and_two_named_inputs_with_an_embedding_follow_fit() -> None:
    import keras

    rng = np.random.default_rng(2)
    num = rng.normal(size=(60, 3)).astype(np.float32)
    cat = rng.integers(0, 5, size=(60,)).astype(np.int32)
    y = ((num[:, 0] + (cat % 2)) > 0.5).astype(np.int32)
    a, b = keras.Input((3,), name="numeric"), keras.Input((), dtype="int32", name="colour")
    emb = keras.layers.Flatten()(
        keras.layers.Embedding(6, 2, embeddings_initializer=keras.initializers.RandomNormal(seed=3))(b)
    )
    h = keras.layers.Concatenate()([a, emb])
    h = keras.layers.Dense(4, activation="relu", kernel_regularizer=keras.regularizers.L2(0.01),
                           kernel_initializer=keras.initializers.GlorotUniform(4))(h)  # fmt: skip
    out = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.GlorotUniform(5))(h)
    ours = keras.Model({"numeric": a, "colour": b}, out)
    theirs = _twin(ours)
    x = {"numeric": num, "colour": cat}
    config = LoopConfig(epochs=12, batch_size=len(y), learning_rate=0.1)
    result = train(ours, x, y, config)
    _fit(theirs, x, y, config, "binary_crossentropy")
    _same(ours, theirs)
    assert result.epoch_loss[-1] < result.epoch_loss[0]


def test_the_general_path_equals_the_fast_path_on_the_same_network() -> None:
    import keras

    from continual_trainer.trainer.models import ModelSpec, build_model

    rng = np.random.default_rng(3)
    x = rng.normal(size=(100, 6)).astype(np.float32)
    y = (x[:, 0] - x[:, 2] > 0).astype(np.int32)
    fast = build_model(ModelSpec((8, 4)), 6, 2, seed=1)
    inp = keras.Input((6,))
    h = inp
    for layer in fast.layers:
        h = layer.__class__.from_config(layer.get_config())(h)
    general = keras.Model(inp, keras.layers.Activation("linear")(h))  # not a pure Dense stack
    general.set_weights(fast.get_weights())
    config = LoopConfig(epochs=5, batch_size=16)
    train(fast, x, y, config, seed=4)
    train(general, x, y, config, seed=4)
    _same(fast, general, rtol=1e-4, atol=1e-5)  # same shuffles, same steps, same arithmetic


def test_frozen_layers_of_any_model_stay_and_dropout_trains() -> None:
    import keras

    x, y = _images(n=64)
    model = cnn()
    model.layers[0].trainable = False
    inp = keras.Input((8, 8, 1))
    dropped = keras.Model(
        inp,
        keras.layers.Dense(3, activation="softmax")(
            keras.layers.Dropout(0.3)(keras.layers.Flatten()(model.layers[0](inp)))
        ),
    )
    before = [w.copy() for w in model.layers[0].get_weights()]
    result = train(dropped, x, y, LoopConfig(epochs=20, batch_size=16, learning_rate=0.05))
    for a, b in zip(before, model.layers[0].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert result.epoch_loss[-1] < result.epoch_loss[0]


def test_a_model_that_does_not_fit_the_data_is_one_clear_error() -> None:
    x, y = _images()
    with pytest.raises(UserError, match="cannot be trained by the compiled loop"):
        train(cnn(), x.reshape(len(x), 64), y, LoopConfig(epochs=1))


def test_regression_follows_fit_with_the_learning_rate_in_label_units() -> None:

    from continual_trainer.trainer.models import ModelSpec, build_model

    rng = np.random.default_rng(5)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    y = (x @ [3.0, -2.0, 0.5, 1.0] * 40 + 500).astype(np.float32)
    ours = build_model(ModelSpec((4,)), 4, 0, seed=2)  # a linear head: regression
    theirs = _twin(ours)
    std = float(y.std())
    config = LoopConfig(epochs=10, batch_size=len(y), learning_rate=0.05)
    train(ours, x, y, config, task="regression", target_std=std)
    scaled = LoopConfig(epochs=10, batch_size=len(y), learning_rate=0.05 / std**2)
    _fit(theirs, x, y, scaled, "mean_squared_error")
    _same(ours, theirs, rtol=1e-3, atol=1e-4)
