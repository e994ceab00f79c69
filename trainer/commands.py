"""The store operations behind the CLI (and for Python callers): init, ingest, update, predict, history.

Everything here raises UserError for mistakes a user can make.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa

import strategies
from data.batches import IngestResult, ingest, load_table, split_rows
from data.errors import NewClassesRefused, UserError
from data.manifest import Manifest
from data.parquet import redact, same_file, write_table
from data.rows import Rows
from data.schema import OUTPUT_COLUMNS, Schema
from data.storage import NotAStore, Store, StoreMeta, batch_name
from trainer.candidate import Candidate
from trainer.executor import Executor, Job, LocalExecutor, result_or_raise
from trainer.loop import LoopConfig, train
from trainer.models import ModelSpec, build_model
from trainer.promotion import UpdateOutcome, check_promote, commit
from trainer.trials import evaluate_sets
from trainer.updatedata import load_update_data
from trainer.versions import save_candidate, stored_candidate


def init_store(
    uri: str,
    data_uri: str,
    label: str,
    *,
    model: str = "mlp:20,10",
    loop: LoopConfig | None = None,
    seed: int = 0,
    holdout_fraction: float = 0.2,
) -> UpdateOutcome:
    """Create a store from a first labelled batch and train its first model on it.

    The model is trained before the store is written, so a run that fails or is
    interrupted while training leaves nothing. If an earlier `init` died after writing
    its store but before promoting its first version, this one finishes that store
    (with the same first batch) instead of refusing it.
    """
    spec = ModelSpec.parse(model)
    loop = loop or LoopConfig()
    if not 0 <= holdout_fraction < 1:
        raise UserError(f"--holdout {holdout_fraction}: must be in [0, 1)")
    data, table = load_table(data_uri)
    source = redact(data_uri)
    schema = Schema.infer(table, label, source)
    _refuse_existing_store(uri)
    batch = batch_name(1, data)
    rows, holdout = split_rows(table, batch, 0, schema, holdout_fraction)
    start = time.perf_counter()
    net = build_model(spec, len(schema.features), schema.n_classes, seed)
    train(net, rows.x, rows.y, loop, seed=seed)
    seconds = time.perf_counter() - start
    candidate = Candidate.single(net)
    metrics = evaluate_sets(candidate, {"holdout": holdout, "new": holdout}, schema.n_classes)

    store = Store.create(uri, StoreMeta(schema, str(spec), holdout_fraction))
    others = [b for b in store.batch_ids() if b != batch]
    if others:
        raise UserError(
            f"{store.display}: an init that did not finish left this store with another first batch "
            f"({others[0]}); run init again with that file, or use another --store"
        )
    added, _ = store.add_batch(data, {"source": source.rsplit("/", 1)[-1], "rows": table.num_rows})
    if added != batch:  # another init raced us here with other data
        raise UserError(f"{store.display}: another init is creating this store; use another --store")
    version = store.new_version_id("init")
    manifest = Manifest(
        parent=None,
        strategy="init",
        params=asdict(loop),
        seed=seed,
        model=str(spec),
        batches_seen=(batch,),
        batches_trained=(batch,),
        metrics=metrics,
        train_seconds=seconds,
    )
    save_candidate(store, version, candidate, manifest)
    promoted = store.promote(version, None)
    reason = "first model" if promoted else f"another init promoted {store.current()} first"
    return UpdateOutcome(version, None, "init", promoted, reason, metrics, {}, seconds, 1)


def _refuse_existing_store(uri: str) -> None:
    """UserError if a store with a current model exists at `uri` (checked before any training)."""
    try:
        existing = Store.open(uri)
    except NotAStore:
        return
    if existing.current() is not None:
        raise UserError(f"{existing.display}: a store already exists here; use another --store")


def ingest_files(uri: str, files: Sequence[str], *, allow_new_classes: bool = False) -> list[IngestResult]:
    """Validate and add each file in turn; stop at the first bad one (it is quarantined)."""
    store = Store.open(uri)
    try:
        return [ingest(store, f, allow_new_classes=allow_new_classes) for f in files]
    except NewClassesRefused as exc:
        able = ", ".join(strategies.names(learns_new_classes=True))
        raise UserError(f"{exc}; strategies that can learn them: {able}") from None


def update(
    store: Store,
    strategy_name: str,
    values: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    promote: str = "auto",
    extra_eval: Mapping[str, Rows] | None = None,
    executor: Executor | None = None,
    actors: int = 0,
    sync_steps: int = 100,
) -> UpdateOutcome:
    """Run one strategy against the current model and the batches that arrived since.

    Args:
        store: the store to read batches and models from and to save into.
        strategy_name: a registered strategy.
        values: its parameters (strings are parsed).
        seed: fixes initialisation, sampling and shuffling.
        promote: `auto` (if better on the holdout), `always` or `never`.
        extra_eval: more named row sets to report metrics on, e.g. a test split.
        executor: where to run it (default: this process).
        actors, sync_steps: train data-parallel on that many Ray actors (see `Job`).

    Raises:
        NothingNew: no batch arrived since the current version and the strategy trains.
    """
    strategy = strategies.get(strategy_name)
    params = strategy.make_params(values)
    check_promote(promote)
    if actors > 1 and strategy.can.data_parallel is None:
        able = ", ".join(strategies.names(data_parallel="averaging") + strategies.names(data_parallel="bagging"))
        raise UserError(f"--actors: {strategy_name} does not train data-parallel; these do: {able}")
    data = load_update_data(store, require_new=strategy.can.trains)
    executor = executor or LocalExecutor()
    job = Job(strategy, params, seed, actors, sync_steps)
    (outcome,) = executor.run(data, stored_candidate(store, data.parent), [job], extra_eval=extra_eval)
    return commit(store, data, strategy_name, params, seed, result_or_raise(outcome), promote)


def predict(
    uri: str, data_uri: str, out_uri: str, *, version: str | None = None, executor: Executor | None = None
) -> dict[str, Any]:
    """Write the rows of `data_uri` plus `prediction` (and `probability` of class 1 for two classes).

    Columns that are not features, the label included whatever its type, pass through.
    """
    if same_file(out_uri, data_uri):
        raise UserError(f"--out {redact(out_uri)}: is the input file; choose another path")
    store = Store.open(uri)
    if store.contains(out_uri):
        raise UserError(f"--out {redact(out_uri)}: is inside the store {store.display}; write predictions elsewhere")
    version = version or store.current()
    if version is None:
        raise UserError(f"{store.display}: no current model; create one with `ctrain init`")
    store.manifest(version)  # an unknown version is the user's mistake, found before any work
    _, table = load_table(data_uri)
    schema = store.schema
    schema.check_features(table, redact(data_uri), allow_extra=True)
    for name in OUTPUT_COLUMNS:
        if name in table.column_names:
            raise UserError(f"{redact(data_uri)}: already has a column {name!r}; rename or drop it")
    proba = (executor or LocalExecutor()).score(store, version, data_uri, table)
    bad = int(np.count_nonzero(~np.isfinite(proba).all(axis=1)))
    if bad:
        raise UserError(
            f"{redact(data_uri)}: version {version} gives no finite prediction for {bad} row(s); "
            "their features are far outside what it was trained on"
        )
    classes = list(schema.classes)
    out = table.append_column(
        "prediction", pa.array([classes[i] for i in proba.argmax(axis=1)], type=schema.class_type())
    )
    if schema.n_classes == 2:
        out = out.append_column("probability", pa.array(proba[:, 1], pa.float64()))
    write_table(out_uri, out)
    return {"version": version, "rows": out.num_rows, "out": redact(out_uri)}


def history(uri: str) -> list[dict[str, Any]]:
    """Every committed version, oldest first, with lineage and holdout metrics."""
    store = Store.open(uri)
    current = store.current()
    rows = []
    for version in store.versions():
        m = store.manifest(version)
        rows.append(
            {
                "version": version,
                "current": version == current,
                "parent": m.parent,
                "strategy": m.strategy,
                "created": m.created,
                "members": len(m.members),
                "batches_seen": len(m.batches_seen),
                "train_seconds": m.train_seconds,
                "metrics": m.metrics,
            }
        )
    return rows
