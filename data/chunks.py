"""Rows of stored batches read a chunk at a time, for data larger than memory.

`StoredRows` names the training (or held-out) rows of some stored batches without holding
them: each pass reads the batches' Parquet files record batch by record batch (at most
`chunk_rows` rows), applies the store's fixed holdout split and, with `fraction` < 1, a seeded
sample, and yields `Rows`. Memory is bounded by a chunk (and by the
row groups the writer of a file chose: pyarrow reads a row group's column chunks at once).
Files are checked against their recorded sha256 before their first piece is read.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from continual_trainer.data.rows import Rows, RowSource
from continual_trainer.data.sampling import holdout_mask, stable_seed
from continual_trainer.data.storage import Store

CHUNK_ROWS = 65_536
_BLOCK = 1 << 20  # rows per seeded block of a sample
PARTS = ("train", "holdout", "validation")


@dataclass(frozen=True)
class StoredRows:
    """The `part` rows (`train` or `holdout`) of stored batches, read chunk by chunk.

    Attributes:
        store: the store holding the batches.
        batch_ids: the batches, in the order a pass reads them (unless shuffled).
        orders: each batch's ingestion order (a row's `Rows.order`).
        part: `train` or `holdout` (the store's fixed split, `data.sampling.holdout_mask`).
        fraction: each row is kept with this probability, drawn from `seed` and the batch
            (the same rows on every pass).
        seed: fixes the sample.
        chunk_rows: the most rows read at a time.
        shard: (index, count): only the row groups of shard `index` of `count` (each batch's
            row groups dealt round-robin from a start its id fixes), so that actors read
            disjoint parts of the same batches; (0, 1) is every row.
        validation, validation_seed: the share of the training rows set aside (each row by a
            draw the seed fixes) for early stopping: part `train` leaves them out, part
            `validation` is only them.
    """

    store: Store
    batch_ids: tuple[str, ...]
    orders: tuple[int, ...]
    part: str = "train"
    fraction: float = 1.0
    seed: int = 0
    chunk_rows: int = CHUNK_ROWS
    shard: tuple[int, int] = (0, 1)
    validation: float = 0.0
    validation_seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.shard[0] < self.shard[1]:
            raise ValueError(f"shard must be (index, count) with 0 <= index < count, not {self.shard}")
        if self.part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, not {self.part!r}")
        if len(self.batch_ids) != len(self.orders):
            raise ValueError("one ingestion order per batch")

    @classmethod
    def of(cls, store: Store, batch_ids: Sequence[str], part: str = "train") -> StoredRows:
        position = {b: i for i, b in enumerate(store.batch_ids())}
        return cls(store, tuple(batch_ids), tuple(position[b] for b in batch_ids), part)

    @property
    def in_memory(self) -> bool:
        return False

    def sharded(self, index: int, count: int, seed: int = 0) -> StoredRows:
        """Shard `index` of `count` by row groups (see `shard`): which actor reads a row group
        is fixed by the batch, not by `seed`, so each reads whole row groups of its own."""
        return replace(self, shard=(index, count))

    def join(self, other: RowSource) -> StoredUnion:
        return StoredUnion.of(self).join(other)

    def rows_by_order(self) -> dict[int, int]:
        return StoredUnion.of(self).rows_by_order()

    def per_batch(self) -> Iterator[StoredRows]:
        """These rows batch by batch, each as its own `StoredRows`."""
        for batch_id, order in zip(self.batch_ids, self.orders, strict=True):
            yield replace(self, batch_ids=(batch_id,), orders=(order,))

    def set_aside(self, validation: float, seed: int) -> tuple[StoredRows, StoredRows]:
        """These training rows without a `validation` share drawn by `seed`, and that share."""
        kept = replace(self, validation=validation, validation_seed=seed)
        return kept, replace(kept, part="validation")

    def _groups(self, batch_id: str) -> list[tuple[int, int, int]] | None:
        """This shard's row groups of a batch as (group, first row, rows); None: all of it."""
        index, count = self.shard
        if count == 1:
            return None
        with self.store.open_batch(batch_id) as f:
            meta = pq.ParquetFile(f).metadata
        groups, start = [], 0
        first = stable_seed("shard", batch_id) % count
        for g in range(meta.num_row_groups):
            rows = meta.row_group(g).num_rows
            if (g + first) % count == index:
                groups.append((g, start, rows))
            start += rows
        return groups

    def verify(self) -> None:
        """Check these rows' batch files against their sha256 now (see `StoredUnion.verify`)."""
        StoredUnion.of(self).verify()

    def sampled(self, fraction: float, seed: int) -> StoredRows:
        """These rows, each kept with probability `fraction` by a draw `seed` fixes (fractions
        multiply; the draw replaces the earlier one)."""
        return self if fraction >= 1 else replace(self, fraction=self.fraction * fraction, seed=seed)

    def __len__(self) -> int:
        return sum(self._counts)

    @functools.cached_property
    def _counts(self) -> tuple[int, ...]:
        """Rows per batch (from the batch records and the holdout split, without reading rows)."""
        return tuple(int(self._mask(b).sum()) for b in self.batch_ids)

    def _mask(self, batch_id: str) -> np.ndarray:
        """Which of a batch's rows this part keeps: its side of the holdout split (and of the
        validation set-aside), with `fraction` < 1 each row with that probability (drawn in
        blocks, seeded), and only this shard's row groups."""
        n = self.store.batch_rows(batch_id)
        held = holdout_mask(batch_id, n, self.store.meta.holdout_fraction)
        keep = held if self.part == "holdout" else ~held
        if self.validation > 0 and self.part != "holdout":
            aside = np.zeros(n, bool)
            for k, start in enumerate(range(0, n, _BLOCK)):
                rng = np.random.default_rng(stable_seed("validation", self.validation_seed, batch_id, k))
                aside[start : start + _BLOCK] = rng.random(min(_BLOCK, n - start)) < self.validation
            keep &= aside if self.part == "validation" else ~aside
        if self.fraction < 1:
            for k, start in enumerate(range(0, n, _BLOCK)):
                rng = np.random.default_rng(stable_seed("sample", self.seed, batch_id, k))
                keep[start : start + _BLOCK] &= rng.random(min(_BLOCK, n - start)) < self.fraction
        groups = self._groups(batch_id)
        if groups is not None:
            mine = np.zeros(n, bool)
            for _, start, rows in groups:
                mine[start : start + rows] = True
            keep &= mine
        return keep

    def chunks(self, shuffle_seed: int | None = None) -> Iterator[Rows]:
        """One pass over the rows, a chunk at a time; with `shuffle_seed` the batches are read
        in an order it fixes (rows within a chunk keep their order)."""
        schema = self.store.schema
        columns = [c.name for c in schema.columns] + [schema.label]
        batches = list(zip(self.batch_ids, self.orders, strict=True))
        if shuffle_seed is not None:
            rng = np.random.default_rng(stable_seed("pass", self.seed, shuffle_seed))
            batches = [batches[i] for i in rng.permutation(len(batches))]
        for batch_id, order in batches:
            mask, groups = self._mask(batch_id), self._groups(batch_id)
            with self.store.open_batch(batch_id) as f:
                file = pq.ParquetFile(f)
                # Every row group in one sweep, or this shard's one by one (each from its first row).
                sweeps = [(None, 0)] if groups is None else [([g], start) for g, start, _ in groups]
                for row_groups, offset in sweeps:
                    for record_batch in file.iter_batches(self.chunk_rows, row_groups=row_groups, columns=columns):
                        keep = np.flatnonzero(mask[offset : offset + record_batch.num_rows])
                        offset += record_batch.num_rows
                        if not len(keep):
                            continue
                        table = pa.Table.from_batches([record_batch]).take(pa.array(keep))
                        y = schema.targets(table, batch_id)
                        yield Rows(schema.inputs(table), y, np.full(len(y), order, np.int32))

    def load(self) -> Rows:
        """Every row at once (for data that fits)."""
        parts = list(self.chunks())
        if not parts:
            return Rows.empty(self.store.schema.input_spec(), self.store.schema.is_regression)
        return Rows.concat(parts)


@dataclass(frozen=True)
class StoredUnion:
    """Several `StoredRows` (e.g. sampled old and new rows) read as one: a pass reads every
    part's batches, in order or in an order `shuffle_seed` fixes."""

    parts: tuple[StoredRows, ...]

    @classmethod
    def of(cls, rows: RowSource) -> StoredUnion:
        """`rows` left in the store, as a union (code that reads them batch by batch)."""
        if isinstance(rows, StoredUnion):
            return rows
        if isinstance(rows, StoredRows):
            return cls((rows,))
        raise TypeError("rows in memory are not left in the store")

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    @property
    def in_memory(self) -> bool:
        return False

    def sharded(self, index: int, count: int, seed: int = 0) -> StoredUnion:
        """Shard `index` of `count` of every part (see `StoredRows.sharded`)."""
        return StoredUnion(tuple(p.sharded(index, count) for p in self.parts))

    def join(self, other: RowSource) -> StoredUnion:
        if other.in_memory:
            if len(other):
                raise ValueError("rows left in the store join only rows left in the store")
            return self
        assert isinstance(other, StoredRows | StoredUnion)  # the only rows not in memory
        return StoredUnion(self.parts + StoredUnion.of(other).parts)

    def sampled(self, fraction: float, seed: int) -> StoredUnion:
        return StoredUnion(tuple(p.sampled(fraction, seed) for p in self.parts))

    def set_aside(self, validation: float, seed: int) -> tuple[StoredUnion, StoredUnion]:
        """Every part's `StoredRows.set_aside`: (the rows to train on, the rows set aside)."""
        pairs = [p.set_aside(validation, seed) for p in self.parts]
        return StoredUnion(tuple(a for a, _ in pairs)), StoredUnion(tuple(b for _, b in pairs))

    def verify(self) -> None:
        """Check every part's batch files against their sha256 now (`Store.open_batch`), e.g.
        once for the actors that will read them (`data.storage.verified`)."""
        for part in self.parts:
            for batch_id in part.batch_ids:
                part.store.open_batch(batch_id).close()

    def rows_by_order(self) -> dict[int, int]:
        """How many rows come from each batch (by ingestion order), without reading them."""
        out: dict[int, int] = {}
        for part in self.parts:
            for order, count in zip(part.orders, part._counts, strict=True):
                out[order] = out.get(order, 0) + count
        return out

    def chunks(self, shuffle_seed: int | None = None) -> Iterator[Rows]:
        singles = [single for p in self.parts for single in p.per_batch()]
        if shuffle_seed is not None:
            rng = np.random.default_rng(stable_seed("pass", shuffle_seed))
            singles = [singles[i] for i in rng.permutation(len(singles))]
        for single in singles:
            yield from single.chunks()

    def load(self) -> Rows:
        return Rows.concat([p.load() for p in self.parts])
