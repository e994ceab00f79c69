"""The store operations behind the CLI (and for Python callers): init, ingest, update, predict, history.

Everything here raises UserError for mistakes a user can make.
"""

from __future__ import annotations

import os
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
from data.parquet import read_bytes, redact, same_file, write_table
from data.rows import Rows
from data.schema import OUTPUT_COLUMNS, Schema
from data.storage import NotAStore, Store, StoreMeta, batch_name
from trainer.candidate import Candidate
from trainer.executor import Executor, Job, LocalExecutor, result_or_raise
from trainer.loop import LoopConfig, train
from trainer.models import ModelSpec, build_model, check_model, feed, from_bytes
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
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    task: str | None = None,
    train_imported: bool = False,
) -> UpdateOutcome:
    """Create a store from a first labelled batch and its first model.

    Args:
        model: a recipe (`mlp:20,10`, or a builder `package.module:function`), whose network
            is trained on the batch; or a trained `.keras` file, imported as it is (scored on
            the batch's holdout) unless `train_imported`, and kept as the recipe for fresh
            networks (its architecture, re-initialised).
        shapes: tensor shapes of list columns, by column.
        task: `classification` or `regression` (default: regression for a float label with
            fractional values).

    The model is trained before the store is written, so a run that fails or is
    interrupted while training leaves nothing. If an earlier `init` died after writing
    its store but before promoting its first version, this one finishes that store
    (with the same first batch) instead of refusing it.
    """
    loop = loop or LoopConfig()
    if not 0 <= holdout_fraction < 1:
        raise UserError(f"--holdout {holdout_fraction}: must be in [0, 1)")
    imported = model.endswith(".keras") or "/" in model or os.path.isfile(model)
    spec = None if imported else ModelSpec.parse(model)
    if train_imported and not imported:
        raise UserError("--train applies to --model FILE.keras (a recipe's network is always trained)")
    data, table = load_table(data_uri)
    source = redact(data_uri)
    schema = Schema.infer(table, label, source, shapes=shapes, task=task)
    _refuse_existing_store(uri)
    batch = batch_name(1, data)
    rows, holdout = split_rows(table, batch, 0, schema, holdout_fraction)
    architecture = None
    start = time.perf_counter()
    if imported:
        architecture = read_bytes(model)
        net = from_bytes(architecture, source=redact(model))
        check_model(net, schema.input_spec(), schema.n_classes, f"--model {redact(model)}")
        spec = ModelSpec((), "imported")
    else:
        net = build_model(spec, schema.input_spec(), schema.n_classes, seed, schema.target)
    trained = not imported or train_imported
    if trained:
        target_std = schema.target[1] if schema.target else 1.0
        train(net, feed(net, rows.x), rows.y, loop, seed=seed, task=schema.task, target_std=target_std)
    seconds = time.perf_counter() - start
    candidate = Candidate.single(net)
    metrics = evaluate_sets(candidate, {"holdout": holdout, "new": holdout}, schema.n_classes)

    store = Store.create(uri, StoreMeta(schema, str(spec), holdout_fraction), architecture)
    others = [b for b in store.batch_ids() if b != batch]
    if others:
        raise UserError(
            f"{store.display}: an init that did not finish left this store with another first batch "
            f"({others[0]}); run init again with that file, or use another --store"
        )
    added, _ = store.add_batch(data, {"source": source.rsplit("/", 1)[-1], "rows": table.num_rows})
    if added != batch:  # another init raced us here with other data
        raise UserError(f"{store.display}: another init is creating this store; use another --store")
    strategy = "init" if trained and not imported else "import" if not trained else "import+train"
    version = store.new_version_id(strategy.replace("+", "-"))
    manifest = Manifest(
        parent=None,
        strategy=strategy,
        params=asdict(loop) if trained else {},
        seed=seed,
        model=str(spec),
        batches_seen=(batch,),
        batches_trained=(batch,) if trained else (),
        metrics=metrics,
        train_seconds=seconds if trained else 0.0,
    )
    save_candidate(store, version, candidate, manifest)
    promoted = store.promote(version, None)
    reason = "first model" if promoted else f"another init promoted {store.current()} first"
    return UpdateOutcome(version, None, strategy, promoted, reason, metrics, {}, manifest.train_seconds, 1)


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
    pred = (executor or LocalExecutor()).score(store, version, data_uri, table)
    bad = int(np.count_nonzero(~np.isfinite(pred.reshape(len(pred), -1)).all(axis=1)))
    if bad:
        raise UserError(
            f"{redact(data_uri)}: version {version} gives no finite prediction for {bad} row(s); "
            "their features are far outside what it was trained on"
        )
    if schema.is_regression:
        out = table.append_column("prediction", pa.array(pred, pa.float64()))
    else:
        classes = list(schema.classes)
        labels = pa.array([classes[i] for i in pred.argmax(axis=1)], type=schema.class_type())
        out = table.append_column("prediction", labels)
        if schema.n_classes == 2:
            out = out.append_column("probability", pa.array(pred[:, 1], pa.float64()))
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
