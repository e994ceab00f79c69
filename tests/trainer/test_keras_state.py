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


def test_statistics_over_chunks_equal_statistics_over_all_rows() -> None:
    from continual_trainer.data.rows import Rows, with_statistics
    from continual_trainer.data.schema import InputInfo

    rng = np.random.default_rng(3)
    x = {"numeric": rng.normal(1e4, 3, size=(500, 2)).astype(np.float32), "img": rng.random((500, 2, 2), np.float32)}
    x["city"] = np.array(["a"] * 500, dtype=object)
    rows = Rows(x, np.zeros(500, np.int32), np.zeros(500, np.int32))
    spec = {
        "numeric": InputInfo((2,), "float32", columns=("a", "b")),
        "img": InputInfo((2, 2), "float32"),
        "city": InputInfo((), "string", ("a",)),
    }
    whole = with_statistics(spec, [rows])
    pieces = with_statistics(spec, [rows.view(0, 7), rows.view(7, 300), rows.view(300, 500)])
    np.testing.assert_allclose(whole["numeric"].mean, x["numeric"].astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(whole["numeric"].variance, x["numeric"].astype(np.float64).var(axis=0), rtol=1e-9)
    assert len(whole["img"].mean) == 1  # a tensor: one statistic over all its elements
    for name in ("numeric", "img"):
        np.testing.assert_allclose(pieces[name].mean, whole[name].mean, rtol=1e-12)
        np.testing.assert_allclose(pieces[name].variance, whole[name].variance, rtol=1e-9)
    assert pieces["city"] is spec["city"]


def test_the_std_floor_is_a_tenth_of_the_median_numeric_std() -> None:
    from continual_trainer.data.schema import InputInfo
    from continual_trainer.trainer.models import ModelSpec, build_model, std_floor

    spec = {
        "numeric": InputInfo((4,), "float32", mean=(0, 0, 0, 0), variance=(4.0, 1.0, 1e-6, 0.0), columns=tuple("abcd"))
    }
    assert std_floor(spec) == pytest.approx(0.1 * np.median([2.0, 1.0, 1e-3]))
    model = build_model(ModelSpec((3,)), spec, 2, seed=0)
    norm = model.get_layer("normalize")
    np.testing.assert_allclose(np.sqrt(np.asarray(norm.variance)).ravel(), [2.0, 1.0, 0.1, 0.1], rtol=1e-6)


@pytest.mark.slow
def test_fresh_members_of_an_imported_architecture_read_the_rows_they_train_on() -> None:
    """Normalization on a model input is re-adapted on the training rows; the lookup keeps the
    imported vocabulary (its width fixes the next layer's shape)."""
    from continual_trainer.data.rows import Rows, with_statistics
    from continual_trainer.data.schema import InputInfo
    from continual_trainer.trainer.models import ModelSpec, build_model

    model, x, _ = _adapted_model(batch_norm=False)
    spec = {"num": InputInfo((3,), "float32", columns=("a", "b", "c")), "colour": InputInfo((), "string", ("red",))}
    later = {"num": x["num"] * 2 + 100, "colour": x["colour"][:, 0]}
    rows = Rows(later, np.zeros(300, np.int32), np.zeros(300, np.int32))
    fresh = build_model(
        ModelSpec((), "imported", architecture=to_bytes(model)), with_statistics(spec, [rows]), 2, 3, adapt=True
    )
    np.testing.assert_allclose(np.asarray(fresh.get_layer("norm").mean).ravel(), later["num"].mean(axis=0), rtol=1e-5)
    assert fresh.get_layer("lookup").get_vocabulary() == model.get_layer("lookup").get_vocabulary()
    assert fresh.get_layer("bins").bin_boundaries == model.get_layer("bins").bin_boundaries
