"""The feature schema of a store, and validation of incoming tables against it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data.errors import NewClassesRefused, UserError


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


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
        return cls(tuple(d["features"]), d["label"], tuple(d["classes"]))

    @classmethod
    def infer(cls, table: pa.Table, label: str, source: str) -> Schema:
        """Take the schema from a first batch: every column but the label is a feature."""
        if label not in table.column_names:
            raise UserError(f"{source}: no label column {label!r}; columns are {', '.join(table.column_names)}")
        features = tuple(c for c in table.column_names if c != label)
        schema = cls(features, label, ())
        schema.check_features(table, source)
        labels = schema.check_labels(table, source)
        classes = tuple(sorted(set(labels)))
        if len(classes) < 2:
            raise UserError(f"{source}: label {label!r} has only one class ({classes[0]!r})")
        return cls(features, label, classes)

    def check_features(self, table: pa.Table, source: str, *, allow_extra: bool = False) -> None:
        """Raise UserError unless every feature is present, numeric and finite.

        Columns that are neither features nor the label are an error unless
        `allow_extra` (prediction input may carry ids and the like).
        """
        if table.num_rows == 0:
            raise UserError(f"{source}: the file has no rows")
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
            if pa.types.is_floating(col.type):
                bad = int(pc.sum(pc.invert(pc.is_finite(col))).as_py() or 0)
                if bad:
                    raise UserError(f"{source}: feature {name!r} has {bad} NaN or infinite value(s)")

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
