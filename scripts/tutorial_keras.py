"""The reference tutorial's update scripts, written the tutorial's way with Keras `fit`.

The baseline for scripts/bench_demo.py. Each strategy is what the tutorial's
script for it does: fit the old model (Dense 20-10-1, SGD 0.01 momentum 0.9, 150
epochs, batch 32) on the old half of `make_classification(1000, ...)`, then update:
continue training with SGD 0.001 for 100 epochs, fit a fresh model, or average an
ensemble's probabilities. `graft` and `new_head`, which the tutorial only
describes, are written the same way (150 epochs, SGD 0.01).

The network's input width and head follow the data (a sigmoid unit for two classes, a softmax
otherwise), so scripts/peer_tune_keras.py runs the same updates on other data sets. `tuned=True`
trains as Keras's performance advice says: `steps_per_execution=64` and one `fit` over a
shuffled, batched, repeated `tf.data` pipeline (the same updates: every epoch's batches, the
last one partial, reshuffled each epoch).

Run: python scripts/tutorial_keras.py --strategy finetune_new   (one script's work)
     python scripts/tutorial_keras.py --strategy all            (old model once, then every update)
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from keras.layers import Dense, Input
from keras.models import Sequential
from keras.optimizers import SGD
from sklearn.datasets import make_classification
from sklearn.model_selection import train_test_split

STRATEGIES = [
    "keep",
    "finetune_new",
    "finetune_all",
    "fresh_new",
    "fresh_all",
    "ensemble_new",
    "ensemble_all",
    "graft",
    "new_head",
]


def head(classes: int) -> Dense:
    return Dense(1, activation="sigmoid") if classes == 2 else Dense(classes, activation="softmax")


def define_model(features: int = 20, classes: int = 2) -> Sequential:
    model = Sequential()
    model.add(Input((features,)))
    model.add(Dense(20, kernel_initializer="he_normal", activation="relu"))
    model.add(Dense(10, kernel_initializer="he_normal", activation="relu"))
    model.add(head(classes))
    return model


def fit(model, x, y, lr: float, epochs: int, tuned: bool = False) -> None:
    loss = "binary_crossentropy" if model.output_shape[-1] == 1 else "sparse_categorical_crossentropy"
    optimizer = SGD(learning_rate=lr, momentum=0.9)
    if not tuned:
        model.compile(optimizer=optimizer, loss=loss)
        model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
        return
    import tensorflow as tf

    model.compile(optimizer=optimizer, loss=loss, steps_per_execution=64)
    steps = -(-len(x) // 32)
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), reshuffle_each_iteration=True)
    data = data.batch(32).repeat(epochs).prefetch(tf.data.AUTOTUNE)
    model.fit(data, epochs=1, steps_per_epoch=steps * epochs, verbose=0)


def classes_of(model) -> int:
    return max(2, model.output_shape[-1])


def copy_of(model) -> Sequential:
    clone = define_model(model.input_shape[-1], classes_of(model))
    clone.set_weights(model.get_weights())
    return clone


def predicted(yhat: np.ndarray) -> np.ndarray:
    """Class of each row from the head's output."""
    return (yhat[:, 0] > 0.5).astype(int) if yhat.shape[1] == 1 else yhat.argmax(axis=1)


def update(name: str, old_model, x_old, y_old, x_new, y_new, x_score=None, tuned: bool = False) -> np.ndarray:
    """The updated model's predictions on `x_score` (default: the new rows, as the tutorial)."""
    x_all, y_all = np.vstack((x_old, x_new)), np.hstack((y_old, y_new))
    x_score = x_new if x_score is None else x_score
    if name == "keep":
        return old_model.predict(x_score, verbose=0)
    if name in ("finetune_new", "finetune_all"):
        model = copy_of(old_model)
        x, y = (x_new, y_new) if name == "finetune_new" else (x_all, y_all)
        fit(model, x, y, 0.001, 100, tuned)
        return model.predict(x_score, verbose=0)
    if name in ("fresh_new", "fresh_all", "ensemble_new", "ensemble_all"):
        model = define_model(x_all.shape[1], classes_of(old_model))
        x, y = (x_new, y_new) if name.endswith("_new") else (x_all, y_all)
        fit(model, x, y, 0.01, 150, tuned)
        yhat = model.predict(x_score, verbose=0)
        if name.startswith("ensemble"):
            yhat = (yhat + old_model.predict(x_score, verbose=0)) / 2
        return yhat
    body = copy_of(old_model)
    layers = body.layers[:-1]
    for layer in layers:
        layer.trainable = name != "graft"
    extra = [Dense(10, kernel_initializer="he_normal", activation="relu")] if name == "graft" else []
    model = Sequential([Input((x_all.shape[1],)), *layers, *extra, head(classes_of(old_model))])
    fit(model, x_all, y_all, 0.01, 150, tuned)
    return model.predict(x_score, verbose=0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--strategy", choices=[*STRATEGIES, "all"], required=True)
    args = p.parse_args()
    x, y = make_classification(n_samples=1000, n_features=20, n_informative=15, n_redundant=5, random_state=1)
    x_old, x_new, y_old, y_new = train_test_split(x, y, test_size=0.50, random_state=1)
    old_model = define_model()
    fit(old_model, x_old, y_old, 0.01, 150)
    for name in STRATEGIES if args.strategy == "all" else [args.strategy]:
        yhat = update(name, old_model, x_old, y_old, x_new, y_new)
        print(f"{name}: accuracy on new {float(((yhat[:, 0] > 0.5) == y_new).mean()):.3f}")


if __name__ == "__main__":
    main()
