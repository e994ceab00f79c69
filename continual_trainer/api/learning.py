"""The API's learning room: update, compare, sweep, stream and drift."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from continual_trainer.api.base import StoreBase, _budget, _names_a_file, _promotion, _table
from continual_trainer.data.errors import UserError

if TYPE_CHECKING:
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


class Learning(StoreBase):
    """`ModelStore`'s methods that learn from batches, or judge whether to."""

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
