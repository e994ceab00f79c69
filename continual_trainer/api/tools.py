"""The API's functions that need no store: strategies, metrics, a first batch's split, the demo."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


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
