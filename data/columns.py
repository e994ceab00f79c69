"""Feature columns and their kinds: what a column is, how it is checked, what the model gets.

A kind is one class (`ColumnKind`): which Arrow types it takes (`matches`), the column it
infers from a first batch (`infer`), the checks every batch's values pass (`check`), the
array the model gets (`to_input`, or side by side with the other numeric columns for a
`grouped` kind), the model input it describes (`input_info`), the statistics the store
records (`values` to compute them over), what a batch adds to it (`grown`) and what a first
batch may show it is not a feature (`first_batch`). `KINDS`
holds them by the name the store records; a new kind is one more class registered there.
See `data.schema` for the kinds this store knows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from continual_trainer.data.errors import UserError

# The largest magnitude the model's float32 arithmetic represents.
FLOAT32_MAX = float(np.finfo(np.float32).max)
# A feature value's size, beyond which a batch is refused: far past any measurement kept in
# float32's 7 digits, and small enough that a square summed over a million rows (a variance,
# a squared error) stays inside float32's range (1e30 x 1e6 < 3.4e38). Values beyond it (3.3e38,
# an integer type's extreme used as "missing") passed as finite and made every later update
# that read them diverge.
MAX_MAGNITUDE = 1e15
# A number written as text, as a numeric feature accepts it (a JSON client that quotes its
# numbers, a CSV read as strings): decimal digits, a point, an exponent; nothing else ("nan",
# "1_000" and "0x10" are not numbers here, in any reader).
NUMBER_TEXT = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"


@dataclass(frozen=True)
class Column:
    """One feature column.

    Attributes:
        name: the column's name.
        kind: the name of its kind (`numeric`, `tensor`, `categorical`: see `KINDS`).
        shape: a tensor's shape per row.
        vocabulary: a categorical column's values seen so far, sorted within each batch
            that brought them (earlier values keep their position).
        mean, variance: over the store's first batch (all elements, for a tensor); None
            in stores made before they were recorded.
    """

    name: str
    kind: str = "numeric"
    shape: tuple[int, ...] = ()
    vocabulary: tuple[str, ...] = ()
    mean: float | None = None
    variance: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"column kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    @property
    def type(self) -> ColumnKind:
        """The column's kind, as an object."""
        return KINDS[self.kind]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind, **self.type.json_extras(self)}
        if self.mean is not None:
            d["mean"], d["variance"] = self.mean, self.variance
        return d

    @classmethod
    def from_json(cls, d: Any) -> Column:
        if isinstance(d, str):  # stores of format 1 list feature names only: all numeric
            return cls(d)
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise ValueError("a column is not an object with a name")
        shape = tuple(int(s) for s in d.get("shape", ()))
        vocabulary = tuple(str(v) for v in d.get("vocabulary", ()))
        mean = None if d.get("mean") is None else float(d["mean"])
        variance = None if d.get("variance") is None else float(d["variance"])
        return cls(d["name"], str(d.get("kind", "numeric")), shape, vocabulary, mean, variance)


@dataclass(frozen=True)
class InputInfo:
    """One model input, as a model builder sees it.

    Attributes:
        shape: per row, e.g. `(5,)` for five numeric features, `(8, 8, 1)` for an image,
            `()` for a categorical column.
        dtype: `float32`, or `string` for a categorical column.
        vocabulary: a categorical column's values (a model maps them, e.g. with
            `keras.layers.StringLookup(vocabulary=...)`, and sends others to its OOV bucket).
        mean, variance: per feature (numeric) or over all elements (tensor), from the
            store's first batch, for normalisation; None if unknown.
        columns: for the numeric input, the columns it holds side by side.
    """

    shape: tuple[int, ...]
    dtype: str
    vocabulary: tuple[str, ...] = ()
    mean: tuple[float, ...] | None = None
    variance: tuple[float, ...] | None = None
    columns: tuple[str, ...] = ()


