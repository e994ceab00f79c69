"""The feature schema of a store, and validation of incoming tables against it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data.errors import NewClassesRefused, UserError

# Columns `predict` adds to its output: a feature of that name could never be predicted.
OUTPUT_COLUMNS = ("prediction", "probability")
# The largest magnitude the model's float32 arithmetic represents.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


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
        features: feature column names, in model input order.
        label: the label column.
        classes: known class labels, in the order of the model's outputs.
    """

    features: tuple[str, ...]
    label: str
    classes: tuple[Any, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.features:
            raise UserError("the data has no feature columns besides the label")
        if self.label in self.features:
            raise ValueError(f"label {self.label!r} is also listed as a feature")

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict[str, Any]:
        return {"features": list(self.features), "label": self.label, "classes": list(self.classes)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Schema:
        """Read the schema part of store.json; ValueError if it has the wrong shape."""
        features, label, classes = d["features"], d["label"], d["classes"]
        if not (isinstance(features, list) and all(isinstance(f, str) for f in features) and isinstance(label, str)):
            raise ValueError("features must be a list of names and label a name")
        if not isinstance(classes, list):
            raise ValueError("classes must be a list")
        return cls(tuple(features), label, tuple(classes))

    def class_type(self) -> pa.DataType:
        """The Arrow type of the class labels (what `predict` writes as `prediction`)."""
        return pa.array(list(self.classes)).type

    @classmethod
    def infer(cls, table: pa.Table, label: str, source: str) -> Schema:
        """Take the schema from a first batch: every column but the label is a feature."""
        check_unique_columns(table, source)
        if label not in table.column_names:
            raise UserError(f"{source}: no label column {label!r}; columns are {', '.join(table.column_names)}")
        features = tuple(c for c in table.column_names if c != label)
        clash = [c for c in features if c in OUTPUT_COLUMNS]
        if clash:
            raise UserError(
                f"{source}: a feature may not be called {clash[0]!r}: `ctrain predict` writes a column of that name"
            )
        schema = cls(features, label, ())
        schema.check_features(table, source)
        labels = schema.check_labels(table, source)
        classes = tuple(sorted(set(labels)))
        if len(classes) < 2:
            raise UserError(f"{source}: label {label!r} has only one class ({classes[0]!r})")
        _check_looks_like_classes(table.column(label), classes, label, source)
        return cls(features, label, classes)

    def check_features(self, table: pa.Table, source: str, *, allow_extra: bool = False) -> None:
        """Raise UserError unless every feature is present, numeric and finite.

        Columns that are neither features nor the label are an error unless
        `allow_extra` (prediction input may carry ids and the like).
        """
        if table.num_rows == 0:
            raise UserError(f"{source}: the file has no rows")
        check_unique_columns(table, source)
        missing = [c for c in self.features if c not in table.column_names]
        if missing:
            raise UserError(f"{source}: missing feature column(s) {', '.join(missing)}")
        extra = [c for c in table.column_names if c not in self.features and c != self.label]
        if extra and not allow_extra:
            raise UserError(
                f"{source}: column(s) {', '.join(extra)} are not in the store's "
                f"{len(self.features)} features; the model's input width is fixed"
            )
        for name in self.features:
            col = table.column(name)
            if not _is_numeric(col.type):
                raise UserError(f"{source}: feature {name!r} is {col.type}, not numeric")
            if col.null_count:
                raise UserError(f"{source}: feature {name!r} has {col.null_count} missing value(s)")
            if pa.types.is_floating(col.type):  # checked as the model computes: in float32
                x = col.to_numpy()
                bad = int(np.count_nonzero(~np.isfinite(x)))
                if bad:
                    raise UserError(f"{source}: feature {name!r} has {bad} NaN or infinite value(s)")
                huge = int(np.count_nonzero(np.abs(x) > FLOAT32_MAX))
                if huge:
                    raise UserError(
                        f"{source}: feature {name!r} has {huge} value(s) beyond float32's range (|x| > 3.4e38), "
                        "infinite where the model computes"
                    )

    def check_labels(self, table: pa.Table, source: str) -> list[Any]:
        """Return the labels as Python values, raising UserError if any is missing."""
        if self.label not in table.column_names:
            raise UserError(f"{source}: missing label column {self.label!r}")
        col = table.column(self.label)
        if not (_is_numeric(col.type) or pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            raise UserError(f"{source}: label {self.label!r} is {col.type}; use integers or strings")
        values = col.to_pylist()
        if col.null_count or any(isinstance(v, float) and not np.isfinite(v) for v in values):
            raise UserError(f"{source}: label {self.label!r} has missing or NaN values")
        return [_label_key(v) for v in values]

    def unknown_classes(self, labels: list[Any]) -> list[Any]:
        known = set(self.classes)
        return sorted({v for v in labels if v not in known}, key=repr)

    def validate(self, table: pa.Table, source: str, *, allow_new_classes: bool = False) -> Schema:
        """Check a labelled batch; return the schema, grown by new classes if allowed."""
        self.check_features(table, source)
        labels = self.check_labels(table, source)
        new = self.unknown_classes(labels)
        if new and not allow_new_classes:
            raise NewClassesRefused(
                f"{source}: label(s) {', '.join(map(repr, new))} are not among the store's classes "
                f"{list(self.classes)}; to accept them run `ctrain ingest --new-classes`, then update "
                "with a strategy that can learn new classes"
            )
        if not new:
            return self
        try:
            classes = tuple(sorted([*self.classes, *new]))
        except TypeError as exc:
            raise UserError(f"{source}: new labels {new} cannot be ordered with {list(self.classes)}") from exc
        return Schema(self.features, self.label, classes)

    def features_matrix(self, table: pa.Table) -> np.ndarray:
        """The features as a float32 matrix in schema order."""
        cols = [table.column(c).to_numpy().astype(np.float32, copy=False) for c in self.features]
        return np.ascontiguousarray(np.stack(cols, axis=1)) if cols else np.empty((table.num_rows, 0), np.float32)

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


def _check_looks_like_classes(col: pa.ChunkedArray, classes: tuple[Any, ...], label: str, source: str) -> None:
    """Refuse a label that looks like a quantity to predict (regression), not classes."""
    fractional = pa.types.is_floating(col.type) and any(isinstance(c, float) and not c.is_integer() for c in classes)
    many = len(classes) > 20 and len(classes) > 0.5 * len(col)
    if fractional or many:
        why = "fractional values" if fractional else f"{len(classes)} distinct values in {len(col)} rows"
        raise UserError(
            f"{source}: label {label!r} has {why}; it looks like a number to predict (regression), which "
            "ctrain does not do yet: a classification label has a few repeated values"
        )
