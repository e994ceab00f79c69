"""A sweep's trials on Ray Tune: resources per trial, concurrency, and retries of dead workers.

Each trial runs one job (`trainer.executor.run_job`) and reports its scores; the
driver receives them through a Tune callback and hands them to the sweep, which
records them in the store. Workers never open the store. Tune's own experiment
state (which holds pickles) lives in scratch space on the driver, deleted afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

from continual_trainer.cluster.pool import ACTOR_MEMORY, CurrentCache
from continual_trainer.executor import Failure, Job, OnDone, Outcome, SweepSettings, run_job
from continual_trainer.trials import TrialResult
from continual_trainer.updatedata import UpdateData
from continual_trainer.versions import StoredCandidate

_current = CurrentCache()


def _trial(config: dict[str, Any], payload: tuple[UpdateData, StoredCandidate, Sequence[Job]]) -> None:
    from ray import tune

    from continual_trainer.cluster.runtime import pin_threads

    pin_threads()
    data, current, jobs = payload
    tune.report(_report(run_job(data, _current.get(data, current), jobs[config["index"]])))


def _report(outcome: Outcome) -> dict[str, Any]:
    """An outcome as a Tune result (scores only; the candidate stays on the worker)."""
    if isinstance(outcome, Failure):
        return {"failed": 1, "user_error": int(outcome.user_error), "message": outcome.message}
    return {
        "failed": 0,
        "holdout_accuracy": outcome.metrics.get("holdout_accuracy"),
        "metrics": json.dumps(outcome.metrics),
        "current_metrics": json.dumps(outcome.current_metrics),
        "train_seconds": outcome.train_seconds,
        "members": outcome.members,
        "peak_rss_mb": outcome.peak_rss_mb,
    }


def _outcome(result: dict[str, Any]) -> Outcome:
    if result.get("failed", 1):
        return Failure(str(result.get("message", "the trial reported nothing")), bool(result.get("user_error")))
    return TrialResult(
        None,
        json.loads(result["metrics"]),
        json.loads(result["current_metrics"]),
        float(result["train_seconds"]),
        int(result["members"]),
        peak_rss_mb=float(result["peak_rss_mb"]),
    )


def run_trials(
    data: UpdateData, current: StoredCandidate, jobs: Sequence[Job], settings: SweepSettings, on_done: OnDone
) -> None:
    """Run every job as a Tune trial; `on_done(index, outcome)` in the driver as each ends."""
    from ray import tune

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic reporter honours verbose=0
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C stops the sweep like any command
    scratch = tempfile.mkdtemp(prefix="ctrain-tune-")
    trainable = tune.with_resources(
        tune.with_parameters(_trial, payload=(data, current, list(jobs))),
        {"cpu": settings.cpus_per_trial, "memory": ACTOR_MEMORY},
    )
    relay = _relay_class()(on_done, [job.strategy.name for job in jobs], settings.max_failures)
    tuner = tune.Tuner(
        trainable,
        param_space={"index": tune.grid_search(list(range(len(jobs))))},
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=settings.max_concurrent or None),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=scratch,
            verbose=0,
            callbacks=[relay],
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        ),
    )
    try:
        tuner.fit()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _relay_class() -> type:
    """A Tune callback handing each trial's outcome to `on_done` in the driver."""
    from ray import tune

    class Relay(tune.Callback):
        def __init__(self, on_done: OnDone, names: list[str], retries: int) -> None:
            self.on_done, self.names, self.retries = on_done, names, retries

        def __getstate__(self) -> dict[str, Any]:
            # Tune saves its callbacks with its experiment state, which is never restored here;
            # `on_done` holds live objects (the store and its S3 client) that do not pickle.
            return {"names": self.names, "retries": self.retries}

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.on_done(trial.config["index"], _outcome(trial.last_result or {}))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            name = self.names[trial.config["index"]]
            message = f"{name}: its worker failed {self.retries + 1} time(s)"
            self.on_done(trial.config["index"], Failure(message, user_error=False))

    return Relay