class ColumnKind:
    """A kind of feature column (see the module docstring). Subclasses set `name` and
    override what differs; a kind with `statistics` has its mean and variance recorded."""

    name: ClassVar[str]
    grouped: ClassVar[bool] = False  # scalar numbers side by side in the `numeric` input
    statistics: ClassVar[bool] = True
    form: ClassVar[str] = "number"  # what one row's value is, as a client sends it: number, numbers or text

    def matches(self, t: pa.DataType) -> bool:
        raise NotImplementedError

    def infer(self, table: pa.Table, name: str, shape: tuple[int, ...] | None, source: str) -> Column:
        """The column `name` of a first batch, of this kind (`shape`: one the user gave)."""
        if shape is not None:
            raise UserError.about("shapes", name, f"{name!r} is {table.column(name).type}, not a list of numbers")
        return Column(name, self.name)

    def check(self, col: pa.ChunkedArray, column: Column, source: str) -> None:
        """Raise UserError unless a batch's values are usable (the type is checked already)."""

    def first_batch(self, col: pa.ChunkedArray, column: Column, source: str) -> None:
        """Raise UserError if a store's first batch shows the column is no feature (checked
        after `check`)."""

    def to_input(self, col: pa.ChunkedArray, column: Column) -> np.ndarray:
        raise NotImplementedError

    def input_info(self, column: Column) -> InputInfo:
        """The model input of a column of its own (a grouped kind's columns share one)."""
        stats = column.mean is not None
        return InputInfo(
            column.shape,
            "float32",
            mean=(float(column.mean),) if stats else None,  # type: ignore[arg-type]
            variance=(float(column.variance),) if stats else None,  # type: ignore[arg-type]
            columns=(column.name,) if self.grouped else (),
        )

    def values(self, x: np.ndarray) -> np.ndarray:
        """The numbers a model input's statistics are over (for kinds with `statistics`)."""
        return x.astype(np.float64).ravel()

    def grown(self, column: Column, col: pa.ChunkedArray) -> Column:
        """The column after a batch's values (e.g. a vocabulary with new values)."""
        return column

    def json_extras(self, column: Column) -> dict[str, Any]:
        """What store.json records of a column of this kind beyond its name and statistics."""
        return {}

    def canonical(self, column: Column) -> pa.DataType | None:
        """The one Arrow type a column of this kind is held in once typed (rows to score, the
        prediction log): every type the kind takes converts to it exactly. None (a kind that does
        not say): columns are held as they come, and typed as their model input."""
        return None

    def typed_type(self, column: Column) -> pa.DataType:
        """The Arrow type of `typed_arrow`'s arrays (the prediction log's column)."""
        given = self.canonical(column)
        if given is not None:
            return given
        return pa.list_(pa.float32(), column.size) if column.shape else pa.float32()

    def converts(self, t: pa.DataType) -> bool:
        """Whether a column of type `t`, not of this kind, converts to it exactly (numbers written
        as text, say); `convert` does it."""
        return False

    def convert(self, col: pa.ChunkedArray, column: Column, source: str) -> pa.ChunkedArray:
        """A column that `converts` (and has no nulls) as one of this kind; UserError naming the
        first row that does not convert."""
        raise NotImplementedError

    # Typed rows (`Schema.typed_rows`): a column of a kind that is not grouped as one NumPy array.

    def typed(self, col: pa.ChunkedArray, column: Column) -> np.ndarray:
        """A column in its canonical type as its typed array (by default, its model input)."""
        return self.to_input(col, column)

    def typed_input(self, value: np.ndarray, column: Column) -> np.ndarray:
        """The model input of a typed array (as `to_input` gives for the same values)."""
        return value

    def typed_arrow(self, value: np.ndarray, column: Column) -> pa.Array:
        """A typed array as an Arrow array of `typed_type` (a number per row; a tensor's kind
        says otherwise)."""
        return pa.array(np.ascontiguousarray(value, np.float32))


class Numeric(ColumnKind):
    """A scalar integer, float or boolean."""

    name = "numeric"
    grouped = True

    def matches(self, t: pa.DataType) -> bool:
        return is_number(t)

    def check(self, col: pa.ChunkedArray, column: Column, source: str) -> None:
        if pa.types.is_floating(col.type):
            _check_finite(col.to_numpy(), column.name, source)
            _check_magnitude(col.to_numpy(), column.name, source)
        elif pa.types.is_integer(col.type):
            _check_sentinels(col, column.name, source)
            _check_magnitude(col.to_numpy(), column.name, source)

    def to_input(self, col: pa.ChunkedArray, column: Column) -> np.ndarray:
        return np.ascontiguousarray(col.to_numpy().astype(np.float32, copy=False))

    def canonical(self, column: Column) -> pa.DataType:
        return pa.float64()  # exact for every accepted value: integers are at most 1e15 < 2**53

    def converts(self, t: pa.DataType) -> bool:
        return is_text(t)

    def convert(self, col: pa.ChunkedArray, column: Column, source: str) -> pa.ChunkedArray:
        text = col.cast(pa.string()) if pa.types.is_dictionary(col.type) else col
        ok = pc.match_substring_regex(text, NUMBER_TEXT)
        if not pc.all(ok).as_py():
            row = _first(~ok.to_numpy(zero_copy_only=False))
            raise UserError(f"{source}: feature {column.name!r}, row {row}: {text[row].as_py()!r} is not a number")
        return pc.cast(pc.utf8_trim_whitespace(text), pa.float64())


