"""Column kinds are objects: a new kind is one class, registered once, and every step of a
store (infer, check, model input, statistics, store.json) takes it from there."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import continual_trainer as ct
from continual_trainer.data.columns import KINDS, Column, ColumnKind, kind_of
from continual_trainer.data.errors import UserError


class _Days(ColumnKind):
    """A timestamp as days since 1970, one float input of its own."""

    name = "days"

    def matches(self, t: pa.DataType) -> bool:
        return pa.types.is_timestamp(t)

    def check(self, col: pa.ChunkedArray, column: Column, source: str) -> None:
        if min(v.year for v in col.to_pylist()) < 1971:
            raise UserError(f"{source}: feature {column.name!r} has dates before 1971")

    def to_input(self, col: pa.ChunkedArray, column: Column) -> np.ndarray:
        return (col.cast(pa.timestamp("us")).cast(pa.int64()).to_numpy() / 86_400e6).astype(np.float32)


def _table(n: int, seed: int, start: dt.datetime = dt.datetime(2026, 1, 1)) -> pa.Table:
    rng = np.random.default_rng(seed)
    x, days = rng.normal(size=n), rng.integers(0, 365, n)
    when = [start + dt.timedelta(days=int(d)) for d in days]
    return pa.table({"x": x, "when": pa.array(when, pa.timestamp("us")), "y": ((days > 180) ^ (x > 0)).astype(int)})


@pytest.fixture
def days_kind():
    KINDS[_Days.name] = _Days()
    try:
        yield
    finally:
        del KINDS[_Days.name]


def test_a_new_column_kind_is_one_class(tmp_path: Path, days_kind: None) -> None:
    pq.write_table(_table(300, 0), tmp_path / "a.parquet")
    pq.write_table(_table(200, 1), tmp_path / "b.parquet")
    store = ct.init_store(str(tmp_path / "s"), str(tmp_path / "a.parquet"), label="y", epochs=60)
    when = store.schema.column("when")
    assert when.kind == "days" and when.mean is not None and 20_454 < when.mean < 20_454 + 365  # 2026 in days
    assert store.schema.input_spec()["when"].shape == ()
    saved = json.loads((tmp_path / "s" / "store.json").read_text())
    assert next(c for c in saved["columns"] if c["name"] == "when")["kind"] == "days"
    store.ingest(str(tmp_path / "b.parquet"))
    outcome = ct.open_store(str(tmp_path / "s")).update("finetune_new", epochs=20, promote="always")
    assert outcome.metrics["holdout_accuracy"] > 0.7  # the date carries half the signal: it reached the model
    assert list(store.predict(_table(4, 2).drop(["y"])).column_names) == ["x", "when", "prediction", "probability"]
    pq.write_table(_table(50, 3, dt.datetime(1960, 1, 1)), tmp_path / "old.parquet")
    with pytest.raises(UserError, match="dates before 1971"):  # the kind's own check, on every batch
        store.ingest(str(tmp_path / "old.parquet"))


def test_the_kinds_a_type_makes() -> None:
    assert [kind_of(t).name for t in (pa.int8(), pa.float32(), pa.bool_())] == ["numeric"] * 3
    assert kind_of(pa.list_(pa.float32(), 4)).name == "tensor" and kind_of(pa.list_(pa.string())) is None
    assert kind_of(pa.dictionary(pa.int32(), pa.string())).name == "categorical"
    assert kind_of(pa.timestamp("us")) is None  # until a kind takes it


def test_the_stored_column_format_is_pinned() -> None:
    """What `store.json` holds of a column, key by key (stores written by earlier releases must
    read the same): a round trip alone would not notice a renamed key."""
    assert Column("age").to_json() == {"name": "age", "kind": "numeric"}
    assert Column("age", mean=40.0, variance=4.0).to_json() == {
        "name": "age", "kind": "numeric", "mean": 40.0, "variance": 4.0,
    }  # fmt: skip
    assert Column("image", "tensor", (2, 2), mean=0.5, variance=0.25).to_json() == {
        "name": "image", "kind": "tensor", "shape": [2, 2], "mean": 0.5, "variance": 0.25,
    }  # fmt: skip
    assert Column("city", "categorical", vocabulary=("a", "b")).to_json() == {
        "name": "city", "kind": "categorical", "vocabulary": ["a", "b"],
    }  # fmt: skip
    written = {"name": "image", "kind": "tensor", "shape": ["2", 2], "mean": "0.5", "variance": 1}
    assert Column.from_json(written) == Column("image", "tensor", (2, 2), (), 0.5, 1.0)
    assert Column.from_json({"name": "city", "kind": "categorical", "vocabulary": ["a", 3]}).vocabulary == ("a", "3")
    assert Column.from_json({"name": "x"}) == Column("x") == Column.from_json("x")  # format 1: names only
    for bad in ([], {"kind": "numeric"}, {"name": 3}, None):
        with pytest.raises(ValueError, match="a column is not an object with a name"):
            Column.from_json(bad)


def test_typed_values_become_arrow_arrays_of_the_stored_types() -> None:
    """What the prediction log writes of typed rows: float32 numbers, fixed-size lists of
    float32 for tensors, strings for categories (even no rows of them)."""
    numbers = KINDS["numeric"].typed_arrow(np.array([1.5, 2.0]), Column("x"))
    assert numbers.type == pa.float32() and numbers.to_pylist() == [1.5, 2.0]
    image = Column("image", "tensor", (2, 2))
    tensors = KINDS["tensor"].typed_arrow(np.arange(8, dtype=np.float64).reshape(2, 4), image)
    assert tensors.type == pa.list_(pa.float32(), 4) and tensors.to_pylist()[1] == [4.0, 5.0, 6.0, 7.0]
    city = Column("city", "categorical")
    assert KINDS["categorical"].typed_arrow(np.array([], dtype=object), city).type == pa.string()
    assert KINDS["categorical"].typed_arrow(np.array(["a", "b"], dtype=object), city).to_pylist() == ["a", "b"]
