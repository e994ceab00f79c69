"""Model specs, building Dense-stack networks, and saving them as `.keras` bytes."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

from data.errors import UserError

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class ModelSpec:
    """A network family and its hidden sizes, e.g. `mlp:20,10`."""

    hidden: tuple[int, ...] = (20, 10)
    kind: str = "mlp"

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        kind, _, sizes = text.partition(":")
        if kind != "mlp":
            raise UserError(f"--model {text!r}: unknown model family {kind!r}; use mlp:UNITS,UNITS,...")
        try:
            hidden = tuple(int(s) for s in sizes.split(",") if s.strip()) if sizes else ()
        except ValueError:
            raise UserError(f"--model {text!r}: hidden sizes must be whole numbers, e.g. mlp:20,10") from None
        if any(h < 1 for h in hidden):
            raise UserError(f"--model {text!r}: hidden sizes must be >= 1")
        return cls(hidden, kind)

    def __str__(self) -> str:
        return f"{self.kind}:{','.join(map(str, self.hidden))}"


def n_outputs(n_classes: int) -> int:
    """One sigmoid unit for two classes, a softmax unit per class for more."""
    return 1 if n_classes == 2 else n_classes


def head_layer(n_classes: int, seed: int, name: str = "head") -> keras.layers.Dense:
    import keras

    return keras.layers.Dense(
        n_outputs(n_classes),
        activation="sigmoid" if n_classes == 2 else "softmax",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        name=name,
    )


def hidden_layers(sizes: tuple[int, ...], seed: int, prefix: str = "hidden") -> list[keras.layers.Dense]:
    import keras

    return [
        keras.layers.Dense(
            units,
            activation="relu",
            kernel_initializer=keras.initializers.HeNormal(seed=seed + i),
            name=f"{prefix}_{i + 1}",
        )
        for i, units in enumerate(sizes)
    ]


def build_model(spec: ModelSpec, n_features: int, n_classes: int, seed: int) -> keras.Model:
    """The reference network: relu/he_normal hidden layers and a sigmoid or softmax head."""
    import keras

    layers = [keras.Input((n_features,)), *hidden_layers(spec.hidden, seed), head_layer(n_classes, seed + 1000)]
    return keras.Sequential(layers, name="mlp")


def model_classes(model: keras.Model) -> int:
    """How many classes a model's head predicts."""
    units = int(model.layers[-1].units)
    return 2 if units == 1 else units


def clone(model: keras.Model) -> keras.Model:
    """An independent copy with the same weights and trainable flags."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for a, b in zip(model.layers, copy.layers, strict=True):
        b.trainable = a.trainable
    return copy


def to_bytes(model: keras.Model) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        with open(path, "rb") as f:
            return f.read()


def from_bytes(data: bytes) -> keras.Model:
    """Load a `.keras` archive with safe mode on (no arbitrary code in the file runs)."""
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        with open(path, "wb") as f:
            f.write(data)
        return keras.models.load_model(path, compile=False, safe_mode=True)
