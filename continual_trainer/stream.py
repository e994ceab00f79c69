"""Streaming: every new Parquet file in an inbox is validated, ingested and acted on, once.

For each file, in name order: ingest it (a bad file is quarantined and the stream goes
on), score the current model on it before any update (the drift signal), run the
policy, and record one event. The store keeps a marker per file's sha256, written
last: a file whose marker exists is never processed again, and one interrupted before
its marker is redone safely (ingest is idempotent; a promoted update that already saw
the batch is recognised). An update that fails is recorded as such and the stream goes
on; the batch stays in the store as new data for the next update.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from continual_trainer import strategies
from continual_trainer.data import failpoints
from continual_trainer.data.batches import IngestResult, ingest_bytes
from continual_trainer.data.chunks import StoredRows, StoredUnion
from continual_trainer.data.errors import UserError, terminal_safe
from continual_trainer.data.parquet import FORMATS, one_line, redact, resolve, table_from_bytes, text_format
from continual_trainer.data.rows import Rows
from continual_trainer.data.storage import Store, sha256
from continual_trainer.drift import observe, watch_served
from continual_trainer.executor import Executor, Failure, Job, WorkFailed, result_or_raise
from continual_trainer.promotion import Promotion, commit
from continual_trainer.sizing import STREAM_SECONDS, sized, stream_budget
from continual_trainer.strategies.base import reads_old
from continual_trainer.trainer.evaluate import better, score
from continual_trainer.trainer.progress import start_tensorflow
from continual_trainer.trials import TrialResult, holdout_metrics
from continual_trainer.triggers import TriggerSet
from continual_trainer.updatedata import UpdateData, default_memory_budget, load_update_data, with_old_rows
from continual_trainer.versions import stored_candidate

__all__ = [
    "DEFAULT_CANDIDATES",
    "STATUSES",
    "Policy",
    "StreamEvent",
    "run_stream",
]

log = logging.getLogger(__name__)

DEFAULT_CANDIDATES = ("finetune_new", "finetune_all", "fresh_all", "ensemble_all")
STATUSES = ("updated", "kept", "ingested", "seen", "rejected", "failed")


@dataclass
class StreamEvent:
    """What happened to one inbox file: its status is one of `STATUSES` (`ingested`: kept as a
    batch, no trigger fired, the model stays).

    `triggers` holds each trigger's decision, statistic and state; `since_update` the files
    and rows that arrived since the model last changed; `candidates` what each strategy tried
    scored (holdout metrics, seconds, or the error)."""

    file: str
    sha256: str
    status: str
    batch: str | None = None
    rows: int = 0
    drift: dict[str, float | None] = field(default_factory=dict)
    strategy: str | None = None
    version: str | None = None
    promoted: bool = False
    reason: str = ""
    seconds: float = 0.0
    triggers: dict[str, dict[str, Any]] = field(default_factory=dict)
    since_update: dict[str, int] = field(default_factory=dict)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    update_gain: float | None = None
    judged_by: str | None = None  # the current version when the triggers decided
    learned: list[str] = field(default_factory=list)  # with a trigger's window: the batches learned

    def line(self) -> str:
        head = f"{self.file}: "
        if self.status == "rejected":
            return head + f"rejected ({self.reason})"
        name = "rmse" if "rmse" in self.drift else "accuracy"
        drift = self.drift.get(name)
        on_it = f"current model on it: {name} {drift:.3f}" if drift is not None else ""
        parts = [f"batch {self.batch}, {self.rows} rows", on_it]
        fired = [
            n + (f" ({', '.join(d['because'])})" if d.get("because") else "")
            for n, d in self.triggers.items()
            if d.get("fire")
        ]
        why = [
            str(d["detail"]) for n, d in self.triggers.items() if d.get("fire") and d.get("detail") and n != "always"
        ]
        if self.triggers and list(self.triggers) != ["always"]:
            parts.append(
                f"trigger: {', '.join(fired) if fired else 'none'} fired" + (f": {'; '.join(why)}" if why else "")
            )
        if self.version:
            parts.append(f"{self.strategy} -> {self.version} {'promoted' if self.promoted else 'not promoted'}")
        parts.append(f"update failed: {self.reason}" if self.status == "failed" else self.reason)
        return head + "; ".join(p for p in parts if p) + f" ({self.seconds:.1f} s)"


class Policy:
    """A strategy name, or `best`: a set of candidate strategies, the best of which is kept.

    Args:
        name: a registered strategy, or `best`.
        candidates: with `best`, the strategies to try.
        seed: the seed of every run.
        values: parameters for every strategy that has them (`--set`); a key no
            strategy of the policy has is an error.
        promotion: how the winner may become current (`promotion.Promotion`: `auto` by
            default; what candidates are ranked and promoted on, and the gate).
        triggers: when to update (default: every file).
        scale: size each candidate's training settings to its rows (see `scaled`).
        memory_budget: bytes an update's training rows may take in memory (default
            `updatedata.default_memory_budget`); above it the candidates read the store a chunk
            at a time.
        label_key: a file holding this column and the label but not the features is delayed
            labels: joined to the prediction log (`ctrain label`), the joined rows are its batch.
    """

    def __init__(
        self,
        name: str,
        candidates: Sequence[str] = DEFAULT_CANDIDATES,
        seed: int = 0,
        values: Mapping[str, Any] | None = None,
        promotion: Promotion | None = None,
        triggers: TriggerSet | None = None,
        scale: bool = True,
        memory_budget: int | None = None,
        label_key: str | None = None,
    ) -> None:
        self.promotion = promotion or Promotion()
        self.label_key = label_key
        self.name = name
        self.seed = seed
        self.triggers = triggers or TriggerSet.parse("always")
        names = list(candidates) if name == "best" else [name]
        if not names:
            raise UserError.about("candidates", None, "give at least one strategy")
        chosen = [strategies.get(n) for n in names]
        values = dict(values or {})
        unused = set(values) - {f for s in chosen for f in s.param_names}
        if unused:
            raise UserError.about(
                sorted(unused)[0], None, "no strategy of the policy has this parameter", group="params"
            )
        self.jobs = [
            Job(s, s.make_params({k: v for k, v in values.items() if k in s.param_names}), seed) for s in chosen
        ]
        self.user_keys = frozenset(values)
        self.scale = scale
        self.in_pieces = all(job.strategy.can.in_pieces for job in self.jobs)
        self.memory_budget = default_memory_budget(self.in_pieces) if memory_budget is None else memory_budget

    def sized(self, data: UpdateData, left: float = STREAM_SECONDS, width: int = 1) -> list[Job]:
        """The jobs with an imported model's compiled settings and settings scaled to the rows
        each trains on (see `sized`), unless `scale` is off, with `left` seconds of the file's
        budget remaining and the jobs running `width` at a time (see `stream_budget`); what the
        user set with `--set` is never changed."""
        budget = stream_budget(left, len(self.jobs), width)
        return [sized(job, data, budget, self.user_keys, self.scale) for job in self.jobs]

    def run(
        self,
        store: Store,
        data: UpdateData,
        executor: Executor,
        tried: list[dict[str, Any]] | None = None,
        started: float | None = None,
    ) -> tuple[Job, TrialResult]:
        """Run the policy's jobs; return the best successful one (ranked as promotion ranks),
        and append to `tried` what each scored. `started` is when the file was picked up
        (`time.perf_counter()`): the file's budget counts from then.

        Raises the first failure if none succeeded.
        """
        start_tensorflow()  # before the clock is read: the candidates' budget is what is left after it
        left = STREAM_SECONDS - (time.perf_counter() - started) if started is not None else STREAM_SECONDS
        jobs = self.sized(data, left, getattr(executor, "workers", None) or os.cpu_count() or 1)
        outcomes = executor.run(data, stored_candidate(store, data.parent), jobs)
        best: tuple[Job, TrialResult] | None = None
        for job, outcome in zip(jobs, outcomes, strict=True):
            if tried is not None:
                tried.append(_tried(job, outcome))
            if isinstance(outcome, Failure):
                continue
            if best is None or better(
                holdout_metrics(outcome.metrics, self.promotion.on), holdout_metrics(best[1].metrics, self.promotion.on)
            ):
                best = (job, outcome)
        if best is None:  # every job failed: raise the first user's mistake, else the first failure
            result_or_raise(next((o for o in outcomes if isinstance(o, Failure) and o.user_error), outcomes[0]))
        assert best is not None
        return best


def _tried(job: Job, outcome: TrialResult | Failure) -> dict[str, Any]:
    if isinstance(outcome, Failure):
        return {"strategy": job.strategy.name, "error": outcome.message}
    scores = holdout_metrics(outcome.metrics)
    keep = ("accuracy", "log_loss", "rmse", "mae", "negative_flip_rate")
    settings = ("batch_size", "learning_rate", "patience", "max_seconds")
    return {
        "strategy": job.strategy.name,
        "holdout": {k: scores[k] for k in keep if k in scores},
        "seconds": round(outcome.train_seconds, 3),
        "settings": {k: getattr(job.params, k) for k in settings if hasattr(job.params, k)},
    }


def inbox_files(inbox: str) -> list[tuple[pafs.FileSystem, str]]:
    fs, root = resolve(inbox)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=False))
    except (FileNotFoundError, OSError) as exc:
        raise UserError.about("inbox", redact(inbox), f"cannot list ({exc})") from None
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.lower().endswith(FORMATS))
    if isinstance(fs, pafs.LocalFileSystem):  # a link could bring any readable file into the store
        links = [f for f in files if os.path.islink(f)]
        for link in links:
            if link not in _WARNED_LINKS:
                _WARNED_LINKS.add(link)
                log.warning("%s is a symbolic link; skipped (copy or move the file into the inbox)", link)
        files = [f for f in files if f not in links]
    return [(fs, f) for f in files]


_WARNED_LINKS: set[str] = set()


def process_file(
    store: Store, fs: pafs.FileSystem, path: str, policy: Policy, executor: Executor, archive: str | None = None
) -> StreamEvent | None:
    """Handle one inbox file exactly once; None if it was processed before. With `archive` (a
    folder or URI), a processed file (its event recorded, whatever its status) moves there."""
    start = time.perf_counter()
    failpoints.reached("stream.before-read")
    name = path.rsplit("/", 1)[-1]
    try:
        with fs.open_input_stream(path) as f:
            data = f.read()
    except FileNotFoundError:  # moved or removed since the inbox was listed (another stream archived it?)
        log.warning("%s left the inbox before it was read; skipped", terminal_safe(name))
        return None
    digest = sha256(data)
    if store.stream_marker(digest) is not None:
        _archive(fs, path, data, archive)  # done before (an archive move interrupted, or no archive then)
        return None
    if not store.claim_stream_file(digest):
        return None  # another stream is on it now
    try:
        if store.stream_marker(digest) is not None:  # finished by another stream just before our claim
            return None
        event = _process(store, name, data, digest, policy, executor, start)
    finally:
        store.release_stream_file(digest)
    _archive(fs, path, data, archive)
    return event


def _archive(fs: pafs.FileSystem, path: str, data: bytes, archive: str | None) -> None:
    """Move a processed inbox file into `archive` (its name kept; with the file's sha256 added
    if the archive holds another file of that name); the inbox copy goes only once it is there."""
    if archive is None:
        return
    target_fs, root = resolve(archive)
    name = path.rsplit("/", 1)[-1]
    target = f"{root.rstrip('/')}/{name}"
    try:
        target_fs.create_dir(root, recursive=True)
        if target_fs.get_file_info(target).type != pafs.FileType.NotFound and not _holds(target_fs, target, data):
            stem, dot, ext = name.rpartition(".")
            target = f"{root.rstrip('/')}/{stem or ext}-{sha256(data)[:12]}{dot}{ext if stem else ''}"
        if target_fs.get_file_info(target).type == pafs.FileType.NotFound:
            with target_fs.open_output_stream(target) as out:
                out.write(data)
        fs.delete_file(path)
    except FileNotFoundError:  # another stream moved it first: it is in the archive once
        return
    except OSError as exc:  # the file stays in the inbox, processed (its marker says so): moved next time
        log.warning("cannot move %s to %s (%s); it stays in the inbox", terminal_safe(name), redact(archive), exc)


def _holds(fs: pafs.FileSystem, path: str, data: bytes) -> bool:
    """Whether the file at `path` has exactly these bytes (an archive copy made before)."""
    try:
        with fs.open_input_stream(path) as f:
            return bool(f.read() == data)
    except OSError:
        return False


def _process(
    store: Store, name: str, data: bytes, digest: str, policy: Policy, executor: Executor, start: float
) -> StreamEvent:
    event = StreamEvent(name, digest, "rejected")
    result, refused = None, False
    try:
        result = _labels(store, name, data, policy.label_key)
    except (UserError, *FILE_ERRORS) as exc:  # a label file it cannot use: kept aside with the reason
        event.reason, refused = _quarantined(store, name, data, exc), True
    if result is None and not refused:
        try:
            result = ingest_bytes(store, name, data)  # quarantines what it refuses
        except UserError as exc:
            event.reason = str(exc)
        except FILE_ERRORS as exc:
            event.reason = _quarantined(store, name, data, exc)
    if result is not None:
        event.batch, event.rows = result.batch_id, result.rows
        try:
            _act(store, policy, executor, event, result.batch_id, start)
        except (UserError, WorkFailed) as exc:
            event.status, event.reason = "failed", str(exc)
    event.seconds = time.perf_counter() - start
    store.record_stream_event(digest, asdict(event))
    return event


# What a file's content can raise while it is read as a batch or a label file: its fault, never
# the stream's (a store that cannot be written raises OSError, and the stream stops on it).
FILE_ERRORS = (pa.ArrowException, ValueError, TypeError, KeyError, IndexError, UnicodeError)


def _quarantined(store: Store, name: str, data: bytes, exc: Exception) -> str:
    """The reason a file cannot be used, once the file is kept aside in quarantine with it."""
    text = one_line(str(exc)) or type(exc).__name__
    reason = text if isinstance(exc, UserError) else f"{name}: cannot be read ({type(exc).__name__}: {text})"
    return f"{reason} (quarantined in {store.quarantine(name, data, reason)})"


def _labels(store: Store, name: str, data: bytes, key: str | None) -> IngestResult | None:
    """With a label key, a file of keys and labels (no feature columns) joined to the prediction
    log into a batch; None for any other file. UserError if none of its labels matched."""
    if key is None:
        return None
    import io

    import pyarrow.parquet as pq

    from continual_trainer.predlog import join_labels

    schema = store.schema
    table = None
    try:
        if text_format(name):  # no schema without reading it: read once, joined below
            table = table_from_bytes(data, name, schema.text_types())
            columns = set(table.column_names)
        else:
            columns = set(pq.read_schema(io.BytesIO(data)).names)
    except Exception:
        return None
    if key not in columns or schema.label not in columns or set(schema.features) <= columns:
        return None
    table = table if table is not None else table_from_bytes(data, name)
    joined = join_labels(store, table, key=key, source=name)
    if joined.batch is None:
        raise UserError(
            f"{name}: none of its {joined.labels} label(s) matched the prediction log "
            f"({joined.unknown} unknown, {joined.duplicated} duplicated)"
        )
    return IngestResult(joined.batch, joined.matched, joined.added)


def _act(store: Store, policy: Policy, executor: Executor, event: StreamEvent, batch: str, started: float) -> None:
    current_version = store.current()
    if current_version is None:
        raise UserError(f"{store.display}: no current model; create one with `ctrain init`")
    if batch in store.manifest(current_version).batches_seen:
        event.status, event.reason = "seen", f"already learned by {current_version}"
        return
    # The old batches' holdout and the new rows (left in the store above the memory budget).
    data = load_update_data(store, params=[], memory_budget=policy.memory_budget, in_pieces=policy.in_pieces)
    rows = _file_rows(store, data, batch)  # this file's rows: the drift signal
    current = stored_candidate(store, data.parent).for_scoring()  # a quiet file imports no TensorFlow
    pred = current.predict(rows.x, data.n_classes)
    event.drift = score(pred, rows.y)
    fired, window = _triggered(store, policy, data, current, rows, pred, event)
    if not fired:
        event.status = "ingested"
        event.reason = "the model stays"
        return
    if any(reads_old(job.params, store.manifest(data.parent).state.get("files", {})) for job in policy.jobs):
        data = with_old_rows(store, data, policy.memory_budget, policy.in_pieces)
    if window is not None and window < len(data.new_ids):
        data = latest(data, window)
        event.learned = list(data.new_ids[-window:])
    job, result = policy.run(store, data, executor, event.candidates, started)
    outcome = commit(
        store,
        data,
        job.strategy.name,
        job.params,
        job.seed,
        result,
        policy.promotion,
        by="stream",
    )
    event.status = "updated" if outcome.promoted else "kept"
    event.strategy, event.version = job.strategy.name, outcome.version
    event.promoted, event.reason = outcome.promoted, outcome.reason
    event.update_gain = update_gain(result.metrics, result.current_metrics, data)


def update_gain(metrics: Mapping[str, Any], before: Mapping[str, Any], data: UpdateData) -> float | None:
    """How much the update improved on the new batches' holdout: accuracy points, or the fall in
    RMSE in label standard deviations; None if unknown."""
    if data.n_classes:
        now, then = metrics.get("new_accuracy"), before.get("new_accuracy")
        return None if now is None or then is None else float(now - then)
    now, then = metrics.get("new_rmse"), before.get("new_rmse")
    std = data.target[1] if data.target else 1.0
    return None if now is None or then is None else float((then - now) / std)


def _triggered(
    store: Store,
    policy: Policy,
    data: UpdateData,
    current: Any,
    rows: Rows,
    pred: Any,
    event: StreamEvent,
) -> tuple[bool, int | None]:
    """Ask the policy's triggers about this file (recording their decisions in the event):
    whether to update, and how many of the latest new batches to learn (None: all)."""
    previous = store.last_stream_event(lambda e: bool(e.get("triggers"))) or {}
    # The counters and detectors start again when the model changed since the last decision
    # (by this stream's update or any other command).
    changed = previous.get("judged_by") != data.parent
    since = {} if changed else dict(previous.get("since_update") or {})
    since = {"files": int(since.get("files", 0)) + 1, "rows": int(since.get("rows", 0)) + event.rows}
    # ... except what a trigger asked to carry over its own update (the stream's last update
    # made the current model).
    ours = changed and previous.get("version") == data.parent
    states = {n: (d.get("state") or {}) for n, d in (previous.get("triggers") or {}).items()}
    if changed:
        states = {n: dict(s.get("carry") or {}) if ours else {} for n, s in states.items()}
    gain = previous.get("update_gain") if ours else None
    event.judged_by = data.parent
    manifest = store.manifest(data.parent)
    learned = sum(store.batch_rows(b) for b in manifest.batches_seen)
    observation = observe(data, current, rows, pred, since, policy.seed, manifest, gain, learned)
    fire, decisions = policy.triggers.decide(observation, states)
    event.triggers = {name: d.to_json() for name, d in decisions.items()}
    event.since_update = since
    return fire, TriggerSet.window(decisions)


def _file_rows(store: Store, data: UpdateData, batch: str) -> Rows:
    """One new batch's rows, training then held-out (one file: read into memory in any case)."""
    if not data.new.in_memory:
        return Rows.concat([StoredRows.of(store, [batch], part).load() for part in ("train", "holdout")])
    new = Rows.concat([data.new.load(), data.new_holdout.load()])
    return new.take(new.order == data.batch_ids.index(batch))


