"""The store operations behind the CLI (and for Python callers): init, ingest, update, predict, history.

Everything here raises UserError for mistakes a user can make.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import pyarrow as pa

from continual_trainer import strategies
from continual_trainer.data import failpoints
from continual_trainer.data.batches import IngestResult, ingest, ingest_bytes, load_table, split_rows
from continual_trainer.data.errors import NewClassesRefused, UserError
from continual_trainer.data.manifest import Manifest, lineage
from continual_trainer.data.parquet import one_line, read_bytes, redact, same_file, table_from_bytes, write_table
from continual_trainer.data.rows import Rows
from continual_trainer.data.schema import OUTPUT_COLUMNS, Schema
from continual_trainer.data.storage import NotAStore, Store, StoreMeta, batch_name, check_output, utc_stamp
from continual_trainer.executor import Executor, Failure, Job, LocalExecutor, result_or_raise
from continual_trainer.predlog import live_metrics
from continual_trainer.promotion import UpdateOutcome, check_promote, commit
from continual_trainer.sizing import UPDATE_SECONDS, sized_and_said
from continual_trainer.sweep import SweepResult, summarize
from continual_trainer.trainer.candidate import Candidate
from continual_trainer.trainer.evaluate import headline, rank_key
from continual_trainer.trainer.forgetting import Gate, forgetting
from continual_trainer.trainer.loop import LoopConfig, train
from continual_trainer.trainer.models import (
    ModelSpec,
    build_model,
    check_model,
    feed,
    from_bytes,
    numeric_layout,
    to_bytes,
)
from continual_trainer.trainer.progress import phase
from continual_trainer.trials import evaluate_sets, holdout_metrics
from continual_trainer.updatedata import default_memory_budget, load_update_data
from continual_trainer.versions import save_candidate, stored_candidate


def init_store(
    uri: str,
    data_uri: str,
    label: str,
    *,
    model: str | Any = "mlp:20,10",
    loop: LoopConfig | None = None,
    seed: int = 0,
    holdout_fraction: float = 0.2,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    task: str | None = None,
    train_imported: bool = False,
    features: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    data: bytes | None = None,
) -> UpdateOutcome:
    """Create a store from a first labelled batch and its first model.

    Args:
        model: a recipe (`mlp:20,10`, or a builder `package.module:function`), whose network
            is trained on the batch; or a trained model, a `.keras` file or a `keras.Model`,
            imported as it is (scored on the batch's holdout) unless `train_imported`, and kept
            as the recipe for fresh networks (its architecture, re-initialised, with its
            preprocessing state). A model with one input per numeric column is fed that way.
        shapes: tensor shapes of list columns, by column.
        task: `classification` or `regression` (default: regression for a float label with
            fractional values).
        features, ignore: which columns are features; the others are kept (see `data.schema`).
        data: the first batch's Parquet bytes, if already in memory (`data_uri` then names it).

    The model is trained before the store is written, so a run that fails or is
    interrupted while training leaves nothing. If an earlier `init` died after writing
    its store but before promoting its first version, this one finishes that store
    (with the same first batch) instead of refusing it.
    """
    loop = loop or LoopConfig()
    if not 0 <= holdout_fraction < 1:
        raise UserError.about("holdout", holdout_fraction, "must be in [0, 1)")
    architecture, model_name = _imported_model(model)
    imported = architecture is not None
    spec = ModelSpec((), "imported") if imported else ModelSpec.parse(model)
    if train_imported and not imported:
        raise UserError.about(
            "train", None, "applies to an imported model, a .keras file (a recipe's network is always trained)"
        )
    source = redact(data_uri)
    if data is None:
        data, table = load_table(data_uri)
    else:
        table = table_from_bytes(data, source)
    schema = Schema.infer(table, label, source, shapes=shapes, task=task, features=features, ignore=ignore)
    _refuse_existing_store(uri)
    batch = batch_name(1, data)
    start = time.perf_counter()
    if architecture is not None:
        net = from_bytes(architecture, source=model_name)
        numeric = [c.name for c in schema.columns if c.type.grouped]
        schema = replace(schema, numeric_inputs=numeric_layout(net, numeric))
        check_model(net, schema.input_spec(), schema.n_classes, model_name)
    else:
        net = build_model(spec, schema.input_spec(), schema.n_classes, seed, schema.target)
    rows, holdout = split_rows(table, batch, 0, schema, holdout_fraction)
    trained = not imported or train_imported
    if trained:
        target_std = schema.target[1] if schema.target else 1.0
        train(net, feed(net, rows.x), rows.y, loop, seed=seed, task=schema.task, target_std=target_std)
    seconds = time.perf_counter() - start
    candidate = Candidate.single(net)
    metrics = evaluate_sets(candidate, {"holdout": holdout, "new": holdout}, schema.n_classes, [batch])

    store = Store.create(uri, StoreMeta(schema, str(spec), holdout_fraction), architecture)
    try:  # under the init claim until the first version is current (see Store.create)
        others = [b for b in store.batch_ids() if b != batch]
        if others:
            raise UserError(
                f"{store.display}: an init that did not finish left this store with another first batch "
                f"({others[0]}); run init again with that file, or use another --store"
            )
        added, _ = store.add_batch(
            data,
            {
                "source": source.rsplit("/", 1)[-1],
                "rows": table.num_rows,
                "ingested": dt.datetime.now(dt.timezone.utc).isoformat(),
            },
        )
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
            preprocessing=(
                "the imported model's own (its adapted layers as saved)"
                if imported
                else "input statistics of the first batch (standard deviations of numeric columns floored at a tenth "
                "of their median); vocabularies: the first batch's"
            ),
        )
        save_candidate(store, version, candidate, manifest)
        failpoints.reached("init.before-promote")
        promoted = store.promote(version, None, by="init", reason="first model")
    finally:
        store.release_init()
    reason = "first model" if promoted else f"another init promoted {store.current()} first"
    return UpdateOutcome(version, None, strategy, promoted, reason, metrics, {}, manifest.train_seconds, 1)


def _imported_model(model: Any) -> tuple[bytes | None, str]:
    """A trained model to import, as `.keras` bytes and a name for messages; None for a recipe.

    UserError for what cannot be imported: an object that is not a Keras model, a TensorFlow
    SavedModel folder (Keras 3 cannot load one as a model it can train)."""
    if isinstance(model, str):
        if os.path.isdir(model):
            saved = os.path.isfile(os.path.join(model, "saved_model.pb"))
            kind = "a TensorFlow SavedModel folder" if saved else "a folder"
            raise UserError.about(
                "model",
                redact(model),
                f"{kind}; ctrain imports a Keras model saved as one file: model.save('model.keras') where the "
                "model was built",
            )
        if model.endswith(".keras") or "/" in model or os.path.isfile(model):
            return read_bytes(model), f"--model {redact(model)}"
        return None, ""
    import keras

    if not isinstance(model, keras.Model):
        raise UserError(
            f"model: expected a keras.Model, a .keras file or a recipe such as 'mlp:20,10', got {type(model).__name__}"
        )
    try:
        return to_bytes(model), f"model {model.name!r}"
    except Exception as exc:  # the user's object: any way it cannot be saved is theirs to see
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise UserError(f"model {model.name!r}: Keras cannot save it ({first[:200]})") from None


def _refuse_existing_store(uri: str) -> None:
    """UserError if a store with a current model exists at `uri` (checked before any training)."""
    try:
        existing = Store.open(uri)
    except NotAStore:
        return
    if existing.current() is not None:
        raise UserError(f"{existing.display}: a store already exists here; use another --store")


def ingest_files(
    uri: str, batches: Sequence[str | tuple[str, bytes]], *, allow_new_classes: bool = False
) -> list[IngestResult]:
    """Validate and add each batch in turn (a file's URI, or a name and Parquet bytes already
    in memory); stop at the first bad one (it is quarantined)."""
    store = Store.open(uri)
    try:
        return [
            ingest(store, b, allow_new_classes=allow_new_classes)
            if isinstance(b, str)
            else ingest_bytes(store, *b, allow_new_classes=allow_new_classes)
            for b in batches
        ]
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
    by: str = "update",
    origin: Mapping[str, Any] | None = None,
    gate: Gate | None = None,
    on: str = "holdout",
    memory_budget: int | None = None,
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
        actors, sync_steps: train data-parallel on that many Ray actors (see `Job`); above the
            memory budget each reads its own row groups from the store.
        by, origin: the command, and where else the version comes from (a sweep's trial),
            kept in the event log and the manifest.
        gate: with `promote="auto"`, the forgetting and negative-flip limits a winner must keep.
        on: what `auto` compares on: `holdout` or `new` (the new batches' held-out rows).
        memory_budget: bytes the training rows may take in memory (default
            `updatedata.default_memory_budget`); above it a strategy that can trains on rows read
            from the store a chunk at a time (see `updatedata.load_update_data`).

    Raises:
        NothingNew: no batch arrived since the current version and the strategy trains.
    """
    strategy = strategies.get(strategy_name)
    params = strategy.make_params(values)
    check_promote(promote, on)
    if actors > 1 and strategy.can.data_parallel is None:
        able = ", ".join(strategies.names(data_parallel="averaging") + strategies.names(data_parallel="bagging"))
        raise UserError.about("actors", None, f"{strategy_name} does not train data-parallel; these do: {able}")
    data = load_update_data(
        store,
        require_new=strategy.can.trains,
        params=[params],
        memory_budget=default_memory_budget(strategy.can.in_pieces) if memory_budget is None else memory_budget,
        in_pieces=strategy.can.in_pieces,
    )
    executor = executor or LocalExecutor()
    job = Job(strategy, params, seed, actors, sync_steps)
    (job,) = sized_and_said([(job, frozenset(values or {}))], data, UPDATE_SECONDS)
    (outcome,) = executor.run(data, stored_candidate(store, data.parent), [job], extra_eval=extra_eval)
    result = result_or_raise(outcome)
    committed = commit(store, data, strategy_name, job.params, seed, result, promote, by, dict(origin or {}), gate, on)
    return replace(committed, executor=executor.where)


def update_several(
    store: Store,
    names: Sequence[str],
    values: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    promote: str = "auto",
    executor: Executor | None = None,
    gate: Gate | None = None,
    on: str = "holdout",
    memory_budget: int | None = None,
) -> tuple[list[UpdateOutcome], int, list[str]]:
    """Several strategies against the current model on one read of the data, side by side;
    each is kept as a version, and the best by the one ranking (on `on`'s rows) goes through
    `promote` and the gate as `update`'s would (`never`: none is promoted). `values` go to each
    strategy that has them. Returns the outcomes (in `names`' order, without those that failed),
    the best one's index among them, and the strategies that failed, one line each; raises the
    first failure if all did."""
    if len(set(names)) != len(names) or not names:
        raise UserError.about("strategy", ",".join(names), "name each strategy once")
    chosen = [strategies.get(n) for n in names]
    values = dict(values or {})
    unused = set(values) - {f for s in chosen for f in s.param_names}
    if unused:
        raise UserError.about(sorted(unused)[0], None, "no strategy of --strategy has this parameter", group="params")
    check_promote(promote, on)
    jobs = [Job(s, s.make_params({k: v for k, v in values.items() if k in s.param_names}), seed) for s in chosen]
    in_pieces = all(s.can.in_pieces for s in chosen)
    data = load_update_data(
        store,
        require_new=any(s.can.trains for s in chosen),
        params=[job.params for job in jobs],
        memory_budget=default_memory_budget(in_pieces) if memory_budget is None else memory_budget,
        in_pieces=in_pieces,
    )
    executor = executor or LocalExecutor()
    keys = [frozenset(k for k in values if k in job.strategy.param_names) for job in jobs]
    jobs = sized_and_said(list(zip(jobs, keys, strict=True)), data, UPDATE_SECONDS)
    phase(f"training {', '.join(names)} side by side")
    outcomes = executor.run(data, stored_candidate(store, data.parent), jobs)
    done = [(job, o) for job, o in zip(jobs, outcomes, strict=True) if not isinstance(o, Failure)]
    failed = [
        f"{job.strategy.name}: {o.message}" for job, o in zip(jobs, outcomes, strict=True) if isinstance(o, Failure)
    ]
    if not done:
        result_or_raise(outcomes[0])
    best = max(range(len(done)), key=lambda i: rank_key(holdout_metrics(done[i][1].metrics, on)))
    committed = []
    for i, (job, result) in enumerate(done):
        mode = promote if i == best else "never"
        outcome = commit(store, data, job.strategy.name, job.params, seed, result, mode, "update", {}, gate, on)
        if i != best and promote != "never":
            outcome = replace(outcome, reason=f"{done[best][0].strategy.name} scored higher")
        committed.append(replace(outcome, executor=executor.where))
    return committed, best, failed


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


def drift(
    store: Store, data: str | pa.Table, trigger: str, values: Mapping[str, Any] | None, source: str
) -> dict[str, Any]:
    """The triggers' decisions on a labelled batch against the current model (nothing kept)."""
    from continual_trainer.stream import observe
    from continual_trainer.triggers import TriggerSet

    triggers = TriggerSet.parse(trigger, values)
    table = load_table(data, store.schema.text_types())[1] if isinstance(data, str) else data
    schema = store.schema.validate(table, source)
    rows = Rows(schema.inputs(table), schema.targets(table, source), np.zeros(table.num_rows, np.int32))
    update_data = load_update_data(store, require_new=False, params=[])
    current = stored_candidate(store, update_data.parent).load()
    pred = current.predict(rows.x, update_data.n_classes)
    observation = observe(update_data, current, rows, pred, manifest=store.manifest(update_data.parent))
    fire, decisions = triggers.decide(observation, {})
    return {"fire": fire, **{name: d.to_json() for name, d in decisions.items()}}


def served_drift(
    store: Store, trigger: str, values: Mapping[str, Any] | None, since: float | None = None
) -> dict[str, Any]:
    """The triggers' decisions on the rows `ctrain serve` answered (the prediction log, those of
    the last `since` seconds) against what the current model learned; triggers that read
    labels cannot judge them (UserError)."""
    from continual_trainer.predlog import served_rows
    from continual_trainer.stream import judge_served
    from continual_trainer.triggers import TriggerSet

    triggers = TriggerSet.parse(trigger, values)
    table = served_rows(store, None if since is None else time.time() - since)
    if table is None:
        window = f" in the last {since:g} s" if since is not None else ""
        raise UserError(f"{store.display}: the prediction log holds no served rows{window}; serve first")
    return judge_served(store, table, triggers)


def store_report(uri: str, out: str | None = None) -> tuple[str, list[str]]:
    """Write `ctrain report`'s page, Markdown and plots to `out` (a folder or URI), by default
    into the store under `reports/report-<time>/`; return where and the files' names."""
    from continual_trainer.data.parquet import resolve
    from continual_trainer.report import build_report

    store = Store.open(uri)
    if out is not None:
        check_output(out, "out")
    files = build_report(store, history(uri))
    if out is None:
        return store.write_report(f"report-{utc_stamp()}", files, folder="reports"), sorted(files)
    fs, root = resolve(out)
    through = [name for name in files if store.contains(f"{root}/{name}")]  # a link in --out into the store
    if through:
        raise UserError.about(
            "out", redact(out), f"{through[0]} there leads into the store {store.display}; nothing written"
        )
    try:
        for name, data in files.items():
            fs.create_dir(os.path.dirname(f"{root}/{name}"), recursive=True)
            with fs.open_output_stream(f"{root}/{name}") as f:
                f.write(data)
    except OSError as exc:
        raise UserError.about("out", redact(out), f"cannot write the report ({one_line(str(exc))})") from None
    return redact(out), sorted(files)


def history(uri: str) -> list[dict[str, Any]]:
    """Every committed version, oldest first: lineage, parameters in short, holdout metrics and
    size, whether it is or ever was current, its forgetting along its lineage (the worst batch,
    see `trainer.forgetting`), backward transfer and negative flip rate against its parent.

    `same_holdout` says whether a version was scored on the same holdout rows as the current
    version (the holdout grows with every batch a version has seen): metrics of versions
    scored on different rows are not directly comparable.
    """
    store = Store.open(uri)
    current = store.current()
    promoted = {e.get("version") for e in store.events("promote")}
    if current is not None:
        promoted.add(current)
    manifests = {v: store.manifest(v) for v in store.versions()}
    seen_by_current = set(manifests[current].batches_seen) if current in manifests else None
    live = live_metrics(store)
    rows = []
    for version, m in manifests.items():
        f = forgetting(m.metrics, lineage(m.parent, manifests.get))
        rows.append(
            {
                "version": version,
                "current": version == current,
                "promoted": version in promoted,
                "parent": m.parent,
                "strategy": m.strategy,
                "params": short_params(m.strategy, m.params),
                "created": m.created,
                "members": len(m.members),
                "batches_seen": len(m.batches_seen),
                "holdout_rows": int(m.metrics.get("holdout_rows") or 0),
                "same_holdout": seen_by_current is None or set(m.batches_seen) == seen_by_current,
                "train_seconds": m.train_seconds,
                "origin": m.origin,
                "forgetting": f.worst,
                "forgetting_batch": f.batch,
                "backward_transfer": f.backward_transfer,
                "negative_flip_rate": m.metrics.get("holdout_negative_flip_rate"),
                "memory_rows": (m.state.get("memory") or {}).get("rows"),
                "metrics": m.metrics,
                "live": live.get(version, {}),
            }
        )
    return rows


def short_params(strategy: str, params: Mapping[str, Any]) -> str:
    """A version's parameters that differ from its strategy's defaults, as `key=value` pairs."""
    try:
        defaults = asdict(strategies.get(strategy).make_params({}))
    except UserError:  # init, import: not a registered strategy
        defaults = {}
    return " ".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in defaults or defaults[k] != v)


