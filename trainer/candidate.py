"""A candidate model: one network or a weighted ensemble, and its predictions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from continual_trainer.data.errors import UserError
from continual_trainer.data.rows import NUMERIC
from continual_trainer.trainer.light import DenseStack
from continual_trainer.trainer.models import feed, from_bytes, model_classes

if TYPE_CHECKING:
    import keras

_PREDICT_CHUNK = 65536


@dataclass(frozen=True)
class Candidate:
    """Members and their ensemble weights (non-negative, summing to 1).

    A member may know fewer classes than the store (it predates new classes): each class's
    probability is the weighted mean over the members that know it, and each row's
    probabilities are then normalised (see `predict_proba`).

    `state` is what continual-learning strategies keep with a version besides its
    networks (a replay memory, Fisher information): named NumPy arrays of numbers or
    fixed-width strings, stored pickle-free (see `trainer.versions`).
    """

    members: tuple[keras.Model, ...]
    weights: tuple[float, ...]
    state: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("a candidate needs at least one member")
        if len(self.members) != len(self.weights):
            raise ValueError(f"{len(self.members)} members but {len(self.weights)} weights")
        if min(self.weights) < 0 or abs(sum(self.weights) - 1) > 1e-6:
            raise ValueError(f"ensemble weights must be >= 0 and sum to 1, got {self.weights}")

    @classmethod
    def single(cls, model: keras.Model) -> Candidate:
        return cls((model,), (1.0,))

    @classmethod
    def from_files(
        cls, files: list[bytes], weights: tuple[float, ...], state: Mapping[str, np.ndarray] | None = None
    ) -> Candidate:
        """Members from their `.keras` bytes (loaded in safe mode), the ensemble weights and state."""
        return cls(tuple(from_bytes(f) for f in files), tuple(weights), dict(state or {}))

    def predict(self, x: Mapping[str, np.ndarray] | np.ndarray, n_classes: int) -> np.ndarray:
        """The weighted mean of the members' predictions: class probabilities, shape
        (n, n_classes), or for regression (`n_classes` 0) the predicted numbers, shape (n,).

        `x` is the inputs by name (a plain matrix is the `numeric` input)."""
        x = _inputs(x)
        return self.combine([member_output(m, x) if w else None for m, w in self.used()], n_classes)

    def predict_proba(self, x: Mapping[str, np.ndarray] | np.ndarray, n_classes: int) -> np.ndarray:
        """Class probabilities, shape (n, n_classes) (see `combine`)."""
        x = _inputs(x)
        return self.combine([member_output(m, x) if w else None for m, w in self.used()], n_classes)

    def used(self) -> list[tuple[keras.Model, float]]:
        """(member, weight) pairs, in order."""
        return list(zip(self.members, self.weights, strict=True))

    def combine(self, outputs: list[np.ndarray | None], n_classes: int) -> np.ndarray:
        """What `predict` gives from each member's raw output (None for a member of weight 0),
        however they were computed (in NumPy, by Keras, or by one compiled function).

        For classes: for each class, the weighted mean of the probabilities of the members that
        know it. Members that predate a class do not vote against it: with members knowing
        different class sets, rows are normalised after."""
        if n_classes == 0:
            total: Any = 0
            for raw, w in zip(outputs, self.weights, strict=True):
                if w and raw is not None:
                    total = total + w * raw[:, 0]
            return np.asarray(total)
        if len(outputs) == 1 and outputs[0] is not None and model_classes(self.members[0]) == n_classes:
            # one network that knows every class: its probabilities as they are
            return _proba(self.members[0], outputs[0], n_classes)
        n = len(next(raw for raw in outputs if raw is not None))
        out = np.zeros((n, n_classes), np.float64)
        cover = np.zeros(n_classes, np.float64)
        for model, weight, raw in zip(self.members, self.weights, outputs, strict=True):
            if weight and raw is not None:
                out += weight * _proba(model, raw, n_classes)
                cover[: model_classes(model)] += weight
        if np.allclose(cover, 1.0):
            return out
        out[:, cover > 0] /= cover[cover > 0]
        return out / np.maximum(out.sum(axis=1, keepdims=True), 1e-300)


def _inputs(x: Mapping[str, np.ndarray] | np.ndarray) -> Mapping[str, np.ndarray]:
    return {NUMERIC: x} if isinstance(x, np.ndarray) else x


def member_output(model: keras.Model, x: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
    """One network's raw output for every row, in chunks, shape (n, units)."""
    x = _inputs(x)
    if isinstance(model, DenseStack):  # read without Keras (`trainer.light`)
        return model.output(x)
    n = len(next(iter(x.values())))
    if n == 0:
        return np.zeros((0, int(model.outputs[0].shape[-1])), np.float64)
    chunks = []
    for i in range(0, n, _PREDICT_CHUNK):
        part = {name: a[i : i + _PREDICT_CHUNK] for name, a in x.items()}
        chunks.append(np.asarray(model(feed(model, part), training=False), np.float64))
    return np.concatenate(chunks)