def latest(data: UpdateData, window: int) -> UpdateData:
    """The update's data with only the latest `window` new batches' rows as new, to learn and to
    be judged on; the ones before become old data (seen, learned only by a strategy that
    learns old data)."""
    if not data.new.in_memory:  # left in the store: the same, by batch
        quiet, store = data.new_ids[:-window], StoredUnion.of(data.new).parts[0].store
        old_train = [*(data.batch_ids[o] for o in data.old.rows_by_order()), *quiet]
        return dataclasses.replace(
            data,
            old_ids=data.old_ids + quiet,
            new_ids=data.new_ids[-window:],
            old=StoredRows.of(store, old_train),
            old_holdout=StoredRows.of(store, data.old_ids + quiet, "holdout"),
            new=StoredRows.of(store, data.new_ids[-window:]),
            new_holdout=StoredRows.of(store, data.new_ids[-window:], "holdout"),
        )
    position = {b: i for i, b in enumerate(data.batch_ids)}
    keep = [position[b] for b in data.new_ids[-window:]]
    rows, held = data.new.load(), data.new_holdout.load()  # in memory: these rows themselves
    new, new_holdout = np.isin(rows.order, keep), np.isin(held.order, keep)
    return dataclasses.replace(
        data,
        old_ids=data.old_ids + data.new_ids[:-window],
        new_ids=data.new_ids[-window:],
        old=Rows.concat([data.old.load(), rows.take(~new)]),
        old_holdout=Rows.concat([data.old_holdout.load(), held.take(~new_holdout)]),
        new=rows.take(new),
        new_holdout=held.take(new_holdout),
    )


def run_stream(
    store_uri: str,
    inbox: str,
    policy: Policy,
    executor: Executor,
    *,
    once: bool = False,
    interval: float = 5.0,
    on_event: Callable[[StreamEvent], None] | None = None,
    on_served: Callable[[dict[str, Any]], None] | None = None,
    archive: str | None = None,
) -> list[StreamEvent]:
    """Process the inbox until interrupted (or, with `once`, until it holds nothing new). With
    `on_served`, also judge the traffic `ctrain serve` logged since the last look (see
    `watch_served`) on every pass, and call it with each verdict. With `archive`, processed
    files move there (see `process_file`)."""
    store = Store.open(store_uri)
    events: list[StreamEvent] = []
    while True:
        for fs, path in inbox_files(inbox):
            event = process_file(store, fs, path, policy, executor, archive)
            if event is not None:
                events.append(event)
                if on_event is not None:
                    on_event(event)
        if on_served is not None:
            verdict = watch_served(store, policy.triggers)
            if verdict is not None:
                on_served(verdict)
        if once:
            return events
        time.sleep(interval)