class Tensor(ColumnKind):
    """A list of numbers of one fixed size, shaped as the store records."""

    name = "tensor"
    form = "numbers"

    def matches(self, t: pa.DataType) -> bool:
        return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) and is_number(
            t.value_type
        )

    def infer(self, table: pa.Table, name: str, shape: tuple[int, ...] | None, source: str) -> Column:
        col = table.column(name)
        if pa.types.is_fixed_size_list(col.type):
            size = col.type.list_size
        else:
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False) if len(col) else np.zeros(0)
            valid = lengths[~np.isnan(lengths.astype(float))] if lengths.size else lengths
            size = int(valid[0]) if len(valid) else 0
        shape = shape or (size,)
        if int(np.prod(shape)) != size or size < 1:
            raise UserError(f"{source}: feature {name!r} holds {size} numbers per row, which shape {shape} cannot take")
        return Column(name, self.name, tuple(shape))

    def check(self, col: pa.ChunkedArray, column: Column, source: str) -> None:
        name = column.name
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        wrong = int(np.count_nonzero(lengths != column.size))
        if wrong:
            raise UserError(
                f"{source}: feature {name!r} has {wrong} row(s) whose length is not {column.size} "
                f"(shape {column.shape}; the first is row {_first(lengths != column.size)})"
            )
        values = col.combine_chunks().flatten()
        if values.null_count:
            raise UserError(f"{source}: feature {name!r} has {values.null_count} missing value(s) inside its lists")
        _check_finite(values.to_numpy(zero_copy_only=False), name, source, column.size)
        _check_magnitude(values.to_numpy(zero_copy_only=False), name, source, column.size)

    def to_input(self, col: pa.ChunkedArray, column: Column) -> np.ndarray:
        flat = col.combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        return flat.reshape((len(col), *column.shape))

    def json_extras(self, column: Column) -> dict[str, Any]:
        return {"shape": list(column.shape)}

    def canonical(self, column: Column) -> pa.DataType:
        # float32, what the model computes with (a tensor is an input, not a measurement to keep
        # to the last digit: half the bytes in the prediction log); fixed size: no offsets
        return pa.list_(pa.float32(), column.size)

    def typed(self, col: pa.ChunkedArray, column: Column) -> np.ndarray:
        flat = col.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return flat.astype(np.float32, copy=False).reshape(len(col), column.size)

    def typed_input(self, value: np.ndarray, column: Column) -> np.ndarray:
        return value.reshape(len(value), *column.shape).astype(np.float32, copy=False)

    def typed_arrow(self, value: np.ndarray, column: Column) -> pa.Array:
        flat = np.ascontiguousarray(value, np.float32).ravel()
        return pa.FixedSizeListArray.from_arrays(pa.array(flat), column.size)


class Categorical(ColumnKind):
    """A string or dictionary column: the model gets the strings and maps them with the
    vocabulary the store keeps (growing as batches bring new values)."""

    name = "categorical"
    statistics = False
    form = "text"

    def matches(self, t: pa.DataType) -> bool:
        return is_text(t)

    def first_batch(self, col: pa.ChunkedArray, column: Column, source: str) -> None:
        # A different value in every row is an identifier, not a feature: as a category it
        # would teach the model nothing and grow its vocabulary by every row.
        if len(col) >= 20 and len(set(strings(col))) == len(col):
            raise UserError(
                f"{source}: column {column.name!r} has a different value in every row (an identifier?); "
                f"keep it out of the features with --ignore {column.name}"
            )

    def to_input(self, col: pa.ChunkedArray, column: Column) -> np.ndarray:
        return np.asarray(strings(col), dtype=object)

    def input_info(self, column: Column) -> InputInfo:
        return InputInfo((), "string", column.vocabulary)

    def grown(self, column: Column, col: pa.ChunkedArray) -> Column:
        known = set(column.vocabulary)
        new = sorted({v for v in strings(col) if v not in known})
        return replace(column, vocabulary=column.vocabulary + tuple(new))

    def json_extras(self, column: Column) -> dict[str, Any]:
        return {"vocabulary": list(column.vocabulary)}

    def canonical(self, column: Column) -> pa.DataType:
        return pa.string()

    def converts(self, t: pa.DataType) -> bool:
        return pa.types.is_integer(t)  # codes written as integers: their decimal text

    def convert(self, col: pa.ChunkedArray, column: Column, source: str) -> pa.ChunkedArray:
        return pc.cast(col, pa.string())

    def typed(self, col: pa.ChunkedArray, column: Column) -> np.ndarray:
        return np.asarray(col.to_pylist(), dtype=object)

    def typed_input(self, value: np.ndarray, column: Column) -> np.ndarray:
        return value

    def typed_arrow(self, value: np.ndarray, column: Column) -> pa.Array:
        return pa.array(value, pa.string())


