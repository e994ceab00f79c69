"""Ingesting labelled batches (Parquet, CSV or JSON Lines) into a store, and reading them back as
rows. A text file is read with the store's column types and kept as the Parquet of its table."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from continual_trainer.data.errors import UserError
from continual_trainer.data.parquet import read_bytes, redact, table_from_bytes, table_to_bytes, text_format
from continual_trainer.data.rows import Rows
from continual_trainer.data.sampling import holdout_mask
from continual_trainer.data.schema import Schema
from continual_trainer.data.storage import Store, sha256


@dataclass(frozen=True)
class IngestResult:
    batch_id: str
    rows: int
    added: bool
    new_classes: tuple = ()


def load_table(uri: str, types: dict[str, pa.DataType] | None = None) -> tuple[bytes, pa.Table]:
    """Read a data file (Parquet, CSV or JSON Lines) into Parquet bytes and a table, with one
    clear error if it is bad. `types`: the Arrow types of the columns a text file's reader should
    not guess (`Schema.text_types`); a text file's bytes come back as the Parquet of its table."""
    data = read_bytes(uri)
    table = table_from_bytes(data, redact(uri), types)
    return (table_to_bytes(table) if text_format(uri) else data), table


def ingest(store: Store, uri: str, *, allow_new_classes: bool = False) -> IngestResult:
    """Validate one data file (Parquet, CSV or JSON Lines) and keep it in the store as a new batch.

    A file the store already holds (same bytes) is a no-op. A file that fails
    validation is copied to quarantine with the reason, and UserError is raised.
    """
    return ingest_bytes(store, redact(uri), read_bytes(uri), allow_new_classes=allow_new_classes)


def ingest_bytes(
    store: Store, source: str, data: bytes, *, allow_new_classes: bool = False, origin: dict | None = None
) -> IngestResult:
    """`ingest` for a file already read; `source` names it in messages and records, `origin` (if
    given) records where its rows came from (e.g. the prediction log)."""
    table, sent = None, data
    if text_format(source):  # kept as the Parquet of its table, read with the store's types
        try:
            table = table_from_bytes(data, source, store.schema.text_types())
        except UserError as exc:
            folder = store.quarantine(os.path.basename(source.rstrip("/")), data, str(exc))
            raise type(exc)(f"{exc} (quarantined in {folder})") from None
        data = table_to_bytes(table)
    existing = store.find_batch(sha256(data))
    if existing:
        return IngestResult(existing, int(store.batch_info(existing)["rows"]), added=False)
    try:
        table = table if table is not None else table_from_bytes(data, source)
        schema = store.schema.validate(table, source, allow_new_classes=allow_new_classes)
    except UserError as exc:
        folder = store.quarantine(os.path.basename(source.rstrip("/")), sent, str(exc))  # the bytes as sent
        raise type(exc)(f"{exc} (quarantined in {folder})") from None
    new_classes = tuple(c for c in schema.classes if c not in store.schema.classes)
    if schema != store.schema:  # new classes or categorical values
        store.grow_schema(schema)
    batch_id, added = store.add_batch(
        data,
        {
            "source": os.path.basename(source),
            "rows": table.num_rows,
            "ingested": dt.datetime.now(dt.timezone.utc).isoformat(),
            "new_classes": list(new_classes),
            **({"origin": origin} if origin else {}),
        },
    )
    return IngestResult(batch_id, table.num_rows, added=added, new_classes=new_classes if added else ())


def batch_rows(store: Store, batch_id: str, order: int, schema: Schema) -> tuple[Rows, Rows]:
    """A stored batch as (train rows, holdout rows), split by the store's fixed holdout."""
    table = table_from_bytes(store.read_batch(batch_id), batch_id)
    return split_rows(table, batch_id, order, schema, store.meta.holdout_fraction)


def split_rows(table: pa.Table, batch_id: str, order: int, schema: Schema, fraction: float) -> tuple[Rows, Rows]:
    """A batch's table as (train rows, holdout rows); the holdout is fixed by the batch id."""
    y = schema.targets(table, batch_id)
    rows = Rows(schema.inputs(table), y, np.full(len(y), order, np.int32))
    mask = holdout_mask(batch_id, len(y), fraction)
    return rows.take(~mask), rows.take(mask)


def load_rows(store: Store, batch_ids: list[str], *, train: bool = True) -> tuple[Rows, Rows]:
    """Several batches as (train rows, holdout rows); `order` is each batch's ingestion order.
    With `train=False` only the holdout rows are kept (the train rows come back empty)."""
    schema = store.schema
    empty = Rows.empty(schema.input_spec(), schema.is_regression)
    if not batch_ids:
        return empty, empty
    position = {b: i for i, b in enumerate(store.batch_ids())}
    trains, holdouts = [], []
    for b in batch_ids:
        rows, holdout = batch_rows(store, b, position[b], schema)
        trains.append(rows if train else empty)
        holdouts.append(holdout)
    return Rows.concat(trains), Rows.concat(holdouts)
