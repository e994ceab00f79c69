"""Model families the strategy contract runs on, as a user would write builders for them."""

from __future__ import annotations

from typing import Any


def cnn(inputs: dict[str, Any], n_outputs: int, seed: int):
    """A small CNN over the `image` tensor input."""
    import keras

    init = keras.initializers.GlorotUniform
    activation = "softmax" if n_outputs > 1 else "sigmoid"
    return keras.Sequential(
        [
            keras.Input(inputs["image"].shape, name="image"),
            keras.layers.Conv2D(4, 3, activation="relu", padding="same", kernel_initializer=init(seed)),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(6, 2, activation="relu", kernel_initializer=init(seed + 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="relu", kernel_initializer=init(seed + 2)),
            keras.layers.Dense(n_outputs, activation=activation, kernel_initializer=init(seed + 3)),
        ],
        name="cnn",
    )


def tabular(inputs: dict[str, Any], n_outputs: int, seed: int):
    """Numbers normalised inside the model, a string column looked up and embedded, BatchNorm, Dropout."""
    import keras

    numeric, colour = inputs["numeric"], inputs["colour"]
    a = keras.Input(numeric.shape, name="numeric")
    b = keras.Input((), dtype="string", name="colour")
    h = keras.layers.Normalization(mean=list(numeric.mean), variance=list(numeric.variance))(a)
    e = keras.layers.Embedding(
        len(colour.vocabulary) + 1, 3, embeddings_initializer=keras.initializers.RandomNormal(seed=seed)
    )(keras.layers.StringLookup(vocabulary=list(colour.vocabulary))(b))
    h = keras.layers.Concatenate()([h, e])
    h = keras.layers.Dense(8, kernel_initializer=keras.initializers.GlorotUniform(seed + 1))(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Dropout(0.1, seed=seed)(keras.layers.Activation("relu")(h))
    activation = "softmax" if n_outputs > 1 else "sigmoid" if n_outputs == 1 else "linear"
    out = keras.layers.Dense(
        n_outputs, activation=activation, kernel_initializer=keras.initializers.GlorotUniform(seed + 2)
    )(h)
    return keras.Model({"numeric": a, "colour": b}, out, name="tabular")


def keras_way(x: dict[str, Any], n_outputs: int, seed: int):
    """As Keras's structured-data guide builds a model: one input per column, each numeric one
    through a `Normalization` adapted on `x`, the string column through an adapted
    `StringLookup`; no BatchNormalization, so a learning rate near 0 changes nothing."""
    import keras

    inputs, encoded = {}, []
    for name, values in x.items():
        if values.dtype == object:
            inputs[name] = keras.Input((1,), dtype="string", name=name)
            lookup = keras.layers.StringLookup(output_mode="one_hot")
            lookup.adapt(values.astype(str))
            encoded.append(lookup(inputs[name]))
        else:
            inputs[name] = keras.Input((1,), name=name)
            norm = keras.layers.Normalization()
            norm.adapt(values.reshape(-1, 1))
            encoded.append(norm(inputs[name]))
    h = keras.layers.Dense(8, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed))(
        keras.layers.concatenate(encoded)
    )
    activation = "softmax" if n_outputs > 1 else "sigmoid"
    out = keras.layers.Dense(
        n_outputs, activation=activation, kernel_initializer=keras.initializers.GlorotUniform(seed + 1)
    )(h)
    return keras.Model(inputs, out, name="keras_way")