def prune(uri: str, keep: int, *, dry_run: bool = False) -> list[str]:
    """`ctrain gc`: delete versions that were never promoted, except the `keep` newest of them
    and the current version's lineage; returns the versions deleted (or that would be)."""
    if keep < 0:
        raise UserError.about("keep", keep, "must be >= 0")
    return Store.open(uri).prune(keep, dry_run=dry_run)


def save_sweep_winner(
    store: Store,
    result: SweepResult,
    *,
    promote: str = "auto",
    executor: Executor | None = None,
    gate: Gate | None = None,
    memory_budget: int | None = None,
) -> UpdateOutcome:
    """`ctrain sweep --promote best`: train the sweep's best configuration (mean over seeds,
    ranked as promotion ranks) with its best seed on the same batches, save it as a version
    with the sweep and trial in its manifest, and promote it through `update`'s gate."""
    records = result.table.to_pylist() if result.finished else []
    if not records:
        raise UserError(f"sweep {result.sweep_id}: no trial finished; there is no winner to save")
    task = store.schema.task
    best = summarize(records, task)[0]
    group = [r for r in records if (r["strategy"], r["params"]) == (best["strategy"], best["params"])]
    top = max(group, key=lambda r: rank_key({m: r.get(f"holdout_{m}") for m in headline(task)}))
    return update(
        store,
        best["strategy"],
        json.loads(best["params"]),
        seed=int(top["seed"]),
        promote=promote,
        executor=executor,
        by="sweep",
        origin={"sweep": result.sweep_id, "trial": top["trial_id"]},
        gate=gate,
        memory_budget=memory_budget,
    )


