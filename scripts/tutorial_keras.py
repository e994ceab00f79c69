"""The reference tutorial's update scripts, written the tutorial's way with Keras `fit`.

The baseline for scripts/bench_demo.py. Each strategy is what the tutorial's
script for it does: fit the old model (Dense 20-10-1, SGD 0.01 momentum 0.9, 150
epochs, batch 32) on the old half of `make_classification(1000, ...)`, then update:
continue training with SGD 0.001 for 100 epochs, fit a fresh model, or average an
ensemble's probabilities. `graft` and `new_head`, which the tutorial only
describes, are written the same way (150 epochs, SGD 0.01).

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


def define_model() -> Sequential:
    model = Sequential()
    model.add(Input((20,)))
    model.add(Dense(20, kernel_initializer="he_normal", activation="relu"))
    model.add(Dense(10, kernel_initializer="he_normal", activation="relu"))
    model.add(Dense(1, activation="sigmoid"))
    return model


def fit(model, x, y, lr: float, epochs: int) -> None:
    model.compile(optimizer=SGD(learning_rate=lr, momentum=0.9), loss="binary_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)


def copy_of(model) -> Sequential:
    clone = define_model()
    clone.set_weights(model.get_weights())
    return clone


def update(name: str, old_model, x_old, y_old, x_new, y_new, x_score=None) -> np.ndarray:
    """The updated model's predictions on `x_score` (default: the new rows, as the tutorial)."""
    x_all, y_all = np.vstack((x_old, x_new)), np.hstack((y_old, y_new))
    x_score = x_new if x_score is None else x_score
    if name == "keep":
        return old_model.predict(x_score, verbose=0)
    if name in ("finetune_new", "finetune_all"):
        model = copy_of(old_model)
        x, y = (x_new, y_new) if name == "finetune_new" else (x_all, y_all)
        fit(model, x, y, 0.001, 100)
        return model.predict(x_score, verbose=0)
    if name in ("fresh_new", "fresh_all", "ensemble_new", "ensemble_all"):
        model = define_model()
        x, y = (x_new, y_new) if name.endswith("_new") else (x_all, y_all)
        fit(model, x, y, 0.01, 150)
        yhat = model.predict(x_score, verbose=0)
        if name.startswith("ensemble"):
            yhat = (yhat + old_model.predict(x_score, verbose=0)) / 2
        return yhat
    body = copy_of(old_model)
    layers = body.layers[:-1]
    for layer in layers:
        layer.trainable = name != "graft"
    extra = [Dense(10, kernel_initializer="he_normal", activation="relu")] if name == "graft" else []
    model = Sequential([Input((20,)), *layers, *extra, Dense(1, activation="sigmoid")])
    fit(model, x_all, y_all, 0.01, 150)
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
