"""Training rows in memory: the model's inputs, the targets and the batch each row came from."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from continual_trainer.data.schema import InputInfo

NUMERIC = "numeric"  # the input holding the scalar numeric features (see data.schema)


class RowSource(Protocol):
    """Labelled rows a strategy, a trial or a scorer is given: in memory (`Rows`) or left in
    the store and read a chunk at a time (`data.chunks.StoredRows`, several as a `StoredUnion`).
    Both answer the same questions; code that needs every row at once calls `load()`, code
    whose algorithm differs by where the rows are (one compiled fit over arrays, or passes a
    chunk at a time) asks `in_memory`."""

    @property
    def in_memory(self) -> bool: ...

    def __len__(self) -> int: ...

    def chunks(self, shuffle_seed: int | None = None) -> Iterator[Rows]:
        """One pass over the rows as pieces; `shuffle_seed` fixes an order of the pieces."""
        ...

    def sampled(self, fraction: float, seed: int) -> RowSource:
        """About `fraction` of the rows, drawn by `seed` (all of them from 1 up)."""
        ...

    def sharded(self, index: int, count: int, seed: int = 0) -> RowSource:
        """Shard `index` of `count` disjoint shards covering the rows."""
        ...

    def set_aside(self, validation: float, seed: int) -> tuple[RowSource, RowSource]:
        """(the rows to train on, a `validation` share of them set aside by `seed`)."""
        ...

    def join(self, other: RowSource) -> RowSource:
        """These rows and `other`'s, read as one (both in memory or both left in the store)."""
        ...

    def rows_by_order(self) -> dict[int, int]:
        """How many rows come from each batch (by ingestion order)."""
        ...

    def load(self) -> Rows:
        """Every row, in memory."""
        ...

    def verify(self) -> None:
        """Check the rows' files against their checksums now (nothing to do in memory)."""
        ...


