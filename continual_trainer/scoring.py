"""Scoring and taking models out: `predict` (a file or a table), the model a version stands
for, and `export` (a `.keras` file or a SavedModel for TensorFlow Serving).

Everything here raises UserError for mistakes a user can make.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import numpy as np
import pyarrow as pa

from continual_trainer.data.batches import load_table
from continual_trainer.data.errors import UserError
from continual_trainer.data.parquet import redact, write_table
from continual_trainer.data.schema import OUTPUT_COLUMNS
from continual_trainer.data.storage import Store, check_output
from continual_trainer.executor import Executor, LocalExecutor


def predict(
    uri: str,
    data_uri: str,
    out_uri: str,
    *,
    version: str | None = None,
    executor: Executor | None = None,
    column: str = "prediction",
) -> dict[str, Any]:
    """Write the rows of `data_uri` plus `prediction` (and `probability` of class 1 for two
    classes; with another `column`, that and `<column>_probability`).

    Columns that are not features, the label included whatever its type, pass through.
    """
    check_output(out_uri, "out", inputs=(data_uri,))
    store = Store.open(uri)
    version = store.resolve(version or "current")  # an unknown version is the user's mistake, found before any work
    _, table = load_table(data_uri, store.schema.text_types())
    source = redact(data_uri)
    out = predict_table(store, table, source, version=version, data_uri=data_uri, executor=executor, column=column)
    write_table(out_uri, out)
    return {"version": version, "rows": out.num_rows, "out": redact(out_uri)}


def predict_table(
    store: Store,
    table: pa.Table,
    source: str,
    *,
    version: str = "current",
    data_uri: str | None = None,
    executor: Executor | None = None,
    column: str = "prediction",
) -> pa.Table:
    """`table` plus `prediction` (and `probability` of class 1 for two classes) by `version`
    (with another `column`, that and `<column>_probability`).

    `data_uri` is where the table was read from, for executors that read their shares of it
    themselves (sharded scoring); without it the table is scored in this process.
    """
    version = store.resolve(version)
    schema = store.schema
    rows = check_scorable(schema, table, source, column)
    if executor is None or data_uri is None:
        executor = LocalExecutor()
    pred = executor.score(store, version, data_uri or source, rows)
    return with_predictions(schema, table, pred, version, source, column)  # the rows as given, predictions beside


def output_columns(column: str = "prediction") -> tuple[str, str]:
    """The columns predictions are written to: `prediction` and `probability`, or for another
    name `<name>` and `<name>_probability`."""
    return OUTPUT_COLUMNS if column == "prediction" else (column, f"{column}_probability")


def check_scorable(schema: Any, table: pa.Table, source: str, column: str = "prediction") -> pa.Table:
    """`table` with its features in the store's types (`Schema.conform`: what converts exactly is
    converted, others pass through); UserError unless every feature is there and usable and no
    column is one predictions are written to."""
    rows = schema.conform(table, source)
    if not column or column in schema.features:
        raise UserError.about("prediction-column", column, "is a feature column; choose another name")
    for name in output_columns(column):
        if name in table.column_names:
            option = "--prediction-column NAME" if column == "prediction" else "another --prediction-column"
            raise UserError(f"{source}: already has a column {name!r}; rename or drop it, or give {option}")
    return rows


def with_predictions(
    schema: Any, table: pa.Table, pred: np.ndarray, version: str, source: str, column: str = "prediction"
) -> pa.Table:
    """`table` plus `prediction` (and `probability` of class 1 for two classes) from `pred`
    (class probabilities, or numbers), or the `output_columns` of another `column`; UserError
    if a row has no finite prediction."""
    bad = int(np.count_nonzero(~np.isfinite(pred.reshape(len(pred), -1)).all(axis=1)))
    if bad:
        raise UserError(
            f"{source}: version {version} gives no finite prediction for {bad} row(s); "
            "their features are far outside what it was trained on"
        )
    name, probability = output_columns(column)
    if schema.is_regression:
        return table.append_column(name, pa.array(pred, pa.float64()))
    classes = list(schema.classes)
    labels = pa.array([classes[i] for i in pred.argmax(axis=1)], type=schema.class_type())
    out = table.append_column(name, labels)
    if schema.n_classes == 2:
        out = out.append_column(probability, pa.array(pred[:, 1], pa.float64()))
    return out


def load_model(uri: str | Store, version: str = "current") -> Any:
    """A stored version as one Keras model (an ensemble combined, see `candidate.as_model`),
    taking the inputs the store feeds (`expected_inputs`)."""
    from continual_trainer.trainer.candidate import as_model
    from continual_trainer.versions import load_candidate

    store = uri if isinstance(uri, Store) else Store.open(uri)
    version = store.resolve(version)
    return as_model(load_candidate(store, version), store.schema.n_classes), version


EXPORT_FORMATS = ("keras", "saved_model")


def export_model(uri: str, out: str, *, version: str = "current", fmt: str | None = None) -> dict[str, Any]:
    """Write a version as one model: a `.keras` file, or a TensorFlow SavedModel in the layout
    TensorFlow Serving polls (`out/<n>/saved_model.pb`, `n` one more than the largest there).

    Nothing is overwritten: an existing `.keras` file is refused, a SavedModel gets a new number.
    """
    fmt = fmt or ("keras" if out.endswith(".keras") else "saved_model")
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"export format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    if "://" in out:
        raise UserError(f"export {redact(out)}: models are exported to a local path")
    if fmt == "keras" and not out.endswith(".keras"):
        raise UserError(f"export {out}: a Keras model file is named *.keras")
    store = Store.open(uri)
    check_output(out, "out")
    if fmt == "keras" and os.path.exists(out):
        raise UserError(f"export {out}: exists; choose a new file name")
    if fmt == "saved_model" and os.path.isfile(out):
        raise UserError(f"export {out}: is a file; a SavedModel is written into a folder")
    model, version = load_model(store, version)
    import tensorflow as tf

    made = fmt == "saved_model" and not os.path.exists(out)
    try:
        return _export(model, version, out, fmt)
    except (OSError, tf.errors.OpError) as exc:  # a full or read-only disk: nothing half-written is left
        reason = exc.strerror if isinstance(exc, OSError) else str(exc.message).rsplit("; ", 1)[-1]
        raise UserError(f"export {out}: {reason or exc}") from None
    finally:  # failed or interrupted: no empty folder of ours is left either
        if made and os.path.isdir(out) and not os.listdir(out):
            os.rmdir(out)


def _export(model: Any, version: str, out: str, fmt: str) -> dict[str, Any]:
    if fmt == "keras":
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        tmp = f"{out}.{os.getpid()}.tmp.keras"
        try:
            model.save(tmp)
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return {"version": version, "format": fmt, "out": out}
    os.makedirs(out, exist_ok=True)
    _remove_dead_exports(out)
    numbers = [int(n) for n in os.listdir(out) if n.isdigit()]
    number = max(numbers, default=0) + 1
    target, tmp = os.path.join(out, str(number)), os.path.join(out, f".{number}.{os.getpid()}.tmp")
    try:
        model.export(tmp, format="tf_saved_model", verbose=False)
        os.rename(tmp, target)  # TensorFlow Serving sees the number only once it is whole
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return {"version": version, "format": fmt, "out": target}


def _remove_dead_exports(folder: str) -> None:
    """Remove the hidden `.N.PID.tmp` folders of exports into `folder` whose process is gone (killed
    mid-export); a live exporter's folder is left alone."""
    import re

    from continual_trainer.data.store.core import pid_alive

    for name in os.listdir(folder):
        found = re.fullmatch(r"\.\d+\.(\d+)\.tmp", name)
        if found and not pid_alive(int(found.group(1))):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
