"""Preprocessing state is the model's: adapted statistics, vocabularies and bins survive every
copy the strategies make (`clone`), fresh members of an imported architecture keep them
(`reinitialised`), and training never moves them."""

from __future__ import annotations

import numpy as np
import pytest

from continual_trainer.trainer.loop import LoopConfig, train
from continual_trainer.trainer.models import clone, from_bytes, reinitialised, set_weights, to_bytes


def _adapted_model(batch_norm: bool = True):
    """Every kind of data-derived state, adapted the way Keras's guides do it."""
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(50, 20, size=(300, 3)).astype(np.float32)
    colour = rng.choice(["red", "green", "blue"], size=300).astype(object)
    num = keras.Input((3,), name="num")
    cat = keras.Input((1,), dtype="string", name="colour")
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(x)
    lookup = keras.layers.StringLookup(output_mode="one_hot", name="lookup")
    lookup.adapt(colour)
    bins = keras.layers.Discretization(num_bins=4, name="bins")
    bins.adapt(x[:, :1])
    h = keras.layers.Concatenate()(
        [
            norm(num),
            keras.layers.Flatten()(lookup(cat)),
            keras.layers.CategoryEncoding(num_tokens=4, output_mode="one_hot")(bins(num[:, :1])),
        ]
    )
    h = keras.layers.Dense(6, activation="relu")(h)
    if batch_norm:
        h = keras.layers.BatchNormalization(name="bn")(h)
    model = keras.Model({"num": num, "colour": cat}, keras.layers.Dense(1, activation="sigmoid")(h))
    y = ((x[:, 0] > 50) ^ (colour == "red")).astype(np.int32)
    return model, {"num": x, "colour": colour.reshape(-1, 1)}, y


def _predict(model, x) -> np.ndarray:
    import tensorflow as tf

    return np.asarray(model({k: tf.constant(v.astype(str) if v.dtype == object else v) for k, v in x.items()}))


@pytest.mark.slow
def test_copies_keep_every_kind_of_preprocessing_state() -> None:
    model, x, y = _adapted_model()
    train(model, x, y, LoopConfig(epochs=3))
    before = _predict(model, x)

    copy = clone(model)
    np.testing.assert_array_equal(_predict(copy, x), before)
    np.testing.assert_array_equal(_predict(from_bytes(to_bytes(model)), x), before)

    fresh = reinitialised(model, seed=5)
    assert not np.allclose(_predict(fresh, x), before)  # trainable weights are new ...
    mean = np.asarray(fresh.get_layer("norm").mean)
    np.testing.assert_allclose(mean, np.asarray(model.get_layer("norm").mean))  # ... the data's state is not
    assert abs(mean.mean() - 50) < 5
    assert fresh.get_layer("lookup").get_vocabulary() == model.get_layer("lookup").get_vocabulary()
    assert fresh.get_layer("bins").bin_boundaries == model.get_layer("bins").bin_boundaries

    # set_weights (model averaging) keeps the derived mean in step with the variables.
    set_weights(copy, model.get_weights())
    np.testing.assert_array_equal(_predict(copy, x), before)


@pytest.mark.slow
def test_training_a_copy_leaves_adapted_state_alone_and_a_tiny_step_changes_nothing() -> None:
    """Without BatchNormalization, whose moving statistics follow the data in training (as in
    `fit`), a step of learning rate ~0 leaves the predictions as they were."""
    model, x, y = _adapted_model(batch_norm=False)
    before = _predict(model, x)
    copy = clone(model)
    state = [np.asarray(v).copy() for v in copy.get_layer("norm").weights]
    train(copy, x, y, LoopConfig(epochs=2, learning_rate=1e-12))
    np.testing.assert_allclose(_predict(copy, x), before, atol=1e-5)
    for a, v in zip(state, copy.get_layer("norm").weights, strict=True):
        np.testing.assert_array_equal(a, np.asarray(v))
