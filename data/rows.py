"""Training rows in memory: features, label indices and the batch each row came from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Rows:
    """A view of labelled rows, ready for a model.

    Attributes:
        x: float32 features, shape (n, n_features).
        y: int32 class indices, shape (n,).
        order: the ingestion order of each row's batch (0 is the first batch), so
            recency weighting and replay can tell old rows from new.
    """

    x: np.ndarray
    y: np.ndarray
    order: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.x) == len(self.y) == len(self.order)):
            raise ValueError(f"x, y and order lengths differ: {len(self.x)}, {len(self.y)}, {len(self.order)}")

    def __len__(self) -> int:
        return len(self.y)

    @classmethod
    def empty(cls, n_features: int) -> Rows:
        return cls(np.empty((0, n_features), np.float32), np.empty(0, np.int32), np.empty(0, np.int32))

    @classmethod
    def concat(cls, parts: list[Rows]) -> Rows:
        if not parts:
            raise ValueError("concat needs at least one part")
        return cls(
            np.concatenate([p.x for p in parts]),
            np.concatenate([p.y for p in parts]),
            np.concatenate([p.order for p in parts]),
        )

    def take(self, index: np.ndarray) -> Rows:
        return Rows(self.x[index], self.y[index], self.order[index])
