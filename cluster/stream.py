"""Streaming: every new Parquet file in an inbox is validated, ingested and acted on, once.

For each file, in name order: ingest it (a bad file is quarantined and the stream goes
on), score the current model on it before any update (the drift signal), run the
policy, and record one event. `stream/processed/<sha256>.json` is written last: a file
whose marker exists is never processed again, and one interrupted before its marker is
redone safely (ingest is idempotent; a promoted update that already saw the batch is
recognised).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.fs as pafs

import strategies
from data.batches import ingest_bytes
from data.errors import UserError
from data.parquet import redact, resolve
from data.rows import Rows
from data.storage import Store, sha256, utc_stamp
from trainer.candidate import Candidate
from trainer.evaluate import better, score
from trainer.pipeline import (
    TrialResult,
    UpdateData,
    candidate_files,
    commit,
    holdout_metrics,
    load_candidate,
    load_update_data,
    run_strategy,
)

log = logging.getLogger(__name__)

DEFAULT_CANDIDATES = ("finetune_new", "finetune_all", "fresh_all", "ensemble_all")


@dataclass
class StreamEvent:
    file: str
    sha256: str
    status: str  # updated | kept | rejected | seen
    batch: str | None = None
    rows: int = 0
    drift: dict[str, float | None] = field(default_factory=dict)
    strategy: str | None = None
    version: str | None = None
    promoted: bool = False
    reason: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        head = f"{self.file}: "
        if self.status == "rejected":
            return head + f"rejected ({self.reason})"
        drift = self.drift.get("accuracy")
        parts = [f"batch {self.batch}, {self.rows} rows", f"current model on it: acc {drift:.3f}" if drift else ""]
        if self.version:
            parts.append(f"{self.strategy} -> {self.version} {'promoted' if self.promoted else 'not promoted'}")
        parts.append(self.reason)
        return head + "; ".join(p for p in parts if p) + f" ({self.seconds:.1f} s)"


class Policy:
    """A strategy name, or `best`: a candidate set trained in parallel on trainer actors."""

    def __init__(self, name: str, candidates: Sequence[str] = DEFAULT_CANDIDATES, seed: int = 0) -> None:
        self.name = name
        self.seed = seed
        names = list(candidates) if name == "best" else [name]
        if not names:
            raise UserError("--candidates: give at least one strategy")
        self.jobs = [(strategies.get(n), strategies.get(n).make_params()) for n in names]

    def run(self, store: Store, data: UpdateData, current: Candidate) -> tuple[str, Any, TrialResult]:
        """Run the policy on the update data; return (strategy, params, result)."""
        if self.name != "best":
            strategy, params = self.jobs[0]
            return strategy.name, params, run_strategy(data, current, strategy, params, self.seed)
        from cluster.pool import Job, run_jobs

        files = candidate_files(store, data.parent)
        results = run_jobs(data, files, [Job(s, p, self.seed) for s, p in self.jobs])
        best = 0
        for i, r in enumerate(results):
            if better(holdout_metrics(r.metrics), holdout_metrics(results[best].metrics)):
                best = i
        strategy, params = self.jobs[best]
        return strategy.name, params, results[best]


def inbox_files(inbox: str) -> list[tuple[pafs.FileSystem, str]]:
    fs, root = resolve(inbox)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=False))
    except (FileNotFoundError, OSError) as exc:
        raise UserError(f"--inbox {redact(inbox)}: cannot list ({exc})") from None
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet"))
    return [(fs, f) for f in files]


def process_file(store: Store, fs: pafs.FileSystem, path: str, policy: Policy) -> StreamEvent | None:
    """Handle one inbox file exactly once; None if it was processed before."""
    start = time.perf_counter()
    with fs.open_input_stream(path) as f:
        data = f.read()
    digest = sha256(data)
    marker = f"stream/processed/{digest}.json"
    if store.exists(marker):
        return None
    name = path.rsplit("/", 1)[-1]
    event = StreamEvent(name, digest, "rejected")
    try:
        result = ingest_bytes(store, name, data)
    except UserError as exc:
        event.reason = str(exc)
    else:
        event.batch, event.rows = result.batch_id, result.rows
        _act(store, policy, event)
    event.seconds = time.perf_counter() - start
    body = json.dumps(asdict(event), sort_keys=True, default=str).encode()
    store.write(f"stream/events/{utc_stamp()}-{digest[:12]}.json", body)
    store.write(marker, body)
    return event


def _act(store: Store, policy: Policy, event: StreamEvent) -> None:
    current_version = store.current()
    if current_version is None:
        raise UserError(f"{store.display}: no current model; create one with `ctrain init`")
    if event.batch in store.manifest(current_version)["batches_seen"]:
        event.status, event.reason = "seen", f"already learned by {current_version}"
        return
    data = load_update_data(store)
    current = load_candidate(store, data.parent)
    new = Rows.concat([data.new, data.new_holdout])
    rows = new.take(new.order == store.batch_ids().index(event.batch))  # this file's rows: the drift signal
    event.drift = score(current.predict_proba(rows.x, data.n_classes), rows.y)
    name, params, result = policy.run(store, data, current)
    outcome = commit(store, data, name, params, policy.seed, result, "auto")
    event.status = "updated" if outcome.promoted else "kept"
    event.strategy, event.version = name, outcome.version
    event.promoted, event.reason = outcome.promoted, outcome.reason


def run_stream(
    store_uri: str,
    inbox: str,
    policy: Policy,
    *,
    once: bool = False,
    interval: float = 5.0,
    on_event: Callable[[StreamEvent], None] = lambda e: None,
) -> list[StreamEvent]:
    """Process the inbox until interrupted (or, with `once`, until it holds nothing new)."""
    store = Store.open(store_uri)
    events: list[StreamEvent] = []
    while True:
        for fs, path in inbox_files(inbox):
            event = process_file(store, fs, path, policy)
            if event is not None:
                events.append(event)
                on_event(event)
        if once:
            return events
        time.sleep(interval)
