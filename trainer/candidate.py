"""A candidate model: one network or a weighted ensemble, and its predictions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from trainer.models import from_bytes, model_classes

if TYPE_CHECKING:
    import keras

_PREDICT_CHUNK = 65536


@dataclass(frozen=True)
class Candidate:
    """Members and their ensemble weights (non-negative, summing to 1).

    A member may know fewer classes than the store (it predates new classes): its
    probability for the classes it does not know is 0.
    """

    members: tuple[keras.Model, ...]
    weights: tuple[float, ...]

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
    def from_files(cls, files: list[bytes], weights: tuple[float, ...]) -> Candidate:
        """Members from their `.keras` bytes (loaded in safe mode) and the ensemble weights."""
        return cls(tuple(from_bytes(f) for f in files), tuple(weights))

    def predict_proba(self, x: np.ndarray, n_classes: int) -> np.ndarray:
        """Class probabilities, shape (n, n_classes): the weighted mean of the members'."""
        out = np.zeros((len(x), n_classes), np.float64)
        for model, weight in zip(self.members, self.weights, strict=True):
            if weight:
                out += weight * member_proba(model, x, n_classes)
        return out


def member_proba(model: keras.Model, x: np.ndarray, n_classes: int) -> np.ndarray:
    """One network's class probabilities, padded with zeros for classes it does not know."""
    known = model_classes(model)
    if known > n_classes:
        raise ValueError(f"model predicts {known} classes but the data has {n_classes}")
    raw = (
        np.concatenate(
            [
                np.asarray(model(x[i : i + _PREDICT_CHUNK], training=False))
                for i in range(0, max(len(x), 1), _PREDICT_CHUNK)
            ]
        )
        if len(x)
        else np.zeros((0, model.layers[-1].units), np.float32)
    )
    probs = np.hstack([1 - raw, raw]) if raw.shape[1] == 1 else raw
    out = np.zeros((len(x), n_classes), np.float64)
    out[:, :known] = probs
    return out