@dataclass(frozen=True)
class Rows:
    """A view of labelled rows, ready for a model.

    Attributes:
        x: the model's inputs by name (see `data.schema`): float32 arrays of shape (n, ...)
            and, for categorical columns, arrays of strings. A plain float matrix is taken
            as the `numeric` input.
        y: int32 class indices, or float32 numbers for regression; shape (n,).
        order: the ingestion order of each row's batch (0 is the first batch), so
            recency weighting and replay can tell old rows from new.
    """

    x: Mapping[str, np.ndarray]
    y: np.ndarray
    order: np.ndarray

    def __post_init__(self) -> None:
        if isinstance(self.x, np.ndarray):
            object.__setattr__(self, "x", {NUMERIC: self.x})
        lengths = {len(a) for a in self.x.values()} | {len(self.y), len(self.order)}
        if len(lengths) != 1:
            raise ValueError(f"inputs, targets and order differ in length: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.y)

    @classmethod
    def empty(cls, spec: Mapping[str, InputInfo], regression: bool = False) -> Rows:
        """No rows, with inputs shaped as `spec` says."""
        x = {
            name: np.empty((0, *info.shape), object if info.dtype == "string" else np.float32)
            for name, info in spec.items()
        }
        return cls(x, np.empty(0, np.float32 if regression else np.int32), np.empty(0, np.int32))

    @classmethod
    def concat(cls, parts: list[Rows]) -> Rows:
        if not parts:
            raise ValueError("concat needs at least one part")
        return cls(
            {name: np.concatenate([p.x[name] for p in parts]) for name in parts[0].x},
            np.concatenate([p.y for p in parts]),
            np.concatenate([p.order for p in parts]),
        )

    def take(self, index: np.ndarray) -> Rows:
        return Rows({name: a[index] for name, a in self.x.items()}, self.y[index], self.order[index])

    def view(self, start: int, stop: int) -> Rows:
        """Rows `start` to `stop` (exclusive), sharing these rows' arrays (no copy)."""
        return Rows({name: a[start:stop] for name, a in self.x.items()}, self.y[start:stop], self.order[start:stop])

    @property
    def in_memory(self) -> bool:
        return True

    def sampled(self, fraction: float, seed: int) -> Rows:
        """A uniform sample without replacement of `fraction` of the rows (at least one)."""
        if fraction >= 1 or len(self) == 0:
            return self
        k = max(1, round(len(self) * fraction))
        return self.take(np.sort(np.random.default_rng(seed).choice(len(self), size=k, replace=False)))

    def sharded(self, index: int, count: int, seed: int = 0) -> Rows:
        """Shard `index` of `count`: the rows dealt at random (by `seed`) into `count` parts."""
        return self.take(shard_index(len(self), index, count, seed))

    def set_aside(self, validation: float, seed: int) -> tuple[Rows, Rows]:
        """A seeded `validation` share of the rows set aside (at least one row), as
        `trainer.loop.train` sets aside rows in memory to stop early on."""
        order = np.random.default_rng(seed).permutation(len(self))
        cut = max(1, round(len(self) * validation))
        return self.take(np.sort(order[cut:])), self.take(np.sort(order[:cut]))

    def join(self, other: RowSource) -> RowSource:
        if not len(self):
            return other
        if not isinstance(other, Rows):  # the one place rows ask what the other rows are
            raise ValueError("rows in memory join only rows in memory")
        return Rows.concat([self, other]) if len(other) else self

    def rows_by_order(self) -> dict[int, int]:
        orders, counts = np.unique(self.order, return_counts=True)
        return {int(o): int(c) for o, c in zip(orders, counts, strict=True)}

    def chunks(self, shuffle_seed: int | None = None) -> Iterator[Rows]:
        """These rows as one piece, as rows left in the store give theirs a chunk at a time
        (`data.chunks.StoredRows.chunks`); in memory there is nothing to shuffle between pieces."""
        yield self

    def load(self) -> Rows:
        """These rows (rows left in the store read theirs into memory)."""
        return self

    def verify(self) -> None:
        """Nothing to check: rows in memory were checked when read (rows left in the store
        check their batch files' sha256 now, once for every actor that will read them)."""

    def matrix(self) -> np.ndarray:
        """The numeric and tensor inputs flattened side by side as one float matrix (for
        models outside the network, such as a domain classifier); strings are left out."""
        parts = [a.reshape(len(a), -1).astype(np.float32) for a in self.x.values() if a.dtype != object]
        return np.concatenate(parts, axis=1) if parts else np.zeros((len(self), 0), np.float32)


def shard_index(n_rows: int, index: int, count: int, seed: int) -> np.ndarray:
    """The rows of shard `index` of `count`: a seeded permutation of `n_rows` rows split into
    `count` near-equal parts (sorted)."""
    if not 0 <= index < count:
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, not {(index, count)}")
    return np.sort(np.array_split(np.random.default_rng(seed).permutation(n_rows), count)[index])


def with_statistics(spec: Mapping[str, InputInfo], pieces: Iterable[Rows]) -> dict[str, InputInfo]:
    """`spec` with each numeric and tensor input's mean and variance over the rows of `pieces`
    (rows in memory, or stored rows read a chunk at a time), as the store's first batch gives
    them: per feature for numeric inputs (grouped or one per column), over all elements for a
    tensor. Chunks are merged exactly (Chan et al.'s pairwise update), in float64."""
    import dataclasses

    acc: dict[str, tuple[float, np.ndarray, np.ndarray]] = {}
    for piece in pieces:
        for name, info in spec.items():
            if info.dtype == "string" or name not in piece.x or not len(piece):
                continue
            a = np.asarray(piece.x[name], np.float64)
            a = a.reshape(len(a), -1) if info.columns else a.reshape(-1, 1)
            n_b, mean_b = float(len(a)), a.mean(axis=0)
            m2_b = ((a - mean_b) ** 2).sum(axis=0)
            if name not in acc:
                acc[name] = (n_b, mean_b, m2_b)
                continue
            n_a, mean_a, m2_a = acc[name]
            delta, n = mean_b - mean_a, n_a + n_b
            acc[name] = (n, mean_a + delta * n_b / n, m2_a + m2_b + delta**2 * n_a * n_b / n)
    out = dict(spec)
    for name, (n, mean, m2) in acc.items():
        if not (np.all(np.abs(mean) < 1e30) and np.all(m2 / n < 1e30)):
            continue  # values beyond float32's reach: such rows make training diverge, with its own message
        mean_t = tuple(float(m) for m in mean)
        out[name] = dataclasses.replace(spec[name], mean=mean_t, variance=tuple(float(v) for v in m2 / n))
    return out
