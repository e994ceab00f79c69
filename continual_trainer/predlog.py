"""The prediction log: what `ctrain serve` answered, kept in the store; and delayed labels
joined to it (`ctrain label`).

Every answered request's rows (the feature columns as served), a key per row, the request id,
the time, the version and its predictions (and a shadow candidate's) go to a background thread
through a queue bounded in rows; when it is full the rows are dropped and counted, so logging
never blocks or fails a request. The thread writes one Parquet file into the store when it holds
`roll_rows` rows or its oldest row is `roll_seconds` old, and on shutdown.

Labels arrive later as a Parquet file of keys and labels. `join_labels` finds each key's logged
row (the newest if a key was served twice), pairs the features as served with the label as
arrived, and ingests them as a new batch whose record names where it came from: the log, the
versions that served it, its time range and each version's live accuracy (or RMSE) on it.
"""

from __future__ import annotations

import io
import logging
import random
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from continual_trainer.data.batches import ingest_bytes, load_table
from continual_trainer.data.errors import UserError
from continual_trainer.data.parquet import redact
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


@dataclass(frozen=True)
class Logged:
    """One answered request, as the log receives it (made into a table on the writer thread)."""

    features: pa.Table
    keys: list[str]
    request: str
    when: float
    version: str
    predictions: list[Any]
    shadow_version: str | None = None
    shadow_predictions: list[Any] | None = None


