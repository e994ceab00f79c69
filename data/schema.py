"""The columns of a store, and validation of incoming tables against them.

A feature column is one of three kinds, taken from its Arrow type when the store is
created:
- `numeric`: a scalar integer, float or boolean; the model gets all of them as one
  float32 matrix, the input named `numeric`, in column order (the `grouped` layout), or,
  for a model with one input per column (`keras.Input(shape=(1,), name=column)`, Keras's
  structured-data idiom), each as an input named after it (the `columns` layout, chosen
  when such a model is imported);
- `tensor`: a list of numbers of one fixed size (an image as 784 floats, an embedding
  of 128), shaped as the store records (`--shape image=28,28,1`, else the list's
  length); the model gets a float32 input of that shape named after the column;
- `categorical`: a string or dictionary column; the model gets the strings, an input
  named after the column, and maps them with a vocabulary it carries (values it never
  saw go to its out-of-vocabulary bucket). The store keeps the vocabulary seen so far;
  it grows as batches bring new values.
The store also records each numeric and tensor column's mean and variance over the
first batch, which the default network uses to normalise its inputs.
Each kind is a class in `data.columns` (what it accepts, checks, gives the model and records);
a new kind is one class there.

The task is `classification` (labels are classes) or `regression` (labels are numbers).

Columns that are neither features nor the label (an id, a comment) are *kept*: the store
records name patterns for them (`init --ignore id,comment*`, or every other column after
`init --features ...`); batches may carry such columns, the store keeps them byte for
byte, training ignores them and `predict` passes them through. A DataFrame's index that pandas
wrote into the file (`__index_level_0__`) is always such a column. Any other extra column is
refused, so a renamed or misspelt feature is never silently dropped.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from continual_trainer.data.columns import (
    FLOAT32_MAX,
    Column,
    InputInfo,
    check_column,
    conform_column,
    grouped,
    infer_column,
    is_number,
)
from continual_trainer.data.errors import NewClassesRefused, UserError
from continual_trainer.data.rows import NUMERIC

# Columns `predict` adds to its output: a feature of that name could never be predicted.
OUTPUT_COLUMNS = ("prediction", "probability")
# How numeric columns reach the model: side by side as one `numeric` input, or one input each.
NUMERIC_LAYOUTS = ("grouped", "columns")
TASKS = ("classification", "regression")


def check_unique_columns(table: pa.Table, source: str) -> None:
    """Raise UserError if a column name appears more than once."""
    seen: set[str] = set()
    for name in table.column_names:
        if name in seen:
            raise UserError(f"{source}: column {name!r} appears {table.column_names.count(name)} times")
        seen.add(name)


def _label_key(value: Any) -> Any:
    """Normalise a label for comparison: numpy scalars to Python ones."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class Schema:
    """What every batch of a store must look like.

    Attributes:
        columns: the feature columns, in order (names are accepted and mean numeric).
        label: the label column.
        classes: known class labels, in the order of the model's outputs (classification).
        task: `classification` or `regression`.
        target: a regression label's mean and standard deviation over the first batch: the
            default network predicts in these units, and training measures its squared
            error in them (None: not recorded, or classification).
    """

    columns: tuple[Column, ...]
    label: str
    classes: tuple[Any, ...] = field(default=())
    task: str = "classification"
    target: tuple[float, float] | None = None
    ignore: tuple[str, ...] = ()
    numeric_inputs: str = "grouped"

    def __post_init__(self) -> None:
        if self.numeric_inputs not in NUMERIC_LAYOUTS:
            raise ValueError(f"numeric_inputs must be one of {', '.join(NUMERIC_LAYOUTS)}, got {self.numeric_inputs!r}")
        object.__setattr__(self, "columns", tuple(c if isinstance(c, Column) else Column(c) for c in self.columns))
        if not self.columns:
            raise UserError("the data has no feature columns besides the label")
        if self.label in self.features:
            raise ValueError(f"label {self.label!r} is also listed as a feature")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def is_regression(self) -> bool:
        return self.task == "regression"

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def text_types(self) -> dict[str, pa.DataType]:
        """The Arrow type a CSV or JSON Lines reader gives each column this store knows, instead
        of guessing from the values: numbers as float64, categorical columns as text, the label
        as its classes' type (numbers for regression). Tensors are left to the reader (lists)."""
        out: dict[str, pa.DataType] = {}
        for c in self.columns:
            target = c.type.canonical(c)
            if target is not None and not pa.types.is_fixed_size_list(target):
                out[c.name] = target
        if self.is_regression:
            out[self.label] = pa.float64()
        elif self.classes and all(isinstance(v, bool) for v in self.classes):
            out[self.label] = pa.bool_()
        elif self.classes and all(isinstance(v, int) for v in self.classes):
            out[self.label] = pa.int64()
        elif self.classes and all(isinstance(v, str) for v in self.classes):
            out[self.label] = pa.string()
        return out

    # -- JSON ----------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "columns": [c.to_json() for c in self.columns],
            "label": self.label,
            "classes": list(self.classes),
            "task": self.task,
            **({"target": list(self.target)} if self.target else {}),
            **({"ignore": list(self.ignore)} if self.ignore else {}),
            **({"numeric_inputs": self.numeric_inputs} if self.numeric_inputs != "grouped" else {}),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Schema:
        """Read the schema part of store.json; ValueError if it has the wrong shape."""
        columns, label, classes = d.get("columns", d["features"]), d["label"], d["classes"]
        if not isinstance(columns, list) or not isinstance(label, str):
            raise ValueError("features must be a list of columns and label a name")
        if not isinstance(classes, list):
            raise ValueError("classes must be a list")
        target = d.get("target")
        if target is not None and not (isinstance(target, list) and len(target) == 2):
            raise ValueError("target must be [mean, std]")
        ignore = d.get("ignore", [])
        if not isinstance(ignore, list) or not all(isinstance(p, str) for p in ignore):
            raise ValueError("ignore must be a list of column name patterns")
        return cls(
            tuple(Column.from_json(c) for c in columns),
            label,
            tuple(classes),
            str(d.get("task", TASKS[0])),
            (float(target[0]), float(target[1])) if target else None,
            tuple(ignore),
            str(d.get("numeric_inputs", "grouped")),
        )

    # -- what a model sees --------------------------------------------------------------------------

    def input_spec(self) -> dict[str, InputInfo]:
        """The model inputs this schema gives, by name (see the module's docstring)."""
        spec: dict[str, InputInfo] = {}
        numeric = grouped(self.columns)
        if numeric and self.numeric_inputs == "columns":
            spec.update((c.name, c.type.input_info(c)) for c in numeric)
        elif numeric:
            known = all(c.mean is not None for c in numeric)
            spec[NUMERIC] = InputInfo(
                (len(numeric),),
                "float32",
                mean=tuple(float(c.mean) for c in numeric) if known else None,  # type: ignore[arg-type]
                variance=tuple(float(c.variance) for c in numeric) if known else None,  # type: ignore[arg-type]
                columns=tuple(c.name for c in numeric),
            )
        spec.update((c.name, c.type.input_info(c)) for c in self.columns if not c.type.grouped)
        return spec

    def inputs(self, table: pa.Table) -> dict[str, np.ndarray]:
        """The features of a (checked) table as model inputs, by input name."""
        out: dict[str, np.ndarray] = {}
        numeric = grouped(self.columns)
        cols = [c.type.to_input(table.column(c.name), c) for c in numeric]
        if numeric and self.numeric_inputs == "columns":
            out.update((c.name, col) for c, col in zip(numeric, cols, strict=True))
        elif numeric:
            out[NUMERIC] = np.ascontiguousarray(np.stack(cols, axis=1))
        out.update((c.name, c.type.to_input(table.column(c.name), c)) for c in self.columns if not c.type.grouped)
        return out

    def inputs_of(self, typed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model inputs of rows already typed (`typed_rows`), by input name: the same arrays
        `inputs` gives for the same values."""
        out: dict[str, np.ndarray] = {}
        numeric = grouped(self.columns)
        if numeric and self.numeric_inputs == "columns":
            m = typed[NUMERIC]
            out.update((c.name, np.ascontiguousarray(m[:, i], np.float32)) for i, c in enumerate(numeric))
        elif numeric:
            out[NUMERIC] = typed[NUMERIC].astype(np.float32)
        for c in self.columns:
            if c.type.grouped:
                continue
            out[c.name] = c.type.typed_input(typed[c.name], c)
        return out

    def conform(self, table: pa.Table, source: str) -> pa.Table:
        """Rows to score, checked (every feature present and usable; other columns pass) and each
        feature held in its kind's canonical type (`data.columns.conform_column`: what converts
        exactly is converted, anything else is a UserError naming the column and row). `ctrain
        predict` and `ctrain serve` read rows through this one rule."""
        self._check_present(table, source)
        for c in self.columns:
            i = table.column_names.index(c.name)
            table = table.set_column(i, c.name, conform_column(table.column(i), c, source))
        return table

    def typed_rows(self, table: pa.Table) -> dict[str, np.ndarray]:
        """A conformed table's features as NumPy arrays in their canonical form: the grouped
        numeric columns side by side as one float64 matrix (the input `numeric`), a tensor as
        float64 rows of its size, a categorical column as strings (objects)."""
        out: dict[str, np.ndarray] = {}
        numeric = grouped(self.columns)
        if numeric:
            out[NUMERIC] = np.stack([table.column(c.name).to_numpy() for c in numeric], axis=1)
        for c in self.columns:
            if c.type.grouped:
                continue
            out[c.name] = c.type.typed(table.column(c.name), c)
        return out

    def typed_table(self, typed: Mapping[str, np.ndarray]) -> pa.Table:
        """Typed rows (`typed_rows`) as a table of the features in their canonical types: the
        prediction log's feature columns."""
        numeric = grouped(self.columns)
        arrays: dict[str, pa.Array] = {}
        for c in self.columns:
            if c.type.grouped:
                arrays[c.name] = pa.array(typed[NUMERIC][:, numeric.index(c)], c.type.typed_type(c))
            else:
                arrays[c.name] = c.type.typed_arrow(typed[c.name], c)
        return pa.table(arrays)

    def canonical_schema(self) -> pa.Schema:
        """The features' Arrow types once typed (see `conform`; the prediction log's)."""
        return pa.schema([(c.name, c.type.typed_type(c)) for c in self.columns])

    def features_matrix(self, table: pa.Table) -> np.ndarray:
        """The scalar numeric features as a float32 matrix (stores of numeric columns only)."""
        return self.inputs(table)[NUMERIC]

    # -- checking tables ------------------------------------------------------------------------------

    @classmethod
    def infer(
        cls,
        table: pa.Table,
        label: str,
        source: str,
        *,
        shapes: Mapping[str, tuple[int, ...]] | None = None,
        task: str | None = None,
        features: Sequence[str] | None = None,
        ignore: Sequence[str] | None = None,
    ) -> Schema:
        """Take the schema from a first batch: every column but the label is a feature, unless
        `features` or `ignore` say otherwise.

        Args:
            shapes: tensor shapes by column (`--shape`); otherwise a list column's length.
            task: `classification` or `regression`; by default regression for a float label
                with fractional values or more than 20 distinct ones, classification otherwise.
            features: the feature columns (names or patterns such as `x*`); every other
                column is kept and ignored, in this batch and later ones.
            ignore: columns (names or patterns) to keep but not use; later batches may carry
                them or not.
        """
        check_unique_columns(table, source)
        if label not in table.column_names:
            raise UserError(f"{source}: no label column {label!r}; columns are {', '.join(table.column_names)}")
        if features and ignore:
            raise UserError("features and ignore: give one of them")
        others = [c for c in table.column_names if c != label and not _pandas_index(c)]
        if features:
            names = _matching(others, features, "features", source)
            kept: tuple[str, ...] = ("*",)
        else:
            kept = tuple(ignore or ())
            skipped = _matching(others, kept, "ignore", source) if kept else []
            names = [c for c in others if c not in skipped]
        if not names:
            raise UserError(f"{source}: no feature columns are left besides the label")
        clash = [c for c in names if c in OUTPUT_COLUMNS]
        if clash:
            raise UserError(
                f"{source}: a feature may not be called {clash[0]!r}: `ctrain predict` writes a column of that name"
            )
        shapes = dict(shapes or {})
        unknown = sorted(set(shapes) - set(names))
        if unknown:
            raise UserError.about("shapes", unknown[0], f"no feature column of that name in {source}")
        columns = [infer_column(table, name, shapes.pop(name, None), source) for name in names]
        for c in columns:
            if c.name == NUMERIC and not c.type.grouped:
                raise UserError(f"{source}: a {c.kind} column may not be called {NUMERIC!r} (the numeric input's name)")
        schema = cls(tuple(columns), label, (), task or "classification", ignore=kept)
        schema.check_features(table, source)
        for c in columns:
            c.type.first_batch(table.column(c.name), c, source)
        schema = schema.with_stats(table)._grow_vocabularies(table)
        if task is None and _looks_like_regression(table.column(label)):
            schema = replace(schema, task="regression")
        if schema.is_regression:
            y = schema.label_values(table, source).astype(np.float64)
            return replace(schema, target=(float(y.mean()), float(y.std()) if y.std() > 0 else 1.0))
        labels = schema.check_labels(table, source)
        classes = tuple(sorted(set(labels)))
        if len(classes) < 2:
            raise UserError(f"{source}: label {label!r} has only one class ({classes[0]!r})")
        if len(classes) > 20 and len(classes) > 0.5 * len(labels):
            raise UserError(
                f"{source}: label {label!r} has {len(classes)} distinct values in {len(labels)} rows; "
                "to predict it as a number, give --task regression"
            )
        return replace(schema, classes=classes)

    def with_stats(self, table: pa.Table) -> Schema:
        """This schema with the mean and variance over `table` of each column whose kind has
        statistics (numeric and tensor columns)."""
        columns = []
        for c in self.columns:
            if c.type.statistics:
                x = c.type.values(c.type.to_input(table.column(c.name), c))
                c = replace(c, mean=float(x.mean()), variance=float(x.var()))
            columns.append(c)
        return replace(self, columns=tuple(columns))

    def check_features(self, table: pa.Table, source: str, *, allow_extra: bool = False) -> None:
        """Raise UserError unless every feature is present, of its kind, and usable.

        Columns that are neither features nor the label are an error unless
        `allow_extra` (prediction input may carry ids and the like).
        """
        self._check_present(table, source)
        extra = [c for c in table.column_names if c not in self.features and c != self.label and not self.kept(c)]
        if extra and not allow_extra:
            raise UserError(
                f"{source}: column(s) {', '.join(extra)} are not in the store's "
                f"{len(self.features)} features; the model's input width is fixed (to keep such "
                "columns, create the store with --ignore or --features)"
            )
        for c in self.columns:
            check_column(table.column(c.name), c, source)

    def _check_present(self, table: pa.Table, source: str) -> None:
        """UserError unless the table has rows, unique column names and every feature."""
        if table.num_rows == 0:
            raise UserError(f"{source}: the file has no rows")
        check_unique_columns(table, source)
        missing = [c for c in self.features if c not in table.column_names]
        if missing:
            raise UserError(f"{source}: missing feature column(s) {', '.join(missing)}")

    def kept(self, column: str) -> bool:
        """Whether `column` is one the store keeps but does not train on (see the module docstring)."""
        return (
            column != self.label
            and column not in self.features
            and (_pandas_index(column) or any(fnmatch.fnmatchcase(column, p) for p in self.ignore))
        )

    def check_labels(self, table: pa.Table, source: str) -> list[Any]:
        """Return the labels as Python values, raising UserError if any is missing."""
        if self.label not in table.column_names:
            raise UserError(f"{source}: missing label column {self.label!r}")
        col = table.column(self.label)
        if not (is_number(col.type) or pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            raise UserError(f"{source}: label {self.label!r} is {col.type}; use integers or strings")
        if pa.types.is_boolean(col.type) and self.classes and not all(isinstance(c, bool) for c in self.classes):
            raise UserError(
                f"{source}: label {self.label!r} holds true/false, but the store's classes are {list(self.classes)}; "
                "write the labels as those classes"
            )
        values = col.to_pylist()
        if col.null_count or any(isinstance(v, float) and not np.isfinite(v) for v in values):
            raise UserError(f"{source}: label {self.label!r} has missing or NaN values")
        return [_label_key(v) for v in values]

    def label_values(self, table: pa.Table, source: str) -> np.ndarray:
        """A regression label as float32 numbers, raising UserError if any is missing or not finite."""
        if self.label not in table.column_names:
            raise UserError(f"{source}: missing label column {self.label!r}")
        col = table.column(self.label)
        if not is_number(col.type) or pa.types.is_boolean(col.type):
            raise UserError(f"{source}: label {self.label!r} is {col.type}; a regression label is a number")
        y = col.to_numpy(zero_copy_only=False).astype(np.float64)
        bad = int(np.count_nonzero(~np.isfinite(y) | (np.abs(y) > FLOAT32_MAX)))
        if col.null_count or bad:
            raise UserError(f"{source}: label {self.label!r} has {col.null_count + bad} missing or non-finite values")
        return y.astype(np.float32)

    def unknown_classes(self, labels: list[Any]) -> list[Any]:
        known = set(self.classes)
        return sorted({v for v in labels if v not in known}, key=repr)

    def validate(self, table: pa.Table, source: str, *, allow_new_classes: bool = False) -> Schema:
        """Check a labelled batch; return the schema, grown by new categorical values and, if
        allowed, new classes."""
        self.check_features(table, source)
        grown = self._grow_vocabularies(table)
        if self.is_regression:
            self.label_values(table, source)
            return grown
        labels = self.check_labels(table, source)
        new = self.unknown_classes(labels)
        if new and not allow_new_classes:
            raise NewClassesRefused(
                f"{source}: label(s) {', '.join(map(repr, new))} are not among the store's classes "
                f"{list(self.classes)}; to accept them run `ctrain ingest --new-classes`, then update "
                "with a strategy that can learn new classes"
            )
        if not new:
            return grown
        try:
            classes = tuple(sorted([*self.classes, *new]))
        except TypeError as exc:
            raise UserError(f"{source}: new labels {new} cannot be ordered with {list(self.classes)}") from exc
        return replace(grown, classes=classes)

    def merged(self, other: Schema) -> Schema:
        """This schema grown by `other`'s new classes and vocabulary values (never shrunk or reordered)."""
        columns = []
        for c in self.columns:
            o = other.column(c.name) if c.name in other.features else c
            extra = tuple(v for v in o.vocabulary if v not in set(c.vocabulary))
            columns.append(replace(c, vocabulary=c.vocabulary + extra))
        return replace(self, columns=tuple(columns), classes=tuple(sorted(set(self.classes) | set(other.classes))))

    def _grow_vocabularies(self, table: pa.Table) -> Schema:
        return replace(self, columns=tuple(c.type.grown(c, table.column(c.name)) for c in self.columns))

    def label_indices(self, table: pa.Table) -> np.ndarray:
        """The labels as int32 indices into `classes`."""
        col = table.column(self.label)
        try:
            index = pc.index_in(col, value_set=pa.array(list(self.classes)).cast(col.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            index = None
        if index is None or index.null_count:
            labels = [_label_key(v) for v in col.to_pylist()]
            unknown = self.unknown_classes(labels)
            raise UserError(f"label(s) {unknown} are not among the classes {list(self.classes)}")
        return index.to_numpy().astype(np.int32)

    def targets(self, table: pa.Table, source: str = "") -> np.ndarray:
        """What the model learns: class indices (classification) or float32 numbers (regression)."""
        return self.label_values(table, source) if self.is_regression else self.label_indices(table)

    def class_type(self) -> pa.DataType:
        """The Arrow type of `prediction`: the class labels' type, or float64 for regression."""
        return pa.float64() if self.is_regression else pa.array(list(self.classes)).type


def _looks_like_regression(col: pa.ChunkedArray) -> bool:
    """A float label is a number to predict, unless it holds a few whole values (classes written
    as floats, as pandas does after missing values)."""
    if not pa.types.is_floating(col.type):
        return False
    y = col.to_numpy(zero_copy_only=False)
    y = y[np.isfinite(y)]
    return bool(len(y)) and (not np.all(y == np.round(y)) or len(np.unique(y)) > 20)


def _matching(columns: list[str], patterns: Sequence[str], option: str, source: str) -> list[str]:
    """The columns that names or patterns select, in table order; UserError for one that selects none."""
    for p in patterns:
        if not any(fnmatch.fnmatchcase(c, p) for c in columns):
            raise UserError.about(option, p, f"no column of {source} matches (columns: {', '.join(columns)})")
    return [c for c in columns if any(fnmatch.fnmatchcase(c, p) for p in patterns)]


def _pandas_index(column: str) -> bool:
    """A DataFrame's index that `DataFrame.to_parquet` wrote as a column (`__index_level_0__`):
    row labels, never a feature; kept and passed through like an ignored column."""
    return fnmatch.fnmatchcase(column, "__index_level_*__")
