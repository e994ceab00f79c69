"""Rows typed at the edge: a request's body turned, once, into the store's canonical types.

A request's rows are converted to the types the store holds its features in before anything
else sees them (`data.schema.Schema.conform`'s rule, the one `ctrain predict` reads files by):
what converts exactly is converted (integers and booleans to numbers, numbers written as text,
dictionary-encoded or large strings to strings, integer codes to text) and anything else is
refused with a 422 naming the column and the row. Scoring, the answer and the prediction log
then see one type per column, so a log file never mixes types and a row answered 200 is a row
the log can write.

JSON bodies, `{"rows": [{"column": value, ...}, ...]}`, are decoded by msgspec into a struct
compiled once per schema: each field's accepted JSON types are checked in C while parsing (no
dict per row, no second pass), and the grouped numeric columns become one float64 matrix in one
NumPy call. Arrow IPC streams are read by pyarrow and conformed column by column. Limits that
protect the server are refusals too: nesting deeper than the decoder's limit, numbers beyond
float64, integers beyond what JSON numbers in the store can mean.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from typing import Annotated, Any

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from continual_trainer.data.columns import MAX_MAGNITUDE, NUMBER_TEXT, check_column, grouped
from continual_trainer.data.errors import UserError
from continual_trainer.data.rows import NUMERIC
from continual_trainer.data.schema import Schema

__all__ = ["ARROW", "JSON", "BadRequest", "Decoder", "RequestRows"]

JSON = "application/json"
ARROW = "application/vnd.apache.arrow.stream"
SOURCE = "request"
SHAPE = 'request: expected {"rows": [{"column": value, ...}, ...]} with at least one row'

_Number = float | bool | Annotated[str, msgspec.Meta(pattern=NUMBER_TEXT)]
_Code = str | int
_Key = str | int | None
_FORMS: dict[str, Any] = {"number": _Number, "numbers": list[float | bool], "text": _Code}
_PATH = re.compile(r"`\$\.rows\[(\d+)\](?:\.(.+))?`$")


class BadRequest(UserError):
    """A body that is not what its content type says (400, not 422)."""


@dataclass(frozen=True)
class RequestRows:
    """A request's rows, typed.

    Attributes:
        n: how many.
        typed: the features in their canonical form (`Schema.typed_rows`).
        keys: each row's value of the id column as text (None where it has none), or None
            without an id column.
    """

    n: int
    typed: dict[str, np.ndarray]
    keys: list[str | None] | None = None


class Decoder:
    """Request bodies to `RequestRows` for one schema (built once per served schema).

    Args:
        schema: the store's schema.
        id_column: a column whose values key the rows (it may be a feature or not; absent or
            null in a row, that row gets no key of its own).
    """

    def __init__(self, schema: Schema, id_column: str | None = None) -> None:
        self.schema = schema
        self.id_column = id_column
        numeric = grouped(schema.columns)
        others = [c for c in schema.columns if not c.type.grouped]
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        names: dict[str, str] = {}
        for i, c in enumerate(numeric):
            fields.append((f"n{i}", _Number))
            names[f"n{i}"] = c.name
        for i, c in enumerate(others):
            fields.append((f"o{i}", _FORMS[c.type.form]))
            names[f"o{i}"] = c.name
        self._key_field: str | None = None
        if id_column is not None:
            if id_column in schema.features:
                self._key_field = next(f for f, name in names.items() if name == id_column)
            else:
                fields.append(("key", _Key, None))
                names["key"] = id_column
                self._key_field = "key"
        row = msgspec.defstruct("Row", fields, rename=names, gc=False)
        self._doc = msgspec.defstruct("Rows", [("rows", list[row])])  # type: ignore[valid-type]
        self._decoder = msgspec.json.Decoder(self._doc)
        # Rows with tensors (long lists of numbers): orjson parses them faster than msgspec, and
        # NumPy's own type inference tells whether every value was a number or a boolean; rows
        # that are anything but plain go through the strict decoder, which decides and words it.
        self._parse_first = any(c.type.form == "numbers" for c in schema.columns) and id_column not in schema.features
        self._columns = {name: field for field, name in names.items()}
        self._numeric = [c.name for c in numeric]
        self._others = [(f"o{i}", c) for i, c in enumerate(others)]
        self._only_numbers = not others and "key" not in names
        k = len(numeric)
        self._numbers = attrgetter(*[f"n{i}" for i in range(k)]) if k > 1 else None
        self._one = attrgetter("n0") if k == 1 else None
        self._fields = [f"n{i}" for i in range(k)]

    # -- JSON ------------------------------------------------------------------------------------

    def json(self, body: bytes) -> RequestRows:
        """The rows of a JSON body; BadRequest if it is not JSON, UserError if its rows do not fit."""
        if self._parse_first:
            plain = self._plain(body)
            if plain is not None:
                return plain
        try:
            rows = self._decoder.decode(body).rows  # type: ignore[attr-defined]
        except msgspec.ValidationError as exc:
            raise self._refusal(str(exc), body) from None
        except msgspec.DecodeError as exc:
            raise BadRequest(f"request: not valid JSON ({exc})") from None
        except RecursionError:
            raise BadRequest("request: JSON nested too deep") from None
        if not rows:
            raise UserError(SHAPE)
        typed: dict[str, np.ndarray] = {}
        if self._numeric:
            if self._only_numbers:
                values: Any = map(msgspec.structs.astuple, rows)
            elif self._numbers is not None:
                values = map(self._numbers, rows)
            else:
                assert self._one is not None
                values = ((v,) for v in map(self._one, rows))
            k = len(self._numeric)
            try:  # booleans as 0/1, numbers as text parsed
                matrix = np.fromiter(chain.from_iterable(values), np.float64, len(rows) * k).reshape(len(rows), k)
            except (ValueError, TypeError):
                matrix = np.array([[float(getattr(r, f)) for f in self._fields] for r in rows], np.float64)
            if not np.abs(matrix).max() <= MAX_MAGNITUDE:  # one pass: NaN compares false too
                self._check_numbers(matrix)
            typed[NUMERIC] = matrix
        for field, column in self._others:
            values = [getattr(r, field) for r in rows]
            if column.type.form == "numbers":  # a tensor: rows of numbers of one size
                typed[column.name] = self._tensor(values, column)
            else:
                typed[column.name] = np.array([v if type(v) is str else str(v) for v in values], dtype=object)
        keys = None
        if self._key_field is not None:
            keys = [None if v is None else str(v) for v in map(attrgetter(self._key_field), rows)]
        return RequestRows(len(rows), typed, keys)

    def _plain(self, body: bytes) -> RequestRows | None:
        """The rows of a body whose every value is of its column's plain type (numbers or
        booleans for numbers, text for text, no nulls), parsed by orjson; None for any other
        body (the strict decoder reads it, or refuses it in its words)."""
        try:
            doc = orjson.loads(body)
            rows = doc["rows"] if type(doc) is dict else None
            if type(rows) is not list or not rows:
                return None
            typed: dict[str, np.ndarray] = {}
            if self._numeric:
                matrix = _numbers(np.array([[r[c] for c in self._numeric] for r in rows]), len(self._numeric))
                if matrix is None:
                    return None
                typed[NUMERIC] = matrix
            for _, column in self._others:
                values = [r[column.name] for r in rows]
                if column.type.form == "numbers":
                    array = _numbers(np.array(values), column.size)
                    if array is None:
                        return None
                    typed[column.name] = array.astype(np.float32)
                elif all(type(v) is str for v in values):
                    typed[column.name] = np.array(values, dtype=object)
                else:
                    return None
            keys = None
            if self.id_column is not None:
                given = [r.get(self.id_column) for r in rows]
                if not all(v is None or type(v) in (str, int) for v in given):
                    return None
                keys = [None if v is None else str(v) for v in given]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None
        return RequestRows(len(rows), typed, keys)

    def _check_numbers(self, matrix: np.ndarray) -> None:
        """The data layer's words for the first numeric column that fails its checks."""
        for j, name in enumerate(self._numeric):
            check_column(pa.chunked_array([pa.array(matrix[:, j])]), self.schema.column(name), SOURCE)
        raise UserError(f"{SOURCE}: a numeric feature is beyond ±{MAX_MAGNITUDE:.0e}")

    def _tensor(self, values: list[Any], column: Any) -> np.ndarray:
        try:
            array = np.array(values, dtype=np.float64)
        except ValueError:  # rows of different lengths
            array = None
        if (
            array is None
            or array.ndim != 2
            or array.shape[1] != column.size
            or not np.isfinite(array).all()
            or (np.abs(array).max(initial=0.0) > MAX_MAGNITUDE)
        ):
            check_column(pa.chunked_array([pa.array(values, pa.list_(pa.float64()))]), column, SOURCE)
            raise UserError(f"{SOURCE}: feature {column.name!r} does not hold {column.size} numbers per row")
        return array.astype(np.float32)  # the kind's typed form (checked in float64 first)

    def _refusal(self, message: str, body: bytes) -> UserError:
        """msgspec's validation error in the project's words: the column and the row."""
        what, _, where = message.partition(" - at ")
        found = _PATH.match(where)
        if not found:
            return UserError(SHAPE)
        row, column = int(found.group(1)), found.group(2)
        if column is None:
            missing = re.match(r"Object missing required field `(.+)`", what)
            if missing:
                return UserError(f"{SOURCE}: missing feature column(s) {missing.group(1)} (row {row})")
            return UserError(SHAPE)
        if column not in self._columns:  # inside a value: `img[3]`, `city.x`
            column = re.split(r"[.\[]", column)[0]
        if what.endswith("got `null`"):
            return UserError(f"{SOURCE}: feature {column!r} has a missing value (null) in row {row}")
        if "matching regex" in what:
            value = _value(body, row, column)
            return UserError(f"{SOURCE}: feature {column!r}, row {row}: {value!r} is not a number")
        if what.startswith("Number out of range"):
            return UserError(f"{SOURCE}: feature {column!r}, row {row}: a number beyond float64's range")
        form = self.schema.column(column).type.form if column in self.schema.features else "key"
        kind = {"number": "a number", "numbers": "a number", "text": "text"}.get(form, "text or an integer")
        got = re.search(r"got `(\w+)`", what)
        wanted = f"expected {kind}" + (f", got {_A.get(got.group(1), got.group(1))}" if got else f" ({what})")
        return UserError(f"{SOURCE}: feature {column!r}, row {row}: {wanted}")

    # -- Arrow -----------------------------------------------------------------------------------

    def arrow(self, body: bytes) -> RequestRows:
        """The rows of an Arrow IPC stream; BadRequest if it is not one, UserError if its rows do not fit."""
        try:
            table = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
        except (pa.ArrowInvalid, OSError) as exc:
            raise BadRequest(f"request: not an Arrow IPC stream ({str(exc).splitlines()[0]})") from None
        if table.num_rows == 0:
            raise UserError("request: the Arrow stream has no rows")
        return self.table(table)

    def table(self, table: pa.Table) -> RequestRows:
        """The rows of a table (conformed to the store's types); UserError if they do not fit."""
        conformed = self.schema.conform(table, SOURCE)
        keys = None
        if self.id_column is not None and self.id_column in table.column_names:
            col = table.column(self.id_column)
            try:
                keys = pc.cast(
                    col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col, pa.string()
                ).to_pylist()
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise UserError(
                    f"{SOURCE}: id column {self.id_column!r} is {col.type}; keys are text or integers"
                ) from None
        return RequestRows(table.num_rows, self.schema.typed_rows(conformed), keys)


_A = {
    "array": "a list",
    "object": "an object",
    "str": "text",
    "bool": "a boolean",
    "int": "an integer",
    "float": "a number",
}


def _numbers(array: np.ndarray, width: int) -> np.ndarray | None:
    """`array` (rows of `width` values, as NumPy inferred them) as float64 if every value was a
    number or a boolean, finite and within the magnitude a feature may have; else None."""
    if array.dtype.kind not in "fiub" or array.ndim != 2 or array.shape[1] != width:
        return None
    array = array.astype(np.float64, copy=False)
    return array if np.abs(array).max() <= MAX_MAGNITUDE else None  # NaN compares false


def _value(body: bytes, row: int, column: str) -> Any:
    """The value a refusal is about (read again, on the error path only)."""
    try:
        return msgspec.json.decode(body)["rows"][row][column]
    except (msgspec.DecodeError, KeyError, IndexError, TypeError, RecursionError):
        return None
