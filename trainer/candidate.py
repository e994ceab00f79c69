"""A candidate model: one network or a weighted ensemble, and its predictions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from continual_trainer.data.rows import NUMERIC
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
        if n_classes == 0:
            return sum(w * member_output(m, x)[:, 0] for m, w in zip(self.members, self.weights, strict=True) if w)
        return self.predict_proba(x, n_classes)

    def predict_proba(self, x: Mapping[str, np.ndarray] | np.ndarray, n_classes: int) -> np.ndarray:
        """Class probabilities, shape (n, n_classes): for each class, the weighted mean of the
        probabilities of the members that know it. Members that predate a class do not vote
        against it: with members knowing different class sets, rows are normalised after."""
        x = _inputs(x)
        n = len(next(iter(x.values())))
        out = np.zeros((n, n_classes), np.float64)
        cover = np.zeros(n_classes, np.float64)
        for model, weight in zip(self.members, self.weights, strict=True):
            if weight:
                out += weight * member_proba(model, x, n_classes)
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
    known = model_classes(model)
    if known > n_classes:
        raise ValueError(f"model predicts {known} classes but the data has {n_classes}")
    raw = member_output(model, x)
    probs = np.hstack([1 - raw, raw]) if raw.shape[1] == 1 else raw
    out = np.zeros((len(raw), n_classes), np.float64)
    out[:, :known] = probs
    return out
