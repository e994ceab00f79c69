"""The prediction log: what `ctrain serve` answered, kept in the store; and delayed labels
joined to it (`ctrain label`).

Every answered request's rows (the features as typed at the edge, `serve.edge`), a key per
row, the request id, the time, the version and its predictions (and a shadow candidate's) are
handed to a background thread through a queue bounded in rows: the request path appends to a
deque (atomic, no lock) and never waits; when the queue is full the rows are dropped and
counted. The thread builds the Arrow columns of many requests at once and writes one Parquet
file into the store when it holds `roll_rows` rows or its oldest row is `roll_seconds` old, and
on shutdown.

Every file has one schema, `log_schema(store schema)`: the features in their canonical types
(`Schema.canonical_schema`) and the log's own columns. Rows are typed before they are answered,
so a row answered 200 is a row the writer can write. Files written before that rule (whose
columns may hold other types) are read through the same schema: what converts is converted, a
file that does not is skipped with one warning and counted (`LogReader.skipped`), so `drift
--served`, `label` and the stream never fail on a log file.

Labels arrive later as a Parquet file of keys and labels. `join_labels` finds each key's logged
row (the newest if a key was served twice), pairs the features as served with the label as
arrived, and ingests them as a new batch whose record names where it came from: the log, the
versions that served it, its time range and each version's live accuracy (or RMSE) on it.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from continual_trainer.data import failpoints
from continual_trainer.data.batches import ingest_bytes, load_table
from continual_trainer.data.errors import UserError
from continual_trainer.data.parquet import one_line, redact
from continual_trainer.data.schema import Schema
from continual_trainer.data.storage import Store

log = logging.getLogger(__name__)

KEY = "ctrain_id"
REQUEST = "ctrain_request"
TIME = "ctrain_time"
VERSION = "ctrain_version"
PREDICTION = "ctrain_prediction"
SHADOW_VERSION = "ctrain_shadow_version"
SHADOW_PREDICTION = "ctrain_shadow_prediction"
TIME_TYPE = pa.timestamp("ms", tz="UTC")
LOG_COLUMNS = (KEY, REQUEST, TIME, VERSION, PREDICTION, SHADOW_VERSION, SHADOW_PREDICTION)


def log_schema(schema: Schema) -> pa.Schema:
    """The one schema of every prediction log file of a store of `schema`."""
    kind = schema.class_type()
    own = [(KEY, pa.string()), (REQUEST, pa.string()), (TIME, TIME_TYPE), (VERSION, pa.string()),
           (PREDICTION, kind), (SHADOW_VERSION, pa.string()), (SHADOW_PREDICTION, kind)]  # fmt: skip
    return pa.schema([*schema.canonical_schema(), *own])


@dataclass(frozen=True)
class Logged:
    """One answered request, as the log receives it (made into columns on the writer thread).

    Attributes:
        typed: the features, typed (`Schema.typed_rows`).
        n: rows.
        keys: each row's key, or None where the row has none of its own (then it is keyed
            `<request>-<row>`); None for no keys at all.
        predictions: class indices into the schema's classes, or the predicted numbers.
        shadow_predictions: the shadow candidate's, the same way (None: no shadow scored them).
    """

    typed: dict[str, np.ndarray]
    n: int
    keys: list[str | None] | None
    request: str
    when: float
    version: str
    predictions: np.ndarray
    shadow_version: str | None = None
    shadow_predictions: np.ndarray | None = None


Counted = Callable[[str, int], None]


class PredictionLog:
    """The writer thread and its bounded queue.

    Args:
        store: where the files go (`predictions/log/`).
        schema: the store's schema (feature columns and the prediction's type).
        sample: the fraction of rows kept (each row drawn alone).
        roll_rows, roll_seconds: a file is written when this many rows wait, or the oldest
            waiting row is this old.
        max_queued: rows the queue holds; beyond it rows are dropped and counted.
        counted: told of rows `written`, `dropped` or `failed` (the server's metrics), and of
            the rows `waiting` for the next file.
    """

    def __init__(
        self,
        store: Store,
        schema: Schema,
        sample: float = 1.0,
        roll_rows: int = 50_000,
        roll_seconds: float = 60.0,
        max_queued: int = 200_000,
        counted: Counted | None = None,
    ) -> None:
        self.store, self.schema, self.sample = store, schema, sample
        self.roll_rows, self.roll_seconds, self.max_queued = roll_rows, roll_seconds, max_queued
        self.counted = counted
        self.logged = self.dropped = self.failed = self.files = 0
        self.waiting = 0  # rows held by the writer for its next file
        self._queue: deque[Logged] = deque()
        self._added = self._taken = 0  # rows appended by the request path, taken by the writer
        self._rng = np.random.default_rng()
        self._text = [f.name for f in schema.canonical_schema() if pa.types.is_string(f.type)]  # categorical
        self._tensors = {f.name for f in schema.canonical_schema() if pa.types.is_fixed_size_list(f.type)}
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ctrain-prediction-log", daemon=True)
        self._thread.start()

    def add(self, item: Logged) -> None:
        """Queue a request's rows; never blocks or locks; drops and counts them if the queue is full."""
        if self._closing.is_set() or self._added - self._taken + item.n > self.max_queued:
            self.dropped += item.n
            if self.counted is not None:
                self.counted("dropped", item.n)
            return
        self._queue.append(item)
        self._added += item.n

    def close(self, timeout: float = 30.0) -> None:
        """Write what waits, then stop the thread."""
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        held: list[pa.Table] = []  # the next file's rows, made into columns as they arrive
        rows, since = 0, 0.0
        while True:
            closing = self._closing.is_set()
            items = []
            while self._queue:
                items.append(self._queue.popleft())
            if items:
                n = sum(item.n for item in items)
                self._taken += n
                if not held:
                    since = time.monotonic()
                try:
                    held.append(self.table(items))
                    rows += n
                except (pa.ArrowException, ValueError) as exc:  # cannot happen for rows typed at the edge
                    self._fail(n, exc)
            self.waiting = rows
            if self.counted is not None:
                self.counted("waiting", rows)
            if held and (closing or rows >= self.roll_rows or time.monotonic() - since >= self.roll_seconds):
                self._flush(held, rows)
                held, rows = [], 0
                self.waiting = 0
            if closing and not self._queue:
                if self.counted is not None:
                    self.counted("waiting", 0)
                return
            self._wake.wait(0.05)  # the request path never signals: the writer looks 20 times a second
            self._wake.clear()

    def table(self, items: list[Logged]) -> pa.Table:
        """The log's rows for `items`, in `log_schema`, sampled; built column by column (no loop
        over rows in Python but for keys a client gave)."""
        schema = self.schema
        sizes = np.array([item.n for item in items])
        n = int(sizes.sum())
        which = pa.array(np.repeat(np.arange(len(items), dtype=np.int32), sizes))  # each row's request
        starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
        requests = pa.array([item.request for item in items], pa.string()).take(which)
        keys = pc.binary_join_element_wise(requests, pc.cast(pa.array(np.arange(n) - starts), pa.string()), "-")
        if any(item.keys is not None for item in items):  # a client's keys where it gave them
            given = pa.array([k for item in items for k in (item.keys or [None] * item.n)], pa.string())
            keys = pc.if_else(given.is_valid(), given, keys)
        typed = {k: np.concatenate([item.typed[k] for item in items]) for k in items[0].typed}
        table = schema.typed_table(typed)
        own = {
            KEY: keys,
            REQUEST: requests,
            TIME: pa.array(
                np.repeat(np.array([int(item.when * 1000) for item in items], "datetime64[ms]"), sizes), TIME_TYPE
            ),
            VERSION: pa.array([item.version for item in items], pa.string()).take(which),
            PREDICTION: _labels(schema, [item.predictions for item in items], sizes),
            SHADOW_VERSION: pa.array([item.shadow_version for item in items], pa.string()).take(which),
            SHADOW_PREDICTION: _labels(schema, [item.shadow_predictions for item in items], sizes),
        }
        for name, values in own.items():
            table = table.append_column(name, values)
        table = table.cast(log_schema(schema))
        if self.sample < 1.0:
            table = table.filter(pa.array(self._rng.random(n) < self.sample))
        return table

    def _flush(self, held: list[pa.Table], rows: int) -> None:
        try:
            table = pa.concat_tables(held)
            sink = io.BytesIO()
            # dictionaries only where few values repeat; statistics only for time (row groups skipped by it)
            few = [VERSION, SHADOW_VERSION, *self._text]
            compression = {
                c: "none" if c in self._tensors else "snappy" for c in table.column_names
            }  # floats do not shrink
            pq.write_table(table, sink, compression=compression, use_dictionary=few, write_statistics=[TIME])
            if table.num_rows:
                self.store.write_prediction_log(sink.getvalue())
        except (UserError, OSError, pa.ArrowException, ValueError) as exc:  # a full or read-only store: serving goes on
            self._fail(rows, exc)
            return
        self.logged += table.num_rows
        self.files += 1
        if self.counted is not None:
            self.counted("written", table.num_rows)

    def _fail(self, rows: int, exc: Exception) -> None:
        self.failed += rows
        if self.counted is not None:
            self.counted("failed", rows)
        log.error("%s rows of the prediction log could not be written (%s)", f"{rows:,}", exc)


def _labels(schema: Schema, parts: list[np.ndarray | None], sizes: np.ndarray) -> pa.Array:
    """Predictions (class labels, or numbers) as a prediction column of the log; nulls for the
    requests whose part is None."""
    kind = schema.class_type()
    if all(part is not None for part in parts):
        return pa.array(np.concatenate(parts), kind)  # type: ignore[arg-type]
    chunks = [
        pa.nulls(int(n), kind) if part is None else pa.array(part, kind) for part, n in zip(parts, sizes, strict=True)
    ]
    return pa.concat_arrays(chunks)


class LogReader:
    """The prediction log read through one schema (`log_schema`): files written with other types
    are converted; a file that cannot be read or converted is skipped with one warning and
    counted in `skipped`."""

    def __init__(self, store: Store, warn: bool = True) -> None:
        self.store = store
        self.schema = log_schema(store.schema)
        self.skipped: list[str] = []
        self.warn = warn

    def file(self, name: str, columns: list[str] | None = None) -> pa.Table | None:
        """One file's rows (of `columns`), in the log's schema; None if it vanished or is skipped."""
        try:
            table = pq.read_table(io.BytesIO(self.store.read_prediction_log(name)), columns=columns)
            return _unified(
                table, self.schema if columns is None else pa.schema([self.schema.field(c) for c in columns])
            )
        except FileNotFoundError:
            return None
        except (pa.ArrowException, OSError, KeyError, ValueError) as exc:
            if name not in self.skipped:
                self.skipped.append(name)
                if self.warn:
                    log.warning("prediction log file %s is unreadable (%s); skipped", name, str(exc).splitlines()[0])
            return None

    def read(self, columns: list[str] | None = None, names: list[str] | None = None) -> pa.Table | None:
        """The whole log (or some of its columns; or the files `names`), oldest first; None if empty."""
        tables = [t for n in (self.store.prediction_logs() if names is None else names)
                  if (t := self.file(n, columns)) is not None]  # fmt: skip
        return pa.concat_tables(tables) if tables else None

    def served_rows(self, after: float | None = None, names: list[str] | None = None) -> pa.Table | None:
        """The logged rows' features and times (those served after `after`, seconds since the
        epoch; of the log files `names`), oldest first; None if there are none."""
        table = self.read([*self.store.schema.features, TIME], names)
        if table is not None and after is not None:
            table = table.filter(pc.greater(table.column(TIME), pa.scalar(int(after * 1000), TIME_TYPE)))
        return table if table is not None and table.num_rows else None


def _unified(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` as `schema`: each column converted (nulls where a column is missing, extra columns
    dropped); ValueError or an Arrow error if a column does not convert."""
    columns = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            if pa.types.is_dictionary(col.type):
                col = col.cast(col.type.value_type)
            columns.append(col if col.type == f.type else col.cast(f.type))
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def read_log(store: Store, columns: list[str] | None = None, names: list[str] | None = None) -> pa.Table | None:
    """The whole prediction log (or some of its columns; or the files `names`), oldest first,
    in one schema; None if it is empty."""
    return LogReader(store).read(columns, names)


def served_rows(store: Store, after: float | None = None, names: list[str] | None = None) -> pa.Table | None:
    """The logged rows' features and times (see `LogReader.served_rows`)."""
    return LogReader(store).served_rows(after, names)


@dataclass
class Labelled:
    """What `join_labels` did: counts, the batch it made, and live metrics of the versions that
    served the matched rows (and of shadow candidates)."""

    labels: int
    matched: int
    unknown: int
    duplicated: int
    late: int
    batch: str | None = None
    added: bool = False
    versions: list[str] = field(default_factory=list)
    live: dict[str, dict[str, Any]] = field(default_factory=dict)
    shadow: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _plain(value: Any) -> Any:
    """A label or prediction fit for comparison: integral floats as ints, NumPy scalars as Python's."""
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _metric(schema: Schema, predicted: list[Any], truth: list[Any]) -> dict[str, Any]:
    rows = [(p, t) for p, t in zip(predicted, truth, strict=True) if p is not None]
    if not rows:
        return {"rows": 0}
    if schema.is_regression:
        err = np.array([float(p) - float(t) for p, t in rows])
        return {"rows": len(rows), "rmse": round(float(np.sqrt(np.mean(err**2))), 6)}
    right = sum(_plain(p) == _plain(t) for p, t in rows)
    return {"rows": len(rows), "accuracy": round(right / len(rows), 6)}


def join_labels(
    store: Store,
    data: str | pa.Table,
    key: str = "id",
    label: str | None = None,
    late_after: float = 7 * 86400.0,
    source: str | None = None,
    check: Callable[[Labelled], None] | None = None,
) -> Labelled:
    """Join the labels in `data` (a Parquet file or a table with `key` and `label` columns;
    `label` defaults to the store's label) to the prediction log and ingest the matched rows as a
    new batch. Keys already labelled, or repeated in the file, count as duplicated (the first is
    kept); keys the log does not hold as unknown; matched rows logged more than `late_after`
    seconds ago as late (they are kept: a label is a label). `source` names a table in messages.
    `check(result)` runs once the join is known and before anything is written: whatever it
    raises leaves the store as it was (a retry joins again)."""
    source = data if isinstance(data, str) else source or "labels"
    table = load_table(data, store.schema.text_types())[1] if isinstance(data, str) else data
    source = redact(source)
    schema = store.schema
    label = label or schema.label
    for name, what in ((key, "--key"), (label, "--label")):
        if name not in table.column_names:
            raise UserError(f"{source}: no column {name!r} ({what}); it has {', '.join(table.column_names)}")
    if table.num_rows == 0:
        raise UserError(f"{source}: the file has no rows")
    keys = _keys(table.column(key), key, source)
    truth = table.column(label).to_pylist()
    with store.lock("labels"):
        done = _labelled_keys(store)
        first: dict[str, int] = {}
        duplicated = 0
        for i, k in enumerate(keys):
            if k in first or k in done:
                duplicated += 1
            else:
                first[k] = i
        matched = _matched_rows(store, pa.array(list(first), pa.string())) if first else None
        n = 0 if matched is None else matched.num_rows
        result = Labelled(labels=len(keys), matched=n, unknown=len(first) - n, duplicated=duplicated, late=0)
        if matched is None or n == 0:
            return result
        order = [first[k] for k in matched.column(KEY).to_pylist()]
        arrived = [truth[i] for i in order]
        now = time.time() * 1000
        served_ms = pc.cast(matched.column(TIME), pa.int64()).to_numpy()
        result.late = int(np.count_nonzero(now - served_ms > late_after * 1000))
        result.versions = sorted(set(matched.column(VERSION).to_pylist()))
        result.live, result.shadow = _live(schema, matched, arrived)
        batch = matched.select(list(schema.features)).append_column(
            schema.label, pa.array(arrived, table.column(label).type)
        )
        sink = io.BytesIO()
        pq.write_table(batch, sink)
        times = matched.column(TIME)
        origin = {
            "kind": "prediction-log",
            "labels": source.rsplit("/", 1)[-1],
            "versions": result.versions,
            "from": pc.min(times).as_py().isoformat(),
            "to": pc.max(times).as_py().isoformat(),
            "live": result.live,
            "shadow": result.shadow,
        }
        if check is not None:
            check(result)
        failpoints.reached("label.before-commit")
        ingested = ingest_bytes(store, f"{source.rsplit('/', 1)[-1]} joined to the prediction log",
                                sink.getvalue(), origin=origin)  # fmt: skip
        result.batch, result.added = ingested.batch_id, ingested.added
        keys_sink = io.BytesIO()
        pq.write_table(pa.table({KEY: matched.column(KEY)}), keys_sink)
        store.record_labelled(ingested.batch_id, keys_sink.getvalue())
    return result


def _keys(col: pa.ChunkedArray, key: str, source: str) -> list[str]:
    """A label file's keys as text; UserError for a column that cannot hold keys (lists,
    structs, bytes that are not UTF-8) or a missing key."""
    kind = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)):
        raise UserError(f"{source}: key column {key!r} is {col.type}; keys are text or integers")
    try:
        keys = pc.cast(col.cast(kind) if kind is not col.type else col, pa.string()).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise UserError(f"{source}: key column {key!r} cannot be read as text ({one_line(str(exc))})") from None
    if any(k is None for k in keys):
        raise UserError(f"{source}: column {key!r} has missing keys")
    return keys


def _labelled_keys(store: Store) -> set[str]:
    done: set[str] = set()
    for data in store.labelled():
        try:
            done.update(pq.read_table(io.BytesIO(data), columns=[KEY]).column(KEY).to_pylist())
        except (pa.ArrowException, KeyError) as exc:
            log.warning("a record of labelled keys is unreadable (%s); skipped", exc)
    return done


def _matched_rows(store: Store, wanted: pa.Array) -> pa.Table | None:
    """The logged rows whose key is in `wanted`, the newest per key, read file by file."""
    reader = LogReader(store)
    parts = []
    for name in store.prediction_logs():
        ids = reader.file(name, [KEY])
        if ids is None:
            continue
        mask = pc.is_in(ids.column(KEY), value_set=wanted)
        if pc.any(mask).as_py():
            rows = reader.file(name)
            if rows is not None:
                parts.append(rows.filter(mask))
    if not parts:
        return None
    rows = pa.concat_tables(parts)
    newest: dict[str, int] = {}
    for i, k in enumerate(rows.column(KEY).to_pylist()):
        newest[k] = i  # files are oldest first: the last seen is the newest
    return rows.take(sorted(newest.values()))


def _live(schema: Schema, rows: pa.Table, truth: list[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each serving version's and each shadow candidate's metric on the labelled rows, and the
    shadow's agreement with what was served."""
    live: dict[str, Any] = {}
    shadow: dict[str, Any] = {}
    versions = rows.column(VERSION).to_pylist()
    predicted = rows.column(PREDICTION).to_pylist()
    shadows = rows.column(SHADOW_VERSION).to_pylist()
    shadow_predicted = rows.column(SHADOW_PREDICTION).to_pylist()
    for v in sorted(set(versions)):
        idx = [i for i, x in enumerate(versions) if x == v]
        live[v] = _metric(schema, [predicted[i] for i in idx], [truth[i] for i in idx])
    for v in sorted({s for s in shadows if s is not None}):
        idx = [i for i, x in enumerate(shadows) if x == v]
        entry = _metric(schema, [shadow_predicted[i] for i in idx], [truth[i] for i in idx])
        entry["served"] = _metric(schema, [predicted[i] for i in idx], [truth[i] for i in idx])
        entry["agreement"] = _metric(schema, [shadow_predicted[i] for i in idx], [predicted[i] for i in idx])
        shadow[v] = entry
    return live, shadow


def live_metrics(store: Store) -> dict[str, dict[str, dict[str, Any]]]:
    """Each version's live metric over every batch joined from the log: `{"served": {...}}` for
    the rows it answered, `{"shadow": {...}}` for those it scored as a shadow, the latter with
    `served`, the answering versions' metric on the same rows, and `agreement`, its predictions
    scored against theirs (the share that agree; for regression the RMSE between them). Rows and
    accuracy (or RMSE)."""
    # (version, role) -> [rows, total] of its metric, of the served versions' on the same rows, of
    # its agreement with them
    sums: dict[tuple[str, str], list[float]] = {}

    def add(
        version: str, role: str, metric: dict[str, Any], served: dict[str, Any] | None = None,
        agreement: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        s = sums.setdefault((version, role), [0.0] * 6)
        for i, m in ((0, metric), (2, served or {}), (4, agreement or {})):
            rows = float(m.get("rows") or 0)
            if "accuracy" in m:
                s[i], s[i + 1] = s[i] + rows, s[i + 1] + rows * m["accuracy"]
            elif "rmse" in m:
                s[i], s[i + 1] = s[i] + rows, s[i + 1] + rows * m["rmse"] ** 2

    for batch in store.batch_ids():
        origin = store.batch_info(batch).get("origin")
        if not isinstance(origin, dict) or origin.get("kind") != "prediction-log":
            continue
        for version, metric in (origin.get("live") or {}).items():
            add(version, "served", metric)
        for version, metric in (origin.get("shadow") or {}).items():
            add(version, "shadow", metric, metric.get("served"), metric.get("agreement"))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    regression = store.schema.is_regression

    def value(rows: float, total: float) -> dict[str, Any]:
        if not rows:
            return {"rows": 0}
        name, v = ("rmse", float(np.sqrt(total / rows))) if regression else ("accuracy", total / rows)
        return {"rows": int(rows), name: round(v, 6)}

    for (version, role), (rows, total, served_rows, served_total, agree_rows, agree_total) in sums.items():
        entry = value(rows, total)
        if role == "shadow":
            entry["served"] = value(served_rows, served_total)
            entry["agreement"] = value(agree_rows, agree_total)  # accuracy against the served predictions
        out.setdefault(version, {})[role] = entry
    return out


def shadow_verdict(
    schema: Schema, live: dict[str, dict[str, dict[str, Any]]], version: str, min_rows: int
) -> str | None:
    """Why the shadow candidate `version` may be promoted (its live metric on at least `min_rows`
    labelled rows is better than that of what answered the same rows: a tie keeps what serves),
    or None."""
    shadow = (live.get(version) or {}).get("shadow")
    if not shadow or shadow.get("rows", 0) < max(min_rows, 1):
        return None
    name = "rmse" if schema.is_regression else "accuracy"
    mine, theirs = shadow.get(name), (shadow.get("served") or {}).get(name)
    if mine is None or theirs is None:
        return None
    if (mine >= theirs) if schema.is_regression else (mine <= theirs):
        return None
    return f"shadow: live {name} {mine:.4f} vs {theirs:.4f} served, on {shadow['rows']} labelled rows"