def member_proba(model: keras.Model, x: Mapping[str, np.ndarray], n_classes: int) -> np.ndarray:
    """One network's class probabilities, padded with zeros for classes it does not know."""
    return _proba(model, member_output(model, x), n_classes)


def _proba(model: keras.Model, raw: np.ndarray, n_classes: int) -> np.ndarray:
    """A network's raw output as class probabilities, padded with zeros for classes it does not know."""
    known = model_classes(model)
    if known > n_classes:
        raise ValueError(f"model predicts {known} classes but the data has {n_classes}")
    probs = np.hstack([1 - raw, raw]) if raw.shape[1] == 1 else raw
    if known == n_classes:
        return probs
    out = np.zeros((len(raw), n_classes), np.float64)
    out[:, :known] = probs
    return out


def as_model(candidate: Candidate, n_classes: int) -> keras.Model:
    """The candidate as one Keras model whose `predict` gives what `Candidate.predict` does.

    A single network is returned as it is (a copy). An ensemble becomes a functional model
    that calls every member on the same inputs and adds their outputs through one frozen
    `Dense` each, whose kernel holds the member's ensemble weight (and, for more than two
    classes, places its classes among the store's and divides by how much weight covers
    each class): binary and regression ensembles give one unit, as their members do. Only
    built-in layers, so the model loads in safe mode anywhere Keras runs.
    """
    import keras

    from continual_trainer.trainer.models import clone, model_inputs

    used = [(m, w) for m, w in zip(candidate.members, candidate.weights, strict=True) if w]
    if len(used) == 1:
        return clone(used[0][0])
    template = model_inputs(used[0][0])
    inputs = {name: keras.Input(t.shape[1:], dtype=t.dtype, name=name) for name, t in template.items()}
    width = 1 if n_classes in (0, 2) else n_classes
    cover = np.zeros(width)
    for model, w in used:
        cover[: 1 if width == 1 else model_classes(model)] += w
    if width > 1 and not np.allclose(cover, cover[0]):
        raise UserError(
            "this ensemble's members know different classes; as one model it would need a row "
            "normalisation Keras has no built-in layer for: export its newest member, or predict with ctrain"
        )
    parts = []
    for i, (member, w) in enumerate(used):
        model = clone(member)
        model.name = f"member_{i}"  # members are often all called "functional"
        own = model_inputs(model)
        feed_in = next(iter(inputs.values())) if len(own) == 1 and len(inputs) == 1 else {n: inputs[n] for n in own}
        out = model(feed_in)
        units = int(model.outputs[0].shape[-1])
        kernel, bias = np.zeros((units, width), np.float32), np.zeros(width, np.float32)
        if width == 1:
            kernel[0, 0] = w
        elif units == 1:  # a sigmoid member among softmax ones: [1 - p, p]
            kernel[0, :2], bias[:2] = [-w, w], [w, 0.0]
        else:
            kernel[:, :units] = np.eye(units) * w
        kernel[:, : len(cover)] /= np.where(cover > 0, cover, 1.0)
        bias /= np.where(cover > 0, cover, 1.0)
        combine = keras.layers.Dense(width, name=f"member_{i}_weight", trainable=False)
        parts.append(combine(out))
        combine.set_weights([kernel, bias])
    output = keras.layers.Add(name="ensemble")(parts)
    return keras.Model(inputs, output, name="ensemble")
