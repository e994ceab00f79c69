"""The typing rule of serving, checked differentially: a request's JSON rows, the same rows as an
Arrow table (the rule `ctrain predict` reads files by), and the decoder's fast path for rows of
plain values must give the same typed rows, value for value and type for type; and the fast path
must be the one taken for plain rows (else it is dead weight), and must step aside (None) for
anything the strict decoder has to decide and word."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pytest

from continual_trainer.data.columns import Column, InputInfo, check_column, infer_column
from continual_trainer.data.errors import UserError
from continual_trainer.data.rows import NUMERIC
from continual_trainer.data.schema import Schema
from continual_trainer.serve.edge import BadRequest, Decoder, RequestRows

SCHEMAS = {
    "one number": Schema((Column("a"),), "y", (0, 1)),
    "numbers": Schema((Column("a"), Column("b"), Column("c")), "y", (0, 1)),
    "numbers and text": Schema(
        (Column("a"), Column("b"), Column("city", "categorical", vocabulary=("x",))), "y", (0, 1)
    ),
    "tensor": Schema((Column("a"), Column("img", "tensor", (2, 3))), "y", (0, 1)),
    "tensor and text": Schema(
        (Column("a"), Column("b"), Column("img", "tensor", (4,)), Column("city", "categorical", vocabulary=("x",))),
        "y",
        (0, 1),
    ),
    "tensor only": Schema((Column("img", "tensor", (3,)),), "y", (0, 1)),
}  # fmt: skip


def _column_values(column: Column, n: int, rng: random.Random) -> list:
    """One representation per column (so Arrow infers one type), chosen at random."""
    if column.type.form == "numbers":
        size = column.size
        kind = rng.choice(["float", "int", "bool"])
        make = {"float": lambda: rng.uniform(-1e3, 1e3), "int": lambda: rng.randint(-50, 50), "bool": rng.random}
        if kind == "bool":
            return [[rng.random() < 0.5 for _ in range(size)] for _ in range(n)]
        return [[make[kind]() for _ in range(size)] for _ in range(n)]
    if column.type.form == "text":
        return [rng.choice(["x", "y", "never seen", "42"]) for _ in range(n)]
    kind = rng.choice(["float", "int", "bool", "text"])
    if kind == "float":
        return [rng.uniform(-1e6, 1e6) for _ in range(n)]
    if kind == "int":
        return [rng.randint(-(10**9), 10**9) for _ in range(n)]
    if kind == "bool":
        return [rng.random() < 0.5 for _ in range(n)]
    return [rng.choice(["1.5", " -2e3 ", "7", "0.25"]) for _ in range(n)]


def _rows(schema: Schema, n: int, seed: int, keys: bool = False) -> list[dict]:
    rng = random.Random(seed)
    columns = {c.name: _column_values(c, n, rng) for c in schema.columns}
    rows = [{name: values[i] for name, values in columns.items()} for i in range(n)]
    if keys:
        for i, row in enumerate(rows):
            row["id"] = rng.choice([f"k{i}", i, None])
    return rows


def _same(a: RequestRows, b: RequestRows, why: str) -> None:
    assert a.n == b.n and a.keys == b.keys, why
    assert set(a.typed) == set(b.typed), why
    for name in a.typed:
        x, y = a.typed[name], b.typed[name]
        assert x.dtype == y.dtype and x.shape == y.shape, (why, name, x.dtype, y.dtype, x.shape, y.shape)
        assert x.tolist() == y.tolist(), (why, name)


def _strict(schema: Schema, id_column: str | None) -> Decoder:
    decoder = Decoder(schema, id_column=id_column)
    decoder._parse_first = False  # every body through msgspec's typed struct
    return decoder


@pytest.mark.parametrize("name", list(SCHEMAS))
@pytest.mark.parametrize("keys", [False, True])
def test_json_rows_the_fast_path_and_arrow_tables_type_alike(name: str, keys: bool) -> None:
    schema = SCHEMAS[name]
    id_column = "id" if keys else None
    decoder, strict = Decoder(schema, id_column=id_column), _strict(schema, id_column)
    tensors = any(c.type.form == "numbers" for c in schema.columns)
    for seed in range(12):
        rows = _rows(schema, n=1 + seed % 5, seed=seed, keys=keys)
        body = json.dumps({"rows": rows}).encode()
        got = decoder.json(body)
        why = f"{name}, seed {seed}: {rows[:2]}"
        _same(got, strict.json(body), why)
        plain = all(not isinstance(v, str) for r in rows for k, v in r.items() if k not in ("city", "id"))
        if tensors and plain:  # the fast path answered, not the strict one
            fast = decoder._plain(body)
            assert fast is not None, why
            _same(fast, got, why)
        if not keys:
            _same(decoder.table(pa.Table.from_pylist(rows)), got, why)
        # the canonical types: numbers as one float64 matrix, tensors float32, text as objects
        for c in schema.columns:
            if c.type.grouped:
                assert got.typed[NUMERIC].dtype == np.float64
            elif c.type.form == "numbers":
                assert got.typed[c.name].dtype == np.float32 and got.typed[c.name].shape == (got.n, c.size)
            else:
                assert got.typed[c.name].dtype == object
                assert all(type(v) is str for v in got.typed[c.name])


GOOD = {"a": 1.0, "b": 2, "img": [1, 2, 3, 4], "city": "x"}


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"[1, 2]", "not an object"),
        (b'{"rows": {}}', "rows not a list"),
        (b'{"rows": []}', "no rows"),
        (b"{not json", "not JSON"),
        (json.dumps({"rows": [{**GOOD, "a": "1.5"}]}).encode(), "a number as text"),
        (json.dumps({"rows": [{**GOOD, "a": None}]}).encode(), "a null number"),
        (json.dumps({"rows": [{**GOOD, "a": 2e15}]}).encode(), "beyond the magnitude a feature may have"),
        (json.dumps({"rows": [{**GOOD, "a": -2e15}]}).encode(), "beyond it, negative"),
        (json.dumps({"rows": [{k: v for k, v in GOOD.items() if k != "b"}]}).encode(), "a column missing"),
        (json.dumps({"rows": [{**GOOD, "img": [1, 2, 3]}]}).encode(), "a tensor too short"),
        (json.dumps({"rows": [{**GOOD, "img": [1, 2, 3, "4"]}]}).encode(), "text in a tensor"),
        (json.dumps({"rows": [{**GOOD, "img": [1, 2, 3, 2e15]}]}).encode(), "a tensor value too large"),
        (json.dumps({"rows": [{**GOOD, "img": [[1, 2], [3, 4]]}]}).encode(), "a nested tensor"),
        (json.dumps({"rows": [{**GOOD, "city": 3}]}).encode(), "an integer code for text"),
        (json.dumps({"rows": [{**GOOD, "city": None}]}).encode(), "null text"),
        (json.dumps({"rows": [{**GOOD, "id": 1.5}]}).encode(), "a key that is a number"),
        (json.dumps({"rows": [{**GOOD, "id": [1]}]}).encode(), "a key that is a list"),
    ],
)
def test_the_fast_path_steps_aside_for_what_the_strict_decoder_decides(body: bytes, why: str) -> None:
    schema = SCHEMAS["tensor and text"]
    decoder = Decoder(schema, id_column="id")
    assert decoder._plain(body) is None, why
    strict = _strict(schema, "id")
    try:
        expected: RequestRows | str = strict.json(body)
    except UserError as e:
        expected = str(e)
    try:
        got: RequestRows | str = decoder.json(body)
    except UserError as e:
        got = str(e)
    if isinstance(expected, str):
        assert got == expected, why
    else:
        assert isinstance(got, RequestRows), why
        _same(got, expected, why)


def test_plain_rows_with_keys_of_every_allowed_kind_take_the_fast_path() -> None:
    schema = SCHEMAS["tensor and text"]
    decoder = Decoder(schema, id_column="id")
    rows = [{**GOOD, "id": key} for key in ("k", 7, None)] + [dict(GOOD)]
    fast = decoder._plain(json.dumps({"rows": rows}).encode())
    assert fast is not None and fast.keys == ["k", "7", None, None] and fast.n == 4
    assert fast.typed[NUMERIC].tolist() == [[1.0, 2.0]] * 4
    assert fast.typed["img"].tolist() == [[1, 2, 3, 4]] * 4 and fast.typed["city"].tolist() == ["x"] * 4
    # without an id column the fast path gives no keys
    assert Decoder(schema)._plain(json.dumps({"rows": rows}).encode()).keys is None


# -- the column kinds' checks, word for word (a batch ingested and a request answered by one rule)


def _refusal(col: pa.ChunkedArray | pa.Array, column: Column) -> str:
    with pytest.raises(UserError) as refused:
        check_column(col if isinstance(col, pa.ChunkedArray) else pa.chunked_array([col]), column, "f.parquet")
    return str(refused.value)


def test_an_integer_types_extreme_is_refused_as_a_missing_value_sentinel() -> None:
    a = Column("a")
    assert _refusal(pa.array([1, 127, 3, 127], pa.int8()), a) == (
        "f.parquet: feature 'a' has 2 value(s) equal to int8's maximum (127, the first in row 1), a sentinel for "
        "missing values, not a measurement; replace them before ingesting"
    )
    assert "equal to int16's minimum (-32768, the first in row 2)" in _refusal(pa.array([5, 6, -32768], pa.int16()), a)
    check_column(pa.chunked_array([pa.array([0, 0, 3], pa.uint8())]), a, "f")  # uint8's minimum is 0: a value
    check_column(pa.chunked_array([pa.array([126, -127], pa.int8())]), a, "f")
    assert "equal to uint8's maximum (255" in _refusal(pa.array([0, 255], pa.uint8()), a)


def test_numbers_beyond_what_a_network_trains_on_are_refused_with_the_first_row() -> None:
    a = Column("a")
    assert _refusal(pa.array([1.0, float("nan"), float("inf")]), a) == (
        "f.parquet: feature 'a' has 2 NaN or infinite value(s) (the first in row 1)"
    )
    assert _refusal(pa.array([1.0, 2.0, -1e39]), a) == (
        "f.parquet: feature 'a' has 1 value(s) beyond float32's range (|x| > 3.4e38, the first in row 2), "
        "infinite where the model computes"
    )
    assert _refusal(pa.array([1, 2 * 10**15, 3]), a).startswith(
        "f.parquet: feature 'a' has 1 value(s) beyond ±1e15 (e.g. 2e+15 in row 1), far outside"
    )
    check_column(pa.chunked_array([pa.array([1e15, -1e15, 3.4e38 / 1e24])]), a, "f")  # at the limit: accepted
    assert _refusal(pa.array([1.0, None]), a) == "f.parquet: feature 'a' has 1 missing value(s) (the first in row 1)"


def test_a_tensors_rows_are_checked_for_length_nulls_and_values_naming_the_row() -> None:
    img = Column("img", "tensor", (2, 2))
    assert _refusal(pa.array([[1, 2, 3, 4], [1, 2, 3], [1, 2, 3, 4, 5]]), img) == (
        "f.parquet: feature 'img' has 2 row(s) whose length is not 4 (shape (2, 2); the first is row 1)"
    )
    assert _refusal(pa.array([[1, 2, 3, 4], [1, None, 3, None]]), img) == (
        "f.parquet: feature 'img' has 2 missing value(s) inside its lists"
    )
    assert _refusal(pa.array([[1.0, 2, 3, 4], [1, 2, 3, 4], [1, 2, float("nan"), 4]]), img) == (
        "f.parquet: feature 'img' has 1 NaN or infinite value(s) (the first in row 2)"
    )
    assert "(e.g. 2e+15 in row 1)" in _refusal(pa.array([[1.0, 2, 3, 4], [1, 2, 3, 2e15]]), img)
    assert "the first in row 1), infinite" in _refusal(pa.array([[1.0, 2, 3, 4], [1, 2, 3, 1e39]]), img)
    check_column(pa.chunked_array([pa.array([[1.0, 2, 3, 4]] * 2)]), img, "f")


def test_a_tensor_column_is_inferred_from_its_first_rows_and_the_shape_given() -> None:
    table = pa.table(
        {
            "fixed": pa.array([[1.0, 2, 3, 4, 5, 6]] * 2, pa.list_(pa.float32(), 6)),
            "listed": pa.array([None, [1.0, 2, 3]]),
            "empty": pa.array([[], []], pa.list_(pa.float64())),
        }
    )
    assert infer_column(table, "fixed", None, "f") == Column("fixed", "tensor", (6,))
    assert infer_column(table, "fixed", (2, 3), "f") == Column("fixed", "tensor", (2, 3))
    assert infer_column(table, "listed", None, "f") == Column("listed", "tensor", (3,))  # the first non-null row
    with pytest.raises(UserError) as wrong:
        infer_column(table, "fixed", (4, 2), "f")
    assert str(wrong.value) == "f: feature 'fixed' holds 6 numbers per row, which shape (4, 2) cannot take"
    with pytest.raises(UserError, match="holds 0 numbers per row"):
        infer_column(table, "empty", None, "f")
    with pytest.raises(UserError, match="holds 0 numbers per row"):
        infer_column(pa.table({"t": pa.array([], pa.list_(pa.float64()))}), "t", None, "f")


def test_what_each_kind_tells_a_model_builder_and_records_in_store_json() -> None:
    img = Column("img", "tensor", (2, 2), mean=1.5, variance=0.25)
    info = img.type.input_info(img)
    assert info == InputInfo((2, 2), "float32", mean=(1.5,), variance=(0.25,), columns=())
    assert img.type.json_extras(img) == {"shape": [2, 2]}
    bare = Column("img", "tensor", (3,))
    assert bare.type.input_info(bare) == InputInfo((3,), "float32")
    a = Column("a", mean=2.0, variance=4.0)
    assert a.type.input_info(a) == InputInfo((), "float32", mean=(2.0,), variance=(4.0,), columns=("a",))
    assert a.type.json_extras(a) == {} and a.type.grown(a, pa.chunked_array([pa.array([1.0])])) is a
    city = Column("city", "categorical", vocabulary=("b", "a"))
    assert city.type.input_info(city) == InputInfo((), "string", ("b", "a"))
    assert city.type.json_extras(city) == {"vocabulary": ["b", "a"]}
    grown = city.type.grown(city, pa.chunked_array([pa.array(["z", "a", "c", "z"]).dictionary_encode()]))
    assert grown.vocabulary == ("b", "a", "c", "z")  # known values kept in place, new ones sorted after


def test_a_text_column_with_a_different_value_in_every_row_is_an_identifier() -> None:
    city = Column("city", "categorical")
    unique = pa.chunked_array([pa.array([f"u{i}" for i in range(20)])])
    with pytest.raises(UserError) as refused:
        city.type.first_batch(unique, city, "f")
    assert str(refused.value) == (
        "f: column 'city' has a different value in every row (an identifier?); keep it out of the features with "
        "--ignore city"
    )
    city.type.first_batch(pa.chunked_array([pa.array([f"u{i}" for i in range(19)])]), city, "f")  # too few to tell
    city.type.first_batch(pa.chunked_array([pa.array([f"u{i % 19}" for i in range(20)])]), city, "f")


# -- typed rows, model inputs and the log's Arrow columns agree for every kind


def test_each_kinds_typed_rows_give_the_model_input_and_the_log_column_it_would_get_from_a_file() -> None:
    schema = Schema(
        (Column("a"), Column("img", "tensor", (2, 2)), Column("one", "tensor", (1,)),
         Column("city", "categorical", vocabulary=("x",))),
        "y",
        (0, 1),
    )  # fmt: skip
    table = pa.table(
        {
            "a": pa.array([1, 2, 3], pa.int64()),
            "img": pa.array([[1, 2, 3, 4], [5, 6, 7, 8], [0, 0, 0, 1]], pa.list_(pa.float64())),
            "one": pa.array([[1.5], [2.5], [3.5]]),
            "city": pa.array(["x", "q", "x"]).dictionary_encode(),
        }
    )
    conformed = schema.conform(table, "f")
    typed = schema.typed_rows(conformed)
    for column in schema.columns:
        kind = column.type
        if kind.grouped:
            continue
        from_typed = kind.typed_input(typed[column.name], column)
        from_file = kind.to_input(conformed.column(column.name), column)
        assert from_typed.dtype == from_file.dtype and from_typed.tolist() == from_file.tolist(), column.name
        logged = kind.typed_arrow(typed[column.name], column)
        assert logged.type == kind.typed_type(column), column.name
        assert logged.to_pylist() == conformed.column(column.name).to_pylist(), column.name
    img = schema.column("img")
    assert typed["img"].dtype == np.float32 and img.type.typed_input(typed["img"], img).shape == (3, 2, 2)
    assert Column("one", "tensor", (1,)).type.typed_type(schema.column("one")) == pa.list_(pa.float32(), 1)
    numbers = Column("a")
    assert numbers.type.typed_type(numbers) == pa.float64()
    assert numbers.type.typed_arrow(np.array([1.0, 2.0]), numbers).type == pa.float32()  # a kind's default


def test_an_arrow_body_that_is_no_stream_or_has_no_rows_is_refused() -> None:
    decoder = Decoder(SCHEMAS["tensor and text"])
    with pytest.raises(BadRequest) as garbage:
        decoder.arrow(b"not arrow at all")
    assert str(garbage.value).startswith("request: not an Arrow IPC stream (") and "\n" not in str(garbage.value)
    empty = pa.table({"a": pa.array([], pa.float64())})
    with pytest.raises(UserError) as none:
        decoder.arrow(_stream(empty))
    assert str(none.value) == "request: the Arrow stream has no rows"
    one = pa.table({"a": [1.0], "b": [2.0], "img": [[1.0, 2, 3, 4]], "city": ["x"]})
    assert decoder.arrow(_stream(one)).n == 1


def test_a_refused_key_or_number_names_what_was_expected() -> None:
    decoder = Decoder(SCHEMAS["tensor and text"], id_column="id")
    for value, words in (([1], "expected text or an integer, got a list"), ({"k": 1}, "got an object")):
        with pytest.raises(UserError) as refused:
            decoder.json(json.dumps({"rows": [{**GOOD, "id": value}]}).encode())
        assert str(refused.value).startswith("request: feature 'id', row 0: ") and words in str(refused.value)
    with pytest.raises(UserError) as huge:
        decoder.json(json.dumps({"rows": [{**GOOD, "a": 3e15}]}).encode())
    assert str(huge.value).startswith("request: feature 'a' has 1 value(s) beyond ±1e15")


def test_a_tensor_of_one_number_per_row_is_a_tensor() -> None:
    table = pa.table({"t": pa.array([[1.0], [2.0]])})
    assert infer_column(table, "t", None, "f") == Column("t", "tensor", (1,))
    assert infer_column(pa.table({"t": pa.array([[1.0, 2.0]])}), "t", None, "f").shape == (2,)


def _stream(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
