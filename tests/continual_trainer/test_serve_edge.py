"""Rows typed at the edge: every JSON type and Arrow encoding a client may send converts to the
store's types the way `ctrain predict` converts a file's columns, or is refused in one line that
names the column and the row; and the prediction log, written in one schema, is read in one
schema even when older files mixed types."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from continual_trainer.data.columns import Column
from continual_trainer.data.errors import UserError
from continual_trainer.data.rows import NUMERIC
from continual_trainer.data.schema import Schema
from continual_trainer.serve.edge import BadRequest, Decoder

SCHEMA = Schema(
    (Column("a"), Column("b"), Column("img", "tensor", (2, 2)), Column("city", "categorical", vocabulary=("x", "y"))),
    "label",
    (0, 1),
)


def body(*rows: dict) -> bytes:
    return json.dumps({"rows": list(rows)}).encode()


def arrow(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def test_every_answerable_json_type_converts_as_predict_converts_a_file() -> None:
    decoder = Decoder(SCHEMA, id_column="id")
    given = [
        {"a": 1, "b": 2.5, "img": [1, 2, 3, 4], "city": "x", "id": 7},
        {"a": True, "b": " 3.5e1 ", "img": [0.5, True, 2, 3], "city": 12, "id": None},
        {"a": "-4", "b": False, "img": [1, 1, 1, 1], "city": "never seen", "id": "k3", "extra": [1, {"x": 2}]},
    ]
    rows = decoder.json(body(*given))
    assert rows.n == 3 and rows.keys == ["7", None, "k3"]
    assert rows.typed[NUMERIC].dtype == np.float64
    assert rows.typed[NUMERIC].tolist() == [[1.0, 2.5], [1.0, 35.0], [-4.0, 0.0]]
    assert rows.typed["img"].tolist() == [[1, 2, 3, 4], [0.5, 1, 2, 3], [1, 1, 1, 1]]
    assert rows.typed["city"].tolist() == ["x", "12", "never seen"]
    # the same values as columns of a file, through the rule `ctrain predict` reads files by
    table = pa.table({"a": pa.array([1, 1, -4]), "b": pa.array(["2.5", " 3.5e1 ", "0"]),
                      "img": pa.array([[1.0, 2, 3, 4], [0.5, 1, 2, 3], [1.0, 1, 1, 1]]),
                      "city": pa.array(["x", "12", "never seen"]).dictionary_encode()})  # fmt: skip
    as_file = decoder.table(table)
    for key in rows.typed:
        assert as_file.typed[key].tolist() == rows.typed[key].tolist(), key
    inputs = SCHEMA.inputs_of(rows.typed)
    assert inputs[NUMERIC].dtype == np.float32 and inputs["img"].shape == (3, 2, 2)


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ({"a": None}, "feature 'a' has a missing value (null) in row 1"),
        ({"a": "one"}, "feature 'a', row 1: 'one' is not a number"),
        ({"a": "nan"}, "feature 'a', row 1: 'nan' is not a number"),
        ({"a": [1]}, "feature 'a', row 1: expected a number, got a list"),
        ({"a": {"x": 1}}, "feature 'a', row 1: expected a number, got an object"),
        ({"a": 1e301}, "feature 'a' has 1 value(s) beyond float32's range (|x| > 3.4e38, the first in row 1)"),
        ({"a": 2e15}, "feature 'a' has 1 value(s) beyond ±1e15 (e.g. 2e+15 in row 1)"),
        ({"a": 123456789012345678901234567890}, "feature 'a' has 1 value(s) beyond ±1e15"),
        ({"city": True}, "feature 'city', row 1: expected text, got a boolean"),
        ({"city": 1.5}, "feature 'city', row 1: expected text, got a number"),
        ({"img": [1, 2, 3]}, "feature 'img' has 1 row(s) whose length is not 4 (shape (2, 2); the first is row 1)"),
        ({"img": [1, 2, 3, None]}, "feature 'img' has a missing value (null) in row 1"),
        ({"img": [1, 2, 3, "x"]}, "feature 'img', row 1: expected a number, got text"),
        ({"b": "__missing__"}, "missing feature column(s) b (row 1)"),
    ],
)
def test_a_value_that_does_not_convert_is_refused_naming_the_column_and_the_row(row: dict, words: str) -> None:
    good = {"a": 1, "b": 2, "img": [1, 2, 3, 4], "city": "x"}
    bad = {**good, **row}
    bad = {k: v for k, v in bad.items() if v != "__missing__"}
    with pytest.raises(UserError) as refused:
        Decoder(SCHEMA).json(body(good, bad))
    message = str(refused.value)
    assert words in message and "\n" not in message and not isinstance(refused.value, BadRequest), message


def test_a_number_beyond_float64_is_refused_naming_the_column_and_the_row() -> None:
    raw = b'{"rows": [{"a": 1, "b": 2, "img": [1, 2, 3, 4], "city": "x"}, {"a": 1e400, "b": 2}]}'
    with pytest.raises(UserError, match="feature 'a', row 1: a number beyond float64's range"):
        Decoder(SCHEMA).json(raw)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"rows": [{"a": 1, "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]}", "nested too deep"),
    ],
)
def test_a_body_that_is_not_json_is_a_bad_request(raw: bytes, words: str) -> None:
    with pytest.raises(BadRequest, match=words):
        Decoder(SCHEMA).json(raw)


@pytest.mark.parametrize("raw", [b"[1]", b'{"rows": {}}', b'{"rows": []}', b'{"rows": [1]}', b'{"other": 1}'])
def test_a_body_of_the_wrong_shape_says_what_the_shape_is(raw: bytes) -> None:
    with pytest.raises(UserError, match=r'expected \{"rows": \[\{"column": value'):
        Decoder(SCHEMA).json(raw)


@pytest.mark.parametrize(
    "city",
    [pa.array(["x", "y"]), pa.array(["x", "y"], pa.large_string()), pa.array(["x", "y"]).dictionary_encode(),
     pa.array(["x", "y"], pa.large_string()).dictionary_encode(), pa.array([3, 4], pa.int32())],
)  # fmt: skip
def test_every_arrow_encoding_of_text_reads_as_strings(city: pa.Array) -> None:
    table = pa.table({"a": pa.array([1, 2], pa.int8()), "b": pa.array([True, False]),
                      "img": pa.array([[1, 2, 3, 4]] * 2, pa.list_(pa.float32(), 4)), "city": city})  # fmt: skip
    rows = Decoder(SCHEMA).arrow(arrow(table))
    assert rows.typed["city"].tolist() == [str(v) for v in city.to_pylist()]
    assert rows.typed[NUMERIC].tolist() == [[1.0, 1.0], [2.0, 0.0]]
    logged = SCHEMA.typed_table(rows.typed)
    assert logged.schema == SCHEMA.canonical_schema()


def test_an_arrow_body_that_does_not_convert_is_refused_in_one_line() -> None:
    good = {"a": [1.0, 2.0], "b": [1.0, 2.0], "img": [[1.0, 2, 3, 4]] * 2, "city": ["x", "y"]}
    cases = [
        ({"a": pa.array([1.0, None])}, "feature 'a' has 1 missing value(s) (the first in row 1)"),
        ({"b": pa.array(["1", "zwei"])}, "feature 'b', row 1: 'zwei' is not a number"),
        ({"city": pa.array([1.5, 2.5])}, "feature 'city' is double here; the store holds it as categorical"),
        ({"a": pa.array([1, 2**62])}, "feature 'a' has 1 value(s) beyond ±1e15"),
    ]
    for change, words in cases:
        with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)")):
            Decoder(SCHEMA).arrow(arrow(pa.table({**good, **change})))
    with pytest.raises(BadRequest, match="not an Arrow IPC stream"):
        Decoder(SCHEMA).arrow(b"garbage")


def test_log_files_written_with_mixed_types_are_read_in_one_schema_and_a_damaged_one_is_skipped(
    tiny_store: str, caplog: pytest.LogCaptureFixture
) -> None:
    from continual_trainer.data.storage import Store
    from continual_trainer.predlog import KEY, PREDICTION, TIME, TIME_TYPE, LogReader, log_schema

    store = Store.open(tiny_store)

    def old_file(f0: pa.Array, keys: list[str]) -> bytes:
        n = len(keys)
        columns = {f"f{i}": pa.array(np.arange(n, dtype=np.int64)) for i in range(1, 5)}
        table = pa.table({"f0": f0, **columns, KEY: keys, TIME: pa.array([0] * n, TIME_TYPE),
                          PREDICTION: pa.array([1] * n, pa.int32())})  # fmt: skip
        sink = io.BytesIO()
        pq.write_table(table, sink)
        return sink.getvalue()

    store.write_prediction_log(old_file(pa.array([True, False]), ["a", "b"]))  # booleans, as an old server logged them
    store.write_prediction_log(old_file(pa.array([1, 2], pa.int64()), ["c", "d"]))
    store.write_prediction_log(old_file(pa.array(["1.5", "2"]), ["e", "f"]))
    store.write_prediction_log(old_file(pa.array(["one", "2"]), ["g", "h"]))  # cannot be read as numbers
    store.write_prediction_log(b"PAR1 not really parquet")
    reader = LogReader(store)
    table = reader.read()
    assert table is not None and table.schema == log_schema(store.schema)
    by_key = dict(zip(table.column(KEY).to_pylist(), table.column("f0").to_pylist(), strict=True))
    assert by_key == {"a": 1.0, "b": 0.0, "c": 1.0, "d": 2.0, "e": 1.5, "f": 2.0}  # files of one millisecond: any order
    assert len(reader.skipped) == 2 and sum("skipped" in r.getMessage() for r in caplog.records) == 2


def test_an_arrow_body_keys_its_rows_by_the_id_column_as_text() -> None:
    """Arrow bodies carry `--id-column` too: its values become the rows' keys, as text (strings,
    dictionary-encoded strings, integers), a missing key stays None; another type is refused in
    one line; without the column (or without `--id-column`) there are no keys."""
    features = {"a": [1.0, 2.0], "b": [3.0, 4.0], "img": [[1.0, 2, 3, 4]] * 2, "city": ["x", "y"]}
    decoder = Decoder(SCHEMA, id_column="order")
    for ids, keys in (
        (pa.array(["o1", None]), ["o1", None]),
        (pa.array(["o1", "o2"]).dictionary_encode(), ["o1", "o2"]),
        (pa.array([7, 8], pa.int64()), ["7", "8"]),
    ):
        rows = decoder.arrow(arrow(pa.table({**features, "order": ids})))
        assert rows.n == 2 and rows.keys == keys
        assert rows.typed[NUMERIC].tolist() == [[1.0, 3.0], [2.0, 4.0]]
    with pytest.raises(UserError, match="id column 'order' is list<item: int64>; keys are text or integers"):
        decoder.arrow(arrow(pa.table({**features, "order": [[1], [2]]})))
    assert decoder.arrow(arrow(pa.table(features))).keys is None
    assert Decoder(SCHEMA).arrow(arrow(pa.table({**features, "order": ["o1", "o2"]}))).keys is None
