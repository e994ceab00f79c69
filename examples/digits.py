"""A model builder for `ctrain init --model examples.digits:cnn`: a small CNN over 8x8 digit images.

A builder is `function(inputs, n_outputs, seed) -> keras.Model`: `inputs` maps each model
input's name to its shape, dtype, vocabulary and first-batch statistics
(`continual_trainer.InputInfo`), `n_outputs` is the head's width and `seed` fixes the initial
weights. The store records `examples.digits:cnn` and calls it again whenever it needs a
fresh network (fresh_*, new ensemble members), on this machine or a cluster's workers.
"""

from __future__ import annotations

from typing import Any


def cnn(inputs: dict[str, Any], n_outputs: int, seed: int):
    import keras

    image = inputs["image"]
    init = keras.initializers.GlorotUniform
    x = keras.Input(image.shape, name="image")
    h = x
    if image.mean is not None:  # the store's first-batch statistics, kept inside the model
        h = keras.layers.Normalization(axis=None, mean=image.mean[0], variance=image.variance[0])(h)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=init(seed))(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", kernel_initializer=init(seed + 1))(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dropout(0.2, seed=seed)(h)
    activation = "sigmoid" if n_outputs == 1 else "softmax"
    out = keras.layers.Dense(n_outputs, activation=activation, kernel_initializer=init(seed + 2))(h)
    return keras.Model(x, out, name="digits_cnn")
