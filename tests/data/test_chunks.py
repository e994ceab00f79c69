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


def _keys(rows: Rows) -> set[tuple[float, ...]]:
    """Each row as a hashable key (the rows of `make_table` are distinct)."""
    return {tuple(r) for r in np.column_stack([rows.x["numeric"], rows.y, rows.order]).tolist()}


@pytest.mark.parametrize("where", ["memory", "store"])
def test_rows_in_memory_and_in_the_store_answer_the_same_questions(store: Store, where: str) -> None:
    """The row-source protocol (`data.rows.RowSource`): length, counts by batch, samples,
    shards, a validation share set aside and joins, the same answers in memory and in the
    store; rows of the two kinds do not mix."""
    ids = store.batch_ids()
    stored = StoredRows.of(store, ids)
    whole = stored.load()
    source = whole if where == "memory" else stored
    assert source.in_memory is (where == "memory")
    assert len(source) == len(whole)
    assert source.rows_by_order() == whole.rows_by_order() == {0: 240, 1: 800, 2: len(whole) - 1040}
    assert source.sampled(1.0, seed=1).load().y.tolist() == whole.y.tolist()
    half = source.sampled(0.5, seed=1).load()
    assert 0.4 < len(half) / len(whole) < 0.6 and _keys(half) <= _keys(whole)
    shards = [source.sharded(i, 3, seed=2).load() for i in range(3)]
    assert sum(len(s) for s in shards) == len(whole) and all(len(s) for s in shards)
    assert set().union(*(_keys(s) for s in shards)) == _keys(whole)
    kept, aside = (part.load() for part in source.set_aside(0.25, seed=5))
    assert len(kept) + len(aside) == len(whole) and 0.15 < len(aside) / len(whole) < 0.35
    assert not _keys(kept) & _keys(aside) and _keys(kept) | _keys(aside) == _keys(whole)
    holdout = StoredRows.of(store, ids, "holdout")
    joined = source.join(holdout.load() if where == "memory" else holdout)
    assert joined.in_memory is (where == "memory") and len(joined) == len(whole) + len(holdout)
    assert source.join(Rows.empty(store.schema.input_spec())).load().y.tolist() == whole.y.tolist()
    with pytest.raises(ValueError, match="join only"):
        source.join(holdout if where == "memory" else holdout.load())