class PredictionLog:
    """The writer thread and its bounded queue.

    Args:
        store: where the files go (`predictions/log/`).
        schema: the store's schema (feature columns and the prediction's type).
        sample: the fraction of rows kept (each row drawn alone).
        roll_rows, roll_seconds: a file is written when this many rows wait, or the oldest
            waiting row is this old.
        max_queued: rows the queue holds; beyond it rows are dropped and counted.
    """

    def __init__(
        self,
        store: Store,
        schema: Schema,
        sample: float = 1.0,
        roll_rows: int = 50_000,
        roll_seconds: float = 60.0,
        max_queued: int = 200_000,
    ) -> None:
        self.store, self.schema, self.sample = store, schema, sample
        self.roll_rows, self.roll_seconds, self.max_queued = roll_rows, roll_seconds, max_queued
        self.logged = self.dropped = self.failed = self.files = 0
        self.waiting = 0  # rows held by the writer for its next file
        self._queue: deque[Logged] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._random = random.Random()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="ctrain-prediction-log", daemon=True)
        self._thread.start()

    def add(self, item: Logged) -> None:
        """Queue a request's rows (sampled); never blocks; drops and counts them if the queue is full."""
        n = len(item.keys)
        if self.sample < 1.0:
            keep = [i for i in range(n) if self._random.random() < self.sample]
            if not keep:
                return
            if len(keep) < n:
                item = _take(item, keep)
                n = len(keep)
        with self._cond:
            if self._closing or self._queued + n > self.max_queued:
                self.dropped += n
                return
            self._queue.append(item)
            self._queued += n
            self._cond.notify()

    def close(self, timeout: float = 30.0) -> None:
        """Write what waits, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        held: list[pa.Table] = []
        rows, since = 0, 0.0
        while True:
            with self._cond:
                wait = self.roll_seconds - (time.monotonic() - since) if held else None
                if not self._queue and not self._closing:
                    self._cond.wait(timeout=max(wait, 0.0) if wait is not None else None)
                items = list(self._queue)
                self._queue.clear()
                self._queued = 0
                closing = self._closing
            for item in items:
                try:
                    held.append(self._table(item))
                except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:  # cannot happen for checked rows
                    self.failed += len(item.keys)
                    log.error("a request's rows could not be logged (%s)", exc)
                    continue
                if rows == 0:
                    since = time.monotonic()
                rows += len(item.keys)
            self.waiting = rows
            due = rows >= self.roll_rows or (held and time.monotonic() - since >= self.roll_seconds)
            if held and (due or closing):
                self._flush(held, rows)
                held, rows = [], 0
                self.waiting = 0
            if closing and not self._queue:
                return

    def _table(self, item: Logged) -> pa.Table:
        kind = self.schema.class_type()
        n = len(item.keys)
        table = item.features.select([c for c in self.schema.features if c in item.features.column_names])
        extra = {
            KEY: pa.array(item.keys, pa.string()),
            REQUEST: pa.array([item.request] * n, pa.string()),
            TIME: pa.array(np.full(n, int(item.when * 1000), "datetime64[ms]"), TIME_TYPE),
            VERSION: pa.array([item.version] * n, pa.string()),
            PREDICTION: pa.array(item.predictions, kind),
            SHADOW_VERSION: pa.array([item.shadow_version] * n, pa.string()),
            SHADOW_PREDICTION: pa.array(item.shadow_predictions or [None] * n, kind),
        }
        for name, values in extra.items():
            table = table.append_column(name, values)
        return table

    def _flush(self, held: list[pa.Table], rows: int) -> None:
        try:
            table = pa.concat_tables(held, promote_options="permissive")
            sink = io.BytesIO()
            pq.write_table(table, sink, compression="zstd")
            self.store.write_prediction_log(sink.getvalue())
        except (UserError, OSError, pa.ArrowException) as exc:  # a full or read-only store: serving goes on
            self.failed += rows
            log.error("%s rows of the prediction log could not be written (%s)", f"{rows:,}", exc)
            return
        self.logged += rows
        self.files += 1


def _take(item: Logged, keep: list[int]) -> Logged:
    def pick(values: list[Any] | None) -> list[Any] | None:
        return None if values is None else [values[i] for i in keep]

    return Logged(
        item.features.take(keep), [item.keys[i] for i in keep], item.request, item.when, item.version,
        [item.predictions[i] for i in keep], item.shadow_version, pick(item.shadow_predictions),
    )  # fmt: skip


def read_log(store: Store, columns: list[str] | None = None, names: list[str] | None = None) -> pa.Table | None:
    """The whole prediction log (or some of its columns; or the files `names`), oldest first;
    None if it is empty."""
    tables = []
    for name in store.prediction_logs() if names is None else names:
        try:
            tables.append(pq.read_table(io.BytesIO(store.read_prediction_log(name)), columns=columns))
        except FileNotFoundError:
            continue
        except (pa.ArrowException, OSError) as exc:
            log.warning("prediction log file %s is unreadable (%s); skipped", name, exc)
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def served_rows(store: Store, after: float | None = None, names: list[str] | None = None) -> pa.Table | None:
    """The logged rows' features and times (those served after `after`, seconds since the
    epoch; of the log files `names`), oldest first; None if there are none."""
    table = read_log(store, [*store.schema.features, TIME], names)
    if table is not None and after is not None:
        table = table.filter(pc.greater(table.column(TIME), pa.scalar(int(after * 1000), TIME_TYPE)))
    return table if table is not None and table.num_rows else None


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
) -> Labelled:
    """Join the labels in `data` (a Parquet file or a table with `key` and `label` columns;
    `label` defaults to the store's label) to the prediction log and ingest the matched rows as a
    new batch. Keys already labelled, or repeated in the file, count as duplicated (the first is
    kept); keys the log does not hold as unknown; matched rows logged more than `late_after`
    seconds ago as late (they are kept: a label is a label). `source` names a table in messages."""
    source = data if isinstance(data, str) else source or "labels"
    table = load_table(data)[1] if isinstance(data, str) else data
    source = redact(source)
    schema = store.schema
    label = label or schema.label
    for name, what in ((key, "--key"), (label, "--label")):
        if name not in table.column_names:
            raise UserError(f"{source}: no column {name!r} ({what}); it has {', '.join(table.column_names)}")
    if table.num_rows == 0:
        raise UserError(f"{source}: the file has no rows")
    keys = pc.cast(table.column(key), pa.string()).to_pylist()
    if any(k is None for k in keys):
        raise UserError(f"{source}: column {key!r} has missing keys")
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
        ingested = ingest_bytes(store, f"{source.rsplit('/', 1)[-1]} joined to the prediction log",
                                sink.getvalue(), origin=origin)  # fmt: skip
        result.batch, result.added = ingested.batch_id, ingested.added
        keys_sink = io.BytesIO()
        pq.write_table(pa.table({KEY: matched.column(KEY)}), keys_sink)
        store.record_labelled(ingested.batch_id, keys_sink.getvalue())
    return result


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
    parts = []
    for name in store.prediction_logs():
        try:
            data = store.read_prediction_log(name)
            ids = pq.read_table(io.BytesIO(data), columns=[KEY]).column(KEY)
            mask = pc.is_in(ids, value_set=wanted)
            if pc.any(mask).as_py():
                parts.append(pq.read_table(io.BytesIO(data)).filter(mask))
        except FileNotFoundError:
            continue
        except (pa.ArrowException, OSError) as exc:
            log.warning("prediction log file %s is unreadable (%s); skipped", name, exc)
    if not parts:
        return None
    rows = pa.concat_tables(parts, promote_options="permissive")
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
    labelled rows is no worse than what answered the same rows), or None."""
    shadow = (live.get(version) or {}).get("shadow")
    if not shadow or shadow.get("rows", 0) < max(min_rows, 1):
        return None
    name = "rmse" if schema.is_regression else "accuracy"
    mine, theirs = shadow.get(name), (shadow.get("served") or {}).get(name)
    if mine is None or theirs is None:
        return None
    if (mine > theirs) if schema.is_regression else (mine < theirs):
        return None
    return f"shadow: live {name} {mine:.4f} vs {theirs:.4f} served, on {shadow['rows']} labelled rows"