# -- models in and out ------------------------------------------------------------------------------


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


def expected_inputs(
    uri: str | None = None,
    *,
    data: str | None = None,
    label: str | None = None,
    layout: str = "grouped",
    table: pa.Table | None = None,
    **infer: Any,
) -> dict[str, Any]:
    """The inputs a store feeds its models (or, before a store exists, a first batch would):
    by name, each as `{shape, dtype, columns, keras}` with the `keras.Input(...)` line that
    takes it; `layout` `columns` gives one input per numeric column, as a model built that way
    is fed."""
    from continual_trainer.trainer.models import input_line

    if uri is not None:
        schema = Store.open(uri).schema
    else:
        if data is None or label is None:
            raise UserError("inputs: give a store, or a first batch's data and its label column")
        if table is None:
            _, table = load_table(data)
        schema = replace(Schema.infer(table, label, redact(data), **infer), numeric_inputs=layout)
    spec = schema.input_spec()
    return {
        name: {
            "shape": list(info.shape) or [1],
            "dtype": "string" if info.dtype == "string" else "float32",
            "columns": list(info.columns or (name,)),
            "vocabulary": len(info.vocabulary) if info.dtype == "string" else None,
            "keras": input_line(name, info),
        }
        for name, info in spec.items()
    }


def split_file(data_uri: str, train_uri: str, holdout_uri: str, *, holdout_fraction: float = 0.2) -> dict[str, Any]:
    """Write a first batch's rows as `init` will split them (the holdout is fixed by the file's
    bytes), so the model to import can be fitted on the training part only."""
    if not 0 < holdout_fraction < 1:
        raise UserError.about("holdout", holdout_fraction, "must be in (0, 1)")
    check_output(train_uri, "train_out", inputs=(data_uri,))
    check_output(holdout_uri, "holdout_out", inputs=(data_uri,))
    if same_file(train_uri, holdout_uri):
        raise UserError("the training and holdout outputs are the same file")
    from continual_trainer.data.sampling import holdout_mask

    data, table = load_table(data_uri)
    mask = holdout_mask(batch_name(1, data), table.num_rows, holdout_fraction)
    write_table(train_uri, table.filter(pa.array(~mask)))
    write_table(holdout_uri, table.filter(pa.array(mask)))
    return {"train_rows": int((~mask).sum()), "holdout_rows": int(mask.sum()), "holdout_fraction": holdout_fraction}