# The kinds by the name the store records, in the order a column's type is tried.
KINDS: dict[str, ColumnKind] = {kind.name: kind for kind in (Numeric(), Tensor(), Categorical())}


def kind_of(t: pa.DataType) -> ColumnKind | None:
    """The feature kind an Arrow type makes, or None if it cannot be a feature."""
    return next((kind for kind in KINDS.values() if kind.matches(t)), None)


def infer_column(table: pa.Table, name: str, shape: tuple[int, ...] | None, source: str) -> Column:
    """A first batch's column `name` as a feature, of the kind its type makes."""
    kind = kind_of(table.column(name).type)
    if kind is None:
        raise UserError(
            f"{source}: feature {name!r} is {table.column(name).type}; features are numbers, fixed-size lists of "
            "numbers or strings"
        )
    return kind.infer(table, name, shape, source)


def check_column(col: pa.ChunkedArray, column: Column, source: str) -> None:
    """Raise UserError unless a batch's column is of the store's kind and usable."""
    kind = kind_of(col.type)
    if kind is None or kind.name != column.kind:
        raise UserError(f"{source}: feature {column.name!r} is {col.type} here; the store holds it as {column.kind}")
    _check_nulls(col, column.name, source)
    kind.check(col, column, source)


def _check_nulls(col: pa.ChunkedArray, name: str, source: str) -> None:
    if col.null_count:
        row = _first(col.is_null().to_numpy(zero_copy_only=False))
        raise UserError(f"{source}: feature {name!r} has {col.null_count} missing value(s) (the first in row {row})")


def _first(mask: np.ndarray) -> int:
    """The index of the first true element of a boolean mask (one that has one)."""
    return int(np.argmax(mask))


def conform_column(col: pa.ChunkedArray, column: Column, source: str) -> pa.ChunkedArray:
    """A column of rows to score, checked as `check_column` checks and held in its kind's
    canonical type: what converts exactly is converted (integers and booleans to float, numbers
    written as text to numbers, dictionary or large strings to strings, integer codes to text);
    anything else is a UserError naming the column (and the first row at fault)."""
    kind = column.type
    if not kind.matches(col.type) and kind.converts(col.type):
        _check_nulls(col, column.name, source)
        col = kind.convert(col, column, source)
    check_column(col, column, source)
    target = kind.canonical(column)
    if target is None or col.type == target:
        return col
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return col.cast(target)


def grouped(columns: Sequence[Column]) -> list[Column]:
    """The columns whose kind puts them side by side in the `numeric` input."""
    return [c for c in columns if c.type.grouped]


def is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return is_text(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def strings(col: pa.ChunkedArray) -> list[str]:
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    return [str(v) for v in col.to_pylist()]


def _check_magnitude(x: np.ndarray, name: str, source: str, size: int = 1) -> None:
    huge = np.abs(x.astype(np.float64, copy=False)) > MAX_MAGNITUDE
    count = int(np.count_nonzero(huge))
    if count:
        first = _first(huge)
        raise UserError(
            f"{source}: feature {name!r} has {count} value(s) beyond ±1e15 (e.g. {float(x[first]):.3g} in row "
            f"{first // size}), far outside what a network can train on; replace them (missing values?) before "
            "ingesting"
        )


def _check_sentinels(col: pa.ChunkedArray, name: str, source: str) -> None:
    """An integer type's extreme is almost always a 'missing' sentinel, not a measurement."""
    info = np.iinfo(col.type.to_pandas_dtype())
    x = col.to_numpy()
    for value, what in ((info.max, "maximum"), (info.min, "minimum")):
        if value == 0:
            continue
        count = int(np.count_nonzero(x == value))
        if count:
            raise UserError(
                f"{source}: feature {name!r} has {count} value(s) equal to {col.type}'s {what} ({value}, the "
                f"first in row {_first(x == value)}), a sentinel for missing values, not a measurement; replace "
                "them before ingesting"
            )


def _check_finite(x: np.ndarray, name: str, source: str, size: int = 1) -> None:
    """Values as the model computes them, in float32: finite and within its range."""
    if x.dtype.kind != "f":
        return
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        row = _first(~np.isfinite(x)) // size
        raise UserError(f"{source}: feature {name!r} has {bad} NaN or infinite value(s) (the first in row {row})")
    beyond = np.abs(x) > FLOAT32_MAX
    huge = int(np.count_nonzero(beyond))
    if huge:
        raise UserError(
            f"{source}: feature {name!r} has {huge} value(s) beyond float32's range (|x| > 3.4e38, the first in row "
            f"{_first(beyond) // size}), infinite where the model computes"
        )
