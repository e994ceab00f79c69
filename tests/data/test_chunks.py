"""Stored rows read a chunk at a time: the same rows as reading batches whole, checked first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from continual_trainer.data.batches import ingest, load_rows
from continual_trainer.data.chunks import StoredRows, StoredUnion
from continual_trainer.data.errors import UserError
from continual_trainer.data.rows import Rows
from continual_trainer.data.schema import Schema
from continual_trainer.data.storage import Store, StoreMeta
from tests.conftest import make_table

SCHEMA = Schema(tuple(f"f{i}" for i in range(5)), "y", (0, 1))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store.create(str(tmp_path / "s"), StoreMeta(SCHEMA, "mlp:8"))
    for i, (n, group) in enumerate(((300, None), (1000, 128), (7, None))):
        path = tmp_path / f"b{i}.parquet"
        pq.write_table(make_table(n=n, seed=i), path, row_group_size=group)
        ingest(store, str(path))
    return store


def _same(a: Rows, b: Rows) -> None:
    np.testing.assert_array_equal(a.x["numeric"], b.x["numeric"])
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.order, b.order)


@pytest.mark.parametrize("chunk_rows", [50, 128, 100_000])
def test_chunks_hold_the_same_rows_as_whole_batches(store: Store, chunk_rows: int) -> None:
    ids = store.batch_ids()
    train, holdout = load_rows(store, ids)
    for part, whole in (("train", train), ("holdout", holdout)):
        rows = StoredRows.of(store, ids, part)
        rows = StoredRows(rows.store, rows.batch_ids, rows.orders, part, chunk_rows=chunk_rows)
        pieces = list(rows.chunks())
        assert all(len(p) <= chunk_rows for p in pieces)
        assert len(rows) == len(whole)
        _same(Rows.concat(pieces), whole)
        _same(rows.load(), whole)


def test_a_sample_is_the_same_on_every_pass_and_a_shuffle_moves_only_batches(store: Store) -> None:
    ids = store.batch_ids()
    rows = StoredRows.of(store, ids).sampled(0.5, seed=3)
    first, second = rows.load(), rows.load()
    _same(first, second)
    assert len(first) == len(rows) and 0.4 < len(first) / len(StoredRows.of(store, ids)) < 0.6
    other = StoredRows.of(store, ids).sampled(0.5, seed=4).load()
    assert not np.array_equal(first.y[:50], other.y[:50]) or not np.array_equal(first.x["numeric"], other.x["numeric"])
    holdout = StoredRows.of(store, ids, "holdout").load()
    assert not set(map(bytes, first.x["numeric"])) & set(map(bytes, holdout.x["numeric"]))  # never a held-out row
    shuffled = list(rows.chunks(shuffle_seed=1))
    orders = [int(p.order[0]) for p in shuffled]
    assert sorted(set(orders)) == [0, 1, 2]
    assert sorted(map(bytes, Rows.concat(shuffled).x["numeric"])) == sorted(map(bytes, first.x["numeric"]))
    assert [int(p.order[0]) for p in rows.chunks(shuffle_seed=1)] == orders  # fixed by the seed


def test_an_altered_batch_is_refused_before_its_rows_are_read(store: Store) -> None:
    ids = store.batch_ids()
    assert len(StoredRows.of(store, ids).load())  # read (and checked) once
    path = Path(store.uri) / "batches" / ids[1] / "data.parquet"
    table = pq.read_table(path)
    pq.write_table(table.slice(1), path, row_group_size=128)  # a row fewer: a valid file, not the stored one
    with pytest.raises(UserError, match="fails its sha256 check"):
        StoredRows.of(store, ids).load()


def test_shards_split_the_row_groups_between_them(store: Store) -> None:
    ids = store.batch_ids()
    whole = StoredRows.of(store, ids).sampled(0.8, seed=1)
    shards = [whole.sharded(i, 3) for i in range(3)]
    loaded = [s.load() for s in shards]
    assert [len(s) for s in shards] == [len(r) for r in loaded] and all(len(r) for r in loaded)
    keys = [sorted(map(bytes, r.x["numeric"])) for r in loaded]
    assert sorted(k for shard in keys for k in shard) == sorted(
        map(bytes, whole.load().x["numeric"])
    )  # all rows, each once
    assert max(map(len, loaded)) < 0.6 * len(whole)  # 8 row groups of the big batch dealt out
    union = StoredUnion((StoredRows.of(store, ids[:1]), StoredRows.of(store, ids[1:]))).sharded(1, 2)
    assert all(p.shard == (1, 2) for p in union.parts)
    with pytest.raises(ValueError, match="shard"):
        whole.sharded(3, 3)


def test_rows_set_aside_for_validation_leave_the_training_rows(store: Store) -> None:
    ids = store.batch_ids()
    union = StoredUnion((StoredRows.of(store, ids[:1]), StoredRows.of(store, ids[1:])))
    train, aside = union.set_aside(0.2, seed=5)
    kept, held, whole = train.load(), aside.load(), union.load()
    assert len(kept) + len(held) == len(whole) and 0.1 < len(held) / len(whole) < 0.3
    assert sorted(map(bytes, np.concatenate([kept.x["numeric"], held.x["numeric"]]))) == sorted(
        map(bytes, whole.x["numeric"])
    )
    assert [len(p) for p in aside.parts] == [len(p.load()) for p in aside.parts]
    _same(StoredRows.of(store, ids, "holdout").set_aside(0.2, 5)[0].load(), StoredRows.of(store, ids, "holdout").load())
