"""A census-like table and a model built the way Keras's structured-data guides build one.

`census(n, seed)` makes rows of three numeric columns (`age`, `hours`, `gain`), a city (text)
and an occupation code (an integer), and a label `y`; `keras_way_model(table)` builds and fits
the network the guide "Structured data classification from scratch" builds: one
`keras.Input` per column, `Normalization` adapted to each numeric column, `StringLookup` and
`IntegerLookup` adapted to the others, one-hot encoded, a hidden layer and a sigmoid. Bring such
a model to a store with `ctrain init --model model.keras` (or `init_store(..., model=model)`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

NUMERIC = ("age", "hours", "gain")


def census(n: int, seed: int, cities: tuple[str, ...] = ("paris", "lyon", "nice"), shift: float = 0.0) -> pa.Table:
    """`n` rows; `shift` moves the ages (a drifted population), `cities` the values seen."""
    rng = np.random.default_rng(seed)
    age = rng.normal(40 + 5 * shift, 12, n).clip(18, 90)
    hours = rng.normal(38, 10, n).clip(1, 99)
    gain = rng.exponential(2000, n)
    city = rng.choice(cities, n)
    code = rng.integers(1, 25, n)
    score = 0.05 * (age - 40) + 0.08 * (hours - 38) + gain / 3000 + (city == "paris") + (code > 16) * 1.2 - 1
    y = (score + rng.normal(0, 0.5, n) > 0).astype(np.int64)
    return pa.table({"age": age, "hours": hours, "gain": gain, "city": city, "code": code, "y": y})


def keras_way_model(table: pa.Table, epochs: int = 15) -> Any:
    """The guide's network for `census` rows, adapted and fitted to `table`."""
    import keras
    import tensorflow as tf

    df = table.to_pandas()
    inputs, encoded = {}, []
    for col in NUMERIC:
        inputs[col] = keras.Input(shape=(1,), name=col)
        norm = keras.layers.Normalization()
        norm.adapt(df[col].to_numpy().reshape(-1, 1))
        encoded.append(norm(inputs[col]))
    inputs["city"] = keras.Input(shape=(1,), name="city", dtype="string")
    lookup = keras.layers.StringLookup(output_mode="one_hot")
    lookup.adapt(df["city"].to_numpy())
    encoded.append(lookup(inputs["city"]))
    inputs["code"] = keras.Input(shape=(1,), name="code", dtype="int64")
    codes = keras.layers.IntegerLookup(output_mode="one_hot")
    codes.adapt(df["code"].to_numpy())
    encoded.append(codes(inputs["code"]))
    h = keras.layers.Dense(16, activation="relu")(keras.layers.concatenate(encoded))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))
    model.compile("adam", "binary_crossentropy")
    x = {c: tf.constant(df[c].to_numpy().reshape(-1, 1)) for c in (*NUMERIC, "code")}
    x["city"] = tf.constant(df["city"].to_numpy().astype(str).reshape(-1, 1))
    model.fit(x, df["y"].to_numpy(), epochs=epochs, verbose=0)
    return model
