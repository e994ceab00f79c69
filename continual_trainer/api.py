"""The Python API: the same operations as `ctrain`, for notebooks and pipelines.

    import continual_trainer as ct

    store = ct.init_store("store", "old.parquet", label="y", ignore=["id"])
    store.ingest(new_df)                                  # a DataFrame, an Arrow table or a file
    outcome = store.update("finetune_all", epochs=20)     # strategy parameters as keywords
    scored = store.predict(df)                            # the rows plus `prediction`
    store.history()                                       # a DataFrame, one row per version
    store.rollback()

Every mistake a user can make raises `UserError`: one line, naming this API's arguments
(`ctrain` prints the same line with its flags instead); nothing here starts Ray unless asked
(`ray=True`, `actors=N`). The CLI is a thin layer over this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from continual_trainer.data.errors import UserError

__all__ = [
    "ModelStore",
    "StreamOptions",
    "check_strategy",
    "expected_inputs",
    "init_store",
    "leave_cluster",
    "metric_names",
    "open_store",
    "run_demo",
    "split_file",
    "strategy_names",
]

if TYPE_CHECKING:
    import keras
    import pandas as pd
    import pyarrow as pa

    from continual_trainer.data.batches import IngestResult
    from continual_trainer.data.schema import Schema
    from continual_trainer.promotion import UpdateOutcome
    from continual_trainer.stream import StreamEvent
    from continual_trainer.sweep import SweepResult


@dataclass(frozen=True)
class StreamOptions:
    """What a stream does with each new file (`ModelStore.stream`, `ctrain stream`).

    Attributes:
        policy: a strategy, or `best` of `candidates` (default: the stream's four).
        trigger: `always`, `every`, `performance`, `features`, or several comma-separated,
            combined by `combine` (`any` or `all`); `trigger_params` for those that take them.
        seed: the seed of every candidate.
        max_forgetting, max_flip_rate: the promotion gate (as `update`'s).
        promote_on: what candidates are ranked and promoted on (`holdout` or `new`).
        scale: above 5,000 training rows, size batch, learning rate, early stopping and a
            time budget to the rows (strategy parameters given are kept as given).
        memory_budget: as `update`'s: above it the candidates read the store a chunk at a time.
        label_key: an inbox file with this column and the label but no features is delayed
            labels, joined to the prediction log (as `label`) into the file's batch.
        watch_served: on every pass, also judge the rows `serve` logged since the last look
            (at least 500) with the label-free triggers among `trigger` (else `features`);
            each verdict is kept in the store's event log.
        archive: a folder or URI processed files move to (default: they stay in the inbox,
            never processed twice); it must not be inside the store.
        once: stop when the inbox holds nothing new (else poll it every `interval` seconds
            until interrupted).
    """

    policy: str = "best"
    candidates: Sequence[str] | None = None
    trigger: str = "always"
    trigger_params: Mapping[str, Any] | None = None
    combine: str = "any"
    seed: int = 0
    max_forgetting: float | None = None
    max_flip_rate: float | None = None
    promote_on: str = "holdout"
    scale: bool = True
    memory_budget: int | str | None = None
    label_key: str | None = None
    watch_served: bool = False
    archive: str | None = None
    once: bool = True
    interval: float = 5.0


def init_store(
    uri: str,
    data: Any,
    label: str,
    *,
    model: str | keras.Model = "mlp:20,10",
    features: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    task: str | None = None,
    train: bool = False,
    epochs: int = 150,
    batch_size: int = 32,
    learning_rate: float = 0.01,
    holdout: float = 0.2,
    seed: int = 0,
    mlflow: str | None = None,
    mlflow_model: str | None = None,
    progress: bool = False,
) -> ModelStore:
    """Create a store from a first labelled batch and train (or import) its first model.

    Args:
        uri: a local folder or `s3://bucket/prefix` (any pyarrow filesystem URI).
        data: the first batch: a Parquet file or URI, an Arrow table or a pandas DataFrame.
        label: the label column.
        model: `mlp:UNITS,...`, a builder `package.module:function`, or a trained model to
            import as the first version (trained first if `train`): a `keras.Model` or a
            `.keras` file. Its adapted preprocessing comes along; a model with one input per
            numeric column is fed that way (`expected_inputs` shows what a store feeds).
        features, ignore: which columns are features (names or patterns); the other columns
            are kept in the store and passed through by `predict`, never trained on.
        shapes: tensor shapes of list columns, e.g. `{"image": (8, 8, 1)}`.
        task: `classification` or `regression` (default: from the label).
        epochs, batch_size, learning_rate: how the first model trains.
        holdout: the fraction of every batch held out for evaluation.
        seed: fixes initialisation, sampling and shuffling.
        mlflow, progress, mlflow_model: as for `open_store`, for this store's later updates and sweeps
            (the first model trains with progress too).

    Returns:
        The store, with `last_outcome` set to the first version's outcome.
    """
    from continual_trainer.store_setup import init_store as init
    from continual_trainer.trainer.loop import LoopConfig

    source, raw = _source(data)
    try:
        loop = LoopConfig(epochs, batch_size, learning_rate)
    except ValueError as exc:
        raise UserError(f"init: {exc}") from None
    with _reporting("init", progress):
        outcome = init(
            uri,
            source,
            label,
            model=model,
            loop=loop,
            seed=seed,
            holdout_fraction=holdout,
            shapes=shapes,
            task=task,
            train_imported=train,
            features=features,
            ignore=ignore,
            data=raw,
        )
    store = open_store(uri, mlflow=mlflow, progress=progress, mlflow_model=mlflow_model)
    store.last_outcome = outcome
    if store._mirror is not None:  # the first version: registered, and the champion
        store._mirror.log_update(outcome, {}, "init")
    return store


def expected_inputs(
    store: str | None = None,
    *,
    data: Any = None,
    label: str | None = None,
    per_column: bool = False,
    features: Sequence[str] | None = None,
    ignore: Sequence[str] | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The inputs a store feeds a model, by input name, each with its shape, dtype, the columns
    it holds and the `keras.Input(...)` line that takes it; before a store exists, what a first
    batch `data` with `label` would give (`per_column`: one input per numeric column, the
    layout a model built that way gets)."""
    from continual_trainer.store_setup import expected_inputs as expected

    if store is not None:
        return expected(store)
    if data is None or label is None:
        raise UserError("expected_inputs: give a store, or data and label")
    layout = "columns" if per_column else "grouped"
    source, table = (data, None) if isinstance(data, str) else ("data", _table(data))
    return expected(
        data=source, table=table, label=label, layout=layout, features=features, ignore=ignore, shapes=shapes
    )


def open_store(
    uri: str,
    *,
    mlflow: str | None = None,
    progress: bool = False,
    mlflow_from_env: bool = False,
    mlflow_model: str | None = None,
) -> ModelStore:
    """Open an existing store; UserError if there is none at `uri`.

    Args:
        mlflow: an MLflow tracking URI to mirror updates and sweeps to (needs the `mlflow`
            extra; e.g. `sqlite:///mlflow.db`); MLFLOW_TRACKING_URI is not read here: a notebook
            says what it wants. Each version's model is registered, and the current one carries
            the alias `champion`, moved by every promotion and rollback.
        progress: report epochs and trials on stderr, as `ctrain` does.
        mlflow_model: the registered model's name (default `ctrain-<the store's folder name>`).
    """
    from continual_trainer.data.storage import Store

    return ModelStore(
        Store.open(uri).uri,
        mlflow=mlflow,
        progress=progress,
        mlflow_from_env=mlflow_from_env,
        mlflow_model=mlflow_model,
    )


class Comparison(list):
    """What `ModelStore.compare` returns: the outcomes of the strategies compared (a list of
    `UpdateOutcome`, in the order given, those that failed left out), `best` (the index of the
    best by the one ranking, which went through promotion) and `failed` (one line each)."""

    def __init__(self, outcomes: Sequence[UpdateOutcome], *, best: int, failed: Sequence[str] = ()) -> None:
        super().__init__(outcomes)
        self.best = best
        self.failed = list(failed)

    def __repr__(self) -> str:
        rows = ", ".join(f"{o.strategy}{' (promoted)' if o.promoted else ''}" for o in self)
        failed = f"; failed: {', '.join(f.split(':')[0] for f in self.failed)}" if self.failed else ""
        return f"Comparison([{rows}], best={self[self.best].strategy if self else None!r}{failed})"


class ModelStore:
    """A store of labelled batches and model versions, and what can be done with it.

    Attributes:
        uri: where the store is (an absolute path for a local folder).
        last_outcome: what the last `update` (or `init_store`) of this object produced.
    """

    def __init__(
        self,
        uri: str,
        *,
        mlflow: str | None = None,
        progress: bool = False,
        mlflow_from_env: bool = False,
        mlflow_model: str | None = None,
    ) -> None:
        self.uri = uri
        self.last_outcome: UpdateOutcome | None = None
        self._given_mirror = None
        self._resolved_mirror: Any = False  # not looked up yet
        if mlflow or mlflow_from_env:  # from the environment: MLFLOW_TRACKING_URI if MLflow is installed
            from continual_trainer.tracking import mirror_for

            self._given_mirror = mirror_for(mlflow, uri, mlflow_model)
        self._progress = progress

    @property
    def _mirror(self) -> Any:
        """Where promotions and runs are mirrored: the MLflow tracking store given (recorded in
        the store the first time), else the one the store recorded, else None. Looked up when a
        command first has something to mirror (reading the store, maybe reaching MLflow)."""
        if self._resolved_mirror is False:
            from continual_trainer.tracking import record, recorded_mirror

            if self._given_mirror is not None:
                record(self._store(), self._given_mirror)
                self._resolved_mirror = self._given_mirror
            else:
                self._resolved_mirror = recorded_mirror(self._store(), self.uri)
        return self._resolved_mirror

    def mlflow_sync(self) -> dict[str, str]:
        """Put MLflow's alias `champion` on the current version (registering it if it never
        was), in the tracking store given to `open_store` or the one the store recorded.
        Returns the registered model, its version number and the store's version."""
        from continual_trainer.tracking import recorded_mirror

        store = self._store()
        current = store.current()
        if self._given_mirror is None:  # the recorded one; one that cannot be used is this command's error
            self._resolved_mirror = recorded_mirror(store, self.uri, strict=True)
        mirror = self._mirror
        if mirror is None:
            raise UserError(
                f"{self.uri}: this store has never mirrored to MLflow; give the tracking URI: "
                "ctrain mlflow sync --store S --mlflow URI"
            )
        if current is None:
            raise UserError(f"{self.uri}: the store has no current version yet")
        number = mirror.sync(current)
        return {"model": mirror.model_name, "model_version": number, "version": current}

    def _reporting(self, command: str) -> Any:
        return _reporting(command, self._progress)

    def __repr__(self) -> str:
        return f"ModelStore({self.uri!r}, current={self.current!r})"

    def _store(self) -> Any:
        from continual_trainer.data.storage import Store

        return Store.open(self.uri)

    @property
    def current(self) -> str | None:
        """The current (promoted) version's id."""
        return self._store().current()

    @property
    def schema(self) -> Schema:
        """The store's columns, label, classes and task."""
        return self._store().schema

    def resolve(self, ref: str) -> str:
        """The version id a reference names: an id, `current`, `parent`, or a unique prefix or suffix."""
        return self._store().resolve(ref)

    def ingest(self, data: Any, *, new_classes: bool = False) -> list[IngestResult]:
        """Validate and keep new labelled batches (one, or a list): files, Arrow tables or
        DataFrames. A batch the store holds already is a no-op; a bad one is quarantined and
        raises UserError (the ones before it are kept)."""
        from continual_trainer.store_setup import ingest_files

        items = data if isinstance(data, (list, tuple)) else [data]
        batches = [item if isinstance(item, str) else _encoded(item) for item in items]
        return ingest_files(self.uri, batches, allow_new_classes=new_classes)

    def update(
        self,
        strategy: str,
        *,
        promote: str = "auto",
        seed: int = 0,
        actors: int = 0,
        sync_steps: int = 100,
        ray: bool | None = None,
        executor: str | None = None,
        max_forgetting: float | None = None,
        max_flip_rate: float | None = None,
        promote_on: str = "holdout",
        memory_budget: int | str | None = None,
        **params: Any,
    ) -> UpdateOutcome:
        """Run one strategy on the batches that arrived since the current version, keep its
        model as a version and promote it as `promote` says (`compare` runs several).

        Args:
            strategy: a registered strategy (see `continual_trainer.strategies.names()`).
            promote: `auto` (if better on the holdout), `always` or `never`.
            actors: train data-parallel on that many Ray actors (model averaging or bagging).
            ray: run on Ray (True), here (False), or on Ray when RAY_ADDRESS is set (None).
            executor: where work runs by name instead: `local`, `ray`, or one registered in
                `continual_trainer.executor.EXECUTORS` (`ray` and `local` above are shorthands).
            max_forgetting, max_flip_rate: with `auto`, refuse a winner that forgets more than
                this on an earlier batch or flips more holdout rows from right to wrong.
            promote_on: what `auto` compares on: `holdout` (every seen batch's held-out rows)
                or `new` (the new batches' only, for data that drifts).
            memory_budget: how much memory the training rows may take (bytes, or `"2GiB"`;
                default 192 MiB where the strategy can read the store in pieces, the measured
                point from which that is as fast, else a quarter of the machine's); above it,
                strategies that can train on rows read from the store a chunk at a time.
            **params: the strategy's parameters, e.g. `epochs=20, learning_rate=0.001`.

        Raises:
            NothingNew: no batch arrived since the current version (and the strategy trains).
        """
        from continual_trainer.executor import executor_name, make_executor
        from continual_trainer.updates import update

        if not isinstance(strategy, str) or "," in strategy:
            raise UserError.about(
                "strategy", strategy if isinstance(strategy, str) else ",".join(strategy),
                "update runs one strategy; compare several side by side with store.compare([...])",
            )  # fmt: skip
        budget = _budget(memory_budget)
        promotion = _promotion(promote, promote_on, max_forgetting, max_flip_rate)
        with self._reporting("update"):
            outcome = update(
                self._store(),
                strategy,
                params,
                seed=seed,
                promotion=promotion,
                executor=make_executor(executor_name(ray, actors, executor), actors=actors),
                actors=actors,
                sync_steps=sync_steps,
                memory_budget=budget,
            )
        if self._mirror is not None:
            self._mirror.log_update(outcome, {**params, "seed": seed}, "update")
        self.last_outcome = outcome
        return outcome

    def compare(
        self,
        strategies: str | Sequence[str],
        *,
        promote: str = "auto",
        seed: int = 0,
        ray: bool | None = None,
        executor: str | None = None,
        max_forgetting: float | None = None,
        max_flip_rate: float | None = None,
        promote_on: str = "holdout",
        memory_budget: int | str | None = None,
        **params: Any,
    ) -> Comparison:
        """Run several strategies side by side on one read of the data (a list, or `"a,b,c"`),
        each kept as a version; the best of them by the one ranking goes through `promote` and
        the gate as `update`'s would (`never`: none is promoted). Parameters go to each strategy
        that has them; the rest of the arguments are `update`'s. Returns their outcomes in
        order (a strategy that failed is left out and named in `failed`), with `best`."""
        from continual_trainer.executor import executor_name, make_executor
        from continual_trainer.updates import update_several

        names = [n.strip() for n in strategies.split(",")] if isinstance(strategies, str) else list(strategies)
        promotion = _promotion(promote, promote_on, max_forgetting, max_flip_rate)
        with self._reporting("update"):
            outcomes, best, failed = update_several(
                self._store(),
                names,
                params,
                seed=seed,
                promotion=promotion,
                executor=make_executor(executor_name(ray, name=executor)),
                memory_budget=_budget(memory_budget),
            )
        for o in outcomes:
            if self._mirror is not None:
                self._mirror.log_update(o, {**params, "seed": seed}, "update")
        self.last_outcome = outcomes[best]
        return Comparison(outcomes, best=best, failed=failed)

    def sweep(
        self,
        config: str | Mapping[str, Any] | None = None,
        *,
        resume: str | None = None,
        ray: bool | None = None,
        executor: str | None = None,
        promote_best: bool = False,
        max_forgetting: float | None = None,
        max_flip_rate: float | None = None,
        memory_budget: int | str | None = None,
    ) -> SweepResult:
        """Run strategies x parameters x seeds, every trial on the same holdouts.

        Args:
            config: the sweep as a mapping (`{"strategies": [...], "params": {...}, "seeds":
                [...]}`), as YAML text, or a YAML file's path.
            resume: instead of `config`, the id of an interrupted sweep to finish (its finished
                trials are kept, not redone).
            ray: on Ray Tune (True: the cluster at RAY_ADDRESS, else a local Ray), in this
                process with trials side by side on its cores (False), or on Ray exactly when
                RAY_ADDRESS is set (None, the default). Ray is joined or started only when a
                trial needs it (resuming a finished sweep starts none).
            promote_best: train the winning configuration as a version and promote it if it
                beats the current one (and is not refused by `max_forgetting`/`max_flip_rate`,
                as for `update`); its outcome is then `last_outcome`.
            memory_budget: as `update`'s: above it the trials read the store a chunk at a time.
        """
        import os

        import yaml

        from continual_trainer.executor import deferred_executor, executor_name
        from continual_trainer.sweep import SweepSpec, run_sweep
        from continual_trainer.updates import save_sweep_winner

        spec = None
        if isinstance(config, Mapping):
            spec = SweepSpec.parse(yaml.safe_dump(dict(config)), "sweep config")
        elif config is not None and "\n" not in config and (os.path.exists(config) or _names_a_file(config)):
            from continual_trainer.data.parquet import read_bytes

            spec = SweepSpec.parse(read_bytes(config).decode(errors="replace"), config)
        elif config is not None:
            spec = SweepSpec.parse(config)
        elif resume is None:
            raise UserError("sweep: give a config, or the id of a sweep to resume")
        budget = _budget(memory_budget)
        store = self._store()
        runner = deferred_executor(executor_name(ray, name=executor))
        winner = None
        with self._reporting("sweep"):
            result = run_sweep(store, runner, spec, resume=resume, memory_budget=budget)
            if promote_best:
                promotion = _promotion("auto", "holdout", max_forgetting, max_flip_rate)
                # One job needs no cluster: the winner trains here, so that resuming a finished
                # sweep to keep its winner starts no Ray.
                winner = save_sweep_winner(store, result, promotion=promotion, memory_budget=budget)
                self.last_outcome = winner
        if self._mirror is not None:
            self._mirror.log_sweep(result, winner)
        return result

    def stream(
        self,
        inbox: str,
        options: StreamOptions | None = None,
        *,
        ray: bool | None = None,
        executor: str | None = None,
        on_where: Callable[[str], None] | None = None,
        on_event: Callable[[StreamEvent], None] | None = None,
        on_served: Callable[[dict[str, Any]], None] | None = None,
        params: Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> list[dict[str, Any]]:
        """Process every Parquet file in `inbox` not processed before, once each: ingest it,
        ask the triggers, and when they fire run the policy and promote its winner by the
        gate. With `once` (the default) until the inbox holds nothing new, else polling it
        every `interval` seconds until interrupted (as `ctrain stream`). Returns one event
        per file (status, trigger decisions, candidates, version).

        Args:
            options: what to do with each file (`StreamOptions`: policy, triggers, the gate,
                sizing, delayed labels, archive, polling); its fields may also be given as
                keywords (`policy="best"`), which replace the ones in `options`.
            ray: candidates on Ray (True), here (False), or on Ray when RAY_ADDRESS is set
                (None); Ray is joined or started only when a file's trigger fires.
            executor: where candidates train, by registered name (`local`, `ray`, ...).
            on_where: called with where the work runs: before the first file (as planned),
                and again at the end (where it ran: e.g. a local Ray, if one was started).
            on_event: called with each file's event (a `StreamEvent`) as it is recorded.
            on_served: with `watch_served`, called with each verdict on the served traffic.
            params, **settings: strategy parameters, for each strategy of the policy that has
                them (as a mapping, e.g. from a command line, and as keywords).
        """
        from dataclasses import asdict, fields, replace

        from continual_trainer.executor import deferred_executor, executor_name
        from continual_trainer.stream import DEFAULT_CANDIDATES, Policy, run_stream
        from continual_trainer.triggers import TriggerSet

        names = {f.name for f in fields(StreamOptions)}
        o = replace(options or StreamOptions(), **{k: v for k, v in settings.items() if k in names})
        strategy_params = {**(params or {}), **{k: v for k, v in settings.items() if k not in names}}
        triggers = TriggerSet.parse(o.trigger, o.trigger_params, o.combine)
        if o.archive is not None:
            from continual_trainer.data.storage import check_output

            check_output(o.archive, "archive", inbox=inbox)
        chosen = Policy(
            o.policy,
            DEFAULT_CANDIDATES if o.candidates is None else list(o.candidates),
            o.seed,
            strategy_params,
            _promotion("auto", o.promote_on, o.max_forgetting, o.max_flip_rate),
            triggers,
            o.scale,
            _budget(o.memory_budget),
            o.label_key,
        )
        runner = deferred_executor(executor_name(ray, name=executor))
        mirror = self._mirror

        def recorded(event: StreamEvent) -> None:
            if mirror is not None:
                mirror.log_stream_event(event)
            if on_event is not None:
                on_event(event)

        if on_where is not None:
            on_where(runner.where)
        with self._reporting("stream"):
            events = run_stream(
                self.uri,
                inbox,
                chosen,
                runner,
                once=o.once,
                interval=o.interval,
                on_event=recorded,
                on_served=(on_served or (lambda verdict: None)) if o.watch_served else None,
                archive=o.archive,
            )
        if on_where is not None:
            on_where(runner.where)
        return [asdict(e) for e in events]

    def drift(
        self,
        data: Any = None,
        *,
        served: bool = False,
        since: float | None = None,
        trigger: str | None = None,
        **trigger_params: Any,
    ) -> dict[str, Any]:
        """Ask triggers whether a labelled batch (a file, Arrow table or DataFrame) differs from
        what the current model learned, without keeping it (`trigger` default
        "performance,features"); or, with `served=True`, whether the rows `serve` answered do
        (the prediction log, the last `since` seconds of it; triggers that need no labels,
        default "features"). Returns {"fire", trigger: {fire, statistic, detail}}."""
        from continual_trainer.drift import drift, served_drift

        if served:
            if data is not None:
                raise UserError("drift: give data or served=True, not both")
            return served_drift(self._store(), trigger or "features", trigger_params, since)
        if data is None:
            raise UserError("drift: give the data to judge, or served=True for the served rows")
        source = data if isinstance(data, str) else "the data"
        table = data if isinstance(data, str) else _table(data)
        return drift(self._store(), table, trigger or "performance,features", trigger_params, source)

    def report(self, out: str | None = None) -> str:
        """Write `ctrain report`'s page, Markdown and plots (by default into the store under
        `reports/`); returns the page's location."""
        return str(self.write_report(out)["page"])

    def write_report(self, out: str | None = None) -> dict[str, Any]:
        """`report`, returning {"folder", "page", "files"} (the files' names in the folder)."""
        from continual_trainer.records import store_report

        folder, files = store_report(self.uri, out)
        return {"folder": folder, "page": f"{folder}/index.html", "files": files}

    def predict(self, data: Any, *, version: str = "current", prediction_column: str = "prediction") -> Any:
        """`data`'s rows plus `prediction` (and `probability` of class 1 for two classes), by
        `version` (an id, `current`, `parent`, or a unique prefix or suffix); with another
        `prediction_column`, that and `<name>_probability`. Columns that are not features pass
        through. Returns a DataFrame for a DataFrame, else an Arrow table."""
        from continual_trainer.data.batches import load_table
        from continual_trainer.data.parquet import redact
        from continual_trainer.scoring import predict_table

        if isinstance(data, str):
            _, table = load_table(data, self._store().schema.text_types())
            source = redact(data)
        else:
            table, source = _table(data), "the data"
        out = predict_table(self._store(), table, source, version=version, column=prediction_column)
        return out.to_pandas() if _is_pandas(data) else out

    def history(self) -> pd.DataFrame:
        """One row per version, oldest first: lineage, strategy, parameters in short, holdout
        size and metrics, whether it is or ever was current, and `same_holdout` (scored on the
        current version's holdout rows, so its metrics compare with the current one's)."""
        import pandas as pd

        flat = [{**r["metrics"], **{k: v for k, v in r.items() if k != "metrics"}} for r in self.versions()]
        return pd.DataFrame(flat)

    def versions(self) -> list[dict[str, Any]]:
        """`history`'s rows as dicts, each version's metrics under "metrics"."""
        from continual_trainer.records import history

        return history(self.uri)

    def predict_file(
        self,
        data: str,
        out: str,
        *,
        version: str = "current",
        actors: int = 0,
        ray: bool | None = None,
        executor: str | None = None,
        prediction_column: str = "prediction",
    ) -> dict[str, Any]:
        """`predict` from a Parquet file or URI to another, without holding all rows (with
        `actors`, scored on that many Ray actors, each reading its own row groups; `ray` as for
        `update`). Returns {"rows", "version", "out", "executor"}."""
        from continual_trainer.executor import executor_name, make_executor
        from continual_trainer.scoring import predict

        runner = make_executor(executor_name(ray, actors, executor), actors=actors)
        with self._reporting("predict"):
            done = predict(self.uri, data, out, version=version, executor=runner, column=prediction_column)
            return {**done, "executor": runner.where}

    def serve(self, on_ready: Callable[[str], None] | None = None, console: bool = True, **options: Any) -> None:
        """Serve the current version over HTTP until interrupted, reloading it when a promotion
        changes it (`POST /predict`, `GET /health`, `/version`, `/metrics`, `/`; see
        `continual_trainer.serve`). `options` are `ServeOptions`' fields: `host` (127.0.0.1
        unless told otherwise), `port`, `poll`, `max_body`, `token` (requests but `/health` then
        need `Authorization: Bearer <token>`), `log_sample` (the fraction of rows kept in the
        prediction log; 0 keeps none), `id_column`, `shadow` (a version that scores every
        request too, logged, never answering), `workers` (processes sharing the port; default
        one per core), `batch_rows` and `batch_wait` (requests that arrive together are scored
        in one call of at most that many rows, a request waiting at most that many seconds for
        company). `on_ready(version)` is called once the version is loaded and the server
        answers; with `console`, a line on standard error for each version swapped in or
        refused, and when the server stops."""
        from continual_trainer.serve import ServeOptions, serve

        try:
            settings = ServeOptions(**options)
        except TypeError as exc:
            raise UserError(f"serve: {exc}") from None
        serve(self.uri, settings, on_ready=on_ready, console=console)

    def label(
        self,
        data: Any,
        *,
        key: str = "id",
        label: str | None = None,
        late_after: float = 7 * 86400.0,
        promote: str = "never",
        min_shadow_rows: int = 500,
    ) -> dict[str, Any]:
        """Join delayed labels (a Parquet file, a pandas DataFrame or an Arrow table with `key`
        and `label` columns; `label` defaults to the store's label) to the prediction log, and
        ingest the matched rows (the features as served, the label as arrived) as a new batch.
        Returns the counts (matched, unknown, duplicated, late), the batch, the versions that
        served the rows and their live metrics (and a shadow candidate's).

        With `promote="auto"`, a shadow candidate whose live metric over all labelled rows it
        scored (at least `min_shadow_rows`) is better than that of the versions that answered
        those rows is promoted (`promoted`: its id, `reason`: why)."""
        from continual_trainer.predlog import join_labels, live_metrics, shadow_verdict
        from continual_trainer.promotion import promote_by_hand

        if promote not in ("never", "auto"):
            raise UserError(f"label: promote must be 'never' or 'auto', not {promote!r}")
        store = self._store()

        def shadows_loadable(joined: Any) -> None:  # before anything is written: a failure consumes nothing
            from continual_trainer.versions import stored_candidate

            for version in sorted(joined.shadow):
                try:
                    stored_candidate(store, version)
                except UserError as exc:
                    raise UserError(
                        f"shadow version {version} cannot be promoted ({str(exc).removeprefix(store.display + ': ')}); "
                        "nothing was written: label again without promote='auto'"
                    ) from None

        with self._reporting("label"):
            source = data if isinstance(data, str) else _table(data)
            check = shadows_loadable if promote == "auto" else None
            out = join_labels(store, source, key=key, label=label, late_after=late_after, check=check).to_json()
        out["promoted"] = out["reason"] = None
        if promote == "auto":
            live = live_metrics(store)
            current = store.current()
            for version in sorted(out["shadow"]):
                why = shadow_verdict(store.schema, live, version, min_shadow_rows)
                if why is not None and version != current:
                    out["promoted"], out["reason"] = promote_by_hand(store, version, why)[0], why
                    if self._mirror is not None:
                        self._mirror.champion(out["promoted"], "label")
                    break
        return out

    def batches(self) -> list[dict[str, Any]]:
        """Every batch in ingestion order: its id, source file name, rows, when it was ingested,
        whether the current version learned it, and its retirement (None, or when and why)."""
        store = self._store()
        current = store.current()
        learned = set(store.manifest(current).batches_seen) if current else set()
        retired = store.retired_batches()
        rows = []
        for batch_id in store.batch_ids():
            info = store.batch_info(batch_id)
            rows.append(
                {
                    "batch": batch_id,
                    "source": info.get("source"),
                    "rows": info.get("rows"),
                    "ingested": info.get("ingested"),
                    "learned_by_current": batch_id in learned,
                    "retired": retired.get(batch_id),
                }
            )
        return rows

    def drop(self, batch: str, *, reason: str = "") -> str:
        """Retire a batch (its id, or a unique prefix or suffix of it): kept byte for byte and in
        every lineage, never trained on or scored again. Returns its id."""
        store = self._store()
        ids = store.batch_ids()
        found = [b for b in ids if b == batch] or [b for b in ids if b.startswith(batch) or b.endswith(batch)]
        if len(found) != 1:
            what = "no batch" if not found else f"{len(found)} batches"
            raise UserError(f"{store.display}: {batch!r} names {what}; see `ctrain batches`")
        if not store.retire_batch(found[0], reason):
            raise UserError(f"{store.display}: batch {found[0]} is retired already")
        return found[0]

    def verify(self) -> tuple[list[str], list[str]]:
        """Check the whole store: every file against its sha256, CURRENT (present whenever a
        promotion was recorded), the lineage for gaps, the prediction log (every file readable in
        the log's one schema), the labelled keys and retired batches: (problems, notes); see
        `ctrain verify`."""
        from continual_trainer.predlog import LogReader

        store = self._store()
        problems, notes = store.verify()
        reader = LogReader(store, warn=False)
        for name in store.prediction_logs():
            reader.file(name)
        known = " ".join(problems)
        problems += [f"prediction log file {name} cannot be read in the log's schema; `drift --served`, `label` and "
                     "the stream skip it" for name in reader.skipped if name not in known]  # fmt: skip
        return problems, notes

    @property
    def display(self) -> str:
        """The store's location for messages (credentials removed)."""
        from continual_trainer.data.parquet import redact

        return redact(self.uri)

    def load_model(self, version: str = "current") -> keras.Model:
        """A version as one Keras model (default: the current one): a single network as it is,
        an ensemble as one functional model combining its members with their stored weights,
        so that `model.predict` gives what `predict` does. It takes the inputs the store feeds
        (`expected_inputs(store)`)."""
        from continual_trainer.scoring import load_model

        return load_model(self.uri, version)[0]

    def export(self, out: str, *, version: str = "current", format: str | None = None) -> dict[str, Any]:
        """Write a version as one model: `format` `keras` (a `.keras` file) or `saved_model`
        (TensorFlow Serving's layout, `out/<n>/saved_model.pb`; the default unless `out` ends
        in `.keras`). Returns where it went."""
        from continual_trainer.scoring import export_model

        return export_model(self.uri, out, version=version, fmt=format)

    def promote(self, version: str, *, reason: str = "") -> str:
        """Make a stored version current (compare-and-swap; recorded with `reason`); returns its id."""
        from continual_trainer.promotion import promote_by_hand

        made = promote_by_hand(self._store(), version, reason)[0]
        if self._mirror is not None:
            self._mirror.champion(made)
        return made

    def rollback(self, to: str | None = None, *, reason: str = "") -> str:
        """Undo the last change of the current version (back to what was current before it; a
        second call redoes it), or make `to` current (`"parent"`: the lineage parent); returns
        the id made current."""
        from continual_trainer.promotion import rollback

        made = rollback(self._store(), to, reason)[0]
        if self._mirror is not None:
            self._mirror.champion(made, "rollback")
        return made

    def gc(self, keep: int = 5, *, dry_run: bool = False) -> list[str]:
        """Delete versions that were never promoted, but the `keep` newest of them; never the
        current version or its lineage. Returns the versions deleted (or, dry, that would be)."""
        from continual_trainer.records import prune

        return prune(self.uri, keep, dry_run=dry_run)


def strategy_names() -> list[str]:
    """The registered strategies' names."""
    from continual_trainer import strategies

    return list(strategies.names())


def check_strategy(name: str, params: Mapping[str, Any] | None = None) -> None:
    """Raise UserError if `name` is no strategy or `params` are not its parameters (values may
    be strings, as on a command line); nothing else is done (TensorFlow is not loaded)."""
    from continual_trainer import strategies

    strategies.get(name).make_params(dict(params or {}))


def metric_names(task: str) -> tuple[str, str]:
    """The metrics a task is judged by first and second (`accuracy`, `log_loss` for
    classification; `rmse`, `mae` for regression)."""
    from continual_trainer.trainer.evaluate import headline

    return headline(task)


def split_file(data: str, train_out: str, holdout_out: str, *, holdout: float = 0.2) -> dict[str, Any]:
    """Write a first batch's rows as `init_store` will split them (the holdout is fixed by the
    file's bytes), so that a model to import can be fitted on the training part only."""
    from continual_trainer.store_setup import split_file as split

    return split(data, train_out, holdout_out, holdout_fraction=holdout)


def run_demo(
    store: str | None = None,
    *,
    seed: int = 0,
    ray: bool | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    executor: str | None = None,
) -> dict[str, Any]:
    """The reference experiment (`ctrain demo`): the old model on the tutorial's data, every
    strategy against the new batch, scored on the test split. Returns {"store", "report",
    "results" (one row per strategy), "executor" (where it ran), "table" (as text)}."""
    from continual_trainer import demo
    from continual_trainer.executor import executor_name, make_executor

    runner = make_executor(executor_name(ray, name=executor))
    where, results, report = demo.run_demo(runner, store, seed=seed, on_result=on_result)
    return {
        "store": where,
        "report": report,
        "results": results,
        "executor": runner.where,
        "table": demo.render_table(results),
    }


def leave_cluster() -> None:
    """Disconnect from Ray if this process joined it (a local Ray it started stops)."""
    import sys

    if "ray" in sys.modules:
        from continual_trainer.cluster.runtime import disconnect

        disconnect()


def _reporting(command: str, progress: bool) -> Any:
    """Progress on stderr for one call if asked; otherwise whatever reporter the caller has
    open stays (`ctrain` opens one for every command)."""
    import contextlib

    from continual_trainer.trainer.progress import Reporter, reporting

    return reporting(Reporter(command)) if progress else contextlib.nullcontext()


def _is_pandas(data: Any) -> bool:
    return type(data).__module__.startswith("pandas")


def _table(data: Any) -> pa.Table:
    import pyarrow as pa

    if isinstance(data, pa.Table):
        return data
    if _is_pandas(data):
        return pa.Table.from_pandas(data, preserve_index=False)
    raise UserError(f"expected a Parquet path, an Arrow table or a pandas DataFrame, got {type(data).__name__}")


def _source(data: Any) -> tuple[str, bytes | None]:
    """A batch as (its name for messages and records, its Parquet bytes or None to read the file)."""
    return (data, None) if isinstance(data, str) else _encoded(data)


def _encoded(data: Any) -> tuple[str, bytes]:
    """A batch given as a table or DataFrame: (its name for messages and records, its Parquet bytes)."""
    from continual_trainer.data.parquet import table_to_bytes

    return f"{type(data).__name__.lower()}.parquet", table_to_bytes(_table(data))


def _names_a_file(text: str) -> bool:
    """A one-line config that names a file (a YAML path or a URI) rather than holding YAML."""
    return text.endswith((".yaml", ".yml")) or "://" in text


def _promotion(mode: str, on: str, max_forgetting: float | None, max_flip_rate: float | None) -> Any:
    """The API's promotion arguments as the one `Promotion` value passed down."""
    from continual_trainer.promotion import Promotion
    from continual_trainer.trainer.forgetting import Gate

    return Promotion(mode, on, Gate(max_forgetting, max_flip_rate))


def _budget(memory_budget: int | str | None) -> int | None:
    from continual_trainer.trainer.params import parse_size

    try:
        return None if memory_budget is None else parse_size(memory_budget)
    except ValueError as exc:
        raise UserError(f"memory_budget: {exc}") from None
