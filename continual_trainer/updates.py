"""Updating the current model: one strategy (`update`), several side by side (`compare`), a
sweep's winner trained as a version.

Everything here raises UserError for mistakes a user can make.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from continual_trainer import strategies
from continual_trainer.data.errors import UserError
from continual_trainer.data.rows import Rows
from continual_trainer.data.storage import Store
from continual_trainer.executor import Executor, Failure, Job, LocalExecutor, result_or_raise
from continual_trainer.promotion import Promotion, UpdateOutcome, commit
from continual_trainer.sizing import UPDATE_SECONDS, sized_and_said
from continual_trainer.sweep import SweepResult, summarize
from continual_trainer.trainer.evaluate import headline, rank_key
from continual_trainer.trainer.progress import phase, start_tensorflow
from continual_trainer.trials import holdout_metrics
from continual_trainer.updatedata import default_memory_budget, load_update_data
from continual_trainer.versions import stored_candidate

AUTO = Promotion()  # promoted if better on the holdout, no gate


def update(
    store: Store,
    strategy_name: str,
    values: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    promotion: Promotion = AUTO,
    extra_eval: Mapping[str, Rows] | None = None,
    executor: Executor | None = None,
    actors: int = 0,
    sync_steps: int = 100,
    by: str = "update",
    origin: Mapping[str, Any] | None = None,
    memory_budget: int | None = None,
) -> UpdateOutcome:
    """Run one strategy against the current model and the batches that arrived since.

    Args:
        store: the store to read batches and models from and to save into.
        strategy_name: a registered strategy.
        values: its parameters (strings are parsed).
        seed: fixes initialisation, sampling and shuffling.
        promotion: whether the version may become current (`promotion.Promotion`).
        extra_eval: more named row sets to report metrics on, e.g. a test split.
        executor: where to run it (default: this process).
        actors, sync_steps: train data-parallel on that many Ray actors (see `Job`); above the
            memory budget each reads its own row groups from the store.
        by, origin: the command, and where else the version comes from (a sweep's trial),
            kept in the event log and the manifest.
        memory_budget: bytes the training rows may take in memory (default
            `updatedata.default_memory_budget`); above it a strategy that can trains on rows read
            from the store a chunk at a time (see `updatedata.load_update_data`).

    Raises:
        NothingNew: no batch arrived since the current version and the strategy trains.
    """
    strategy = strategies.get(strategy_name)
    params = strategy.make_params(values)
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
    start_tensorflow()
    executor = executor or LocalExecutor()
    job = Job(strategy, params, seed, actors, sync_steps)
    (job,) = sized_and_said([(job, frozenset(values or {}))], data, UPDATE_SECONDS)
    (outcome,) = executor.run(data, stored_candidate(store, data.parent), [job], extra_eval=extra_eval)
    result = result_or_raise(outcome)
    committed = commit(store, data, strategy_name, job.params, seed, result, promotion, by, dict(origin or {}))
    return replace(committed, executor=executor.where)


def update_several(
    store: Store,
    names: Sequence[str],
    values: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    promotion: Promotion = AUTO,
    executor: Executor | None = None,
    memory_budget: int | None = None,
) -> tuple[list[UpdateOutcome], int, list[str]]:
    """Several strategies against the current model on one read of the data, side by side;
    each is kept as a version, and the best by the one ranking (on `promotion.on`'s rows) goes
    through `promotion` as `update`'s would (mode `never`: none is promoted). `values` go to each
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
    jobs = [Job(s, s.make_params({k: v for k, v in values.items() if k in s.param_names}), seed) for s in chosen]
    in_pieces = all(s.can.in_pieces for s in chosen)
    data = load_update_data(
        store,
        require_new=any(s.can.trains for s in chosen),
        params=[job.params for job in jobs],
        memory_budget=default_memory_budget(in_pieces) if memory_budget is None else memory_budget,
        in_pieces=in_pieces,
    )
    start_tensorflow()
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
    best = max(range(len(done)), key=lambda i: rank_key(holdout_metrics(done[i][1].metrics, promotion.on)))
    committed = []
    for i, (job, result) in enumerate(done):
        mine = promotion if i == best else promotion.but("never")
        outcome = commit(store, data, job.strategy.name, job.params, seed, result, mine, "update", {})
        if i != best and promotion.mode != "never":
            outcome = replace(outcome, reason=f"{done[best][0].strategy.name} scored higher")
        committed.append(replace(outcome, executor=executor.where))
    return committed, best, failed


def save_sweep_winner(
    store: Store,
    result: SweepResult,
    *,
    promotion: Promotion = AUTO,
    executor: Executor | None = None,
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
        promotion=promotion,
        executor=executor,
        by="sweep",
        origin={"sweep": result.sweep_id, "trial": top["trial_id"]},
        memory_budget=memory_budget,
    )
