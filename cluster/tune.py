"""A sweep's trials on Ray Tune: resources per trial, concurrency, and retries of dead workers.

Each trial runs one job (`trainer.executor.run_job`) and reports its scores; the
driver receives them through a Tune callback and hands them to the sweep, which
records them in the store. Workers never open the store. Tune's own experiment
state (which holds pickles) lives in scratch space on the driver, deleted afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

from continual_trainer.cluster.pool import ACTOR_MEMORY, CurrentCache
from continual_trainer.data.errors import UserError
from continual_trainer.executor import (
    Failure,
    Job,
    OnTrialDone,
    Schedule,
    StoppedEarly,
    SweepSettings,
    TrialOutcome,
    run_trial,
)
from continual_trainer.trials import TrialResult
from continual_trainer.updatedata import UpdateData
from continual_trainer.versions import StoredCandidate

_current = CurrentCache()


def _trial(config: dict[str, Any], payload: tuple[UpdateData, StoredCandidate, Sequence[Job], Schedule | None]) -> None:
    from ray import tune

    from continual_trainer.cluster.runtime import pin_threads

    pin_threads()
    data, current, jobs, schedule = payload
    tune.report(_report(run_trial(data, _current.get(data, current), jobs[config["index"]], schedule)))


class _Decider:
    """The sweep's scheduler (`schedule.Asha`), held by one Ray actor that every trial asks."""

    def __init__(self, decide: Any) -> None:
        self._decide = decide

    def decide(self, trial: str, epochs: int, score: float) -> bool:
        return bool(self._decide(trial, epochs, score))


class _AskActor:
    """`decide` for trials on Ray workers: a call to the scheduler's actor."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def __call__(self, trial: str, epochs: int, score: float) -> bool:
        import ray

        return bool(ray.get(self.actor.decide.remote(trial, epochs, score)))


def _report(outcome: TrialOutcome) -> dict[str, Any]:
    """An outcome as a Tune result (scores only; the candidate stays on the worker)."""
    if isinstance(outcome, Failure):
        return {"failed": 1, "user_error": int(outcome.user_error), "message": outcome.message}
    if isinstance(outcome, StoppedEarly):
        curve = json.dumps(outcome.curve)
        return {"failed": 0, "stopped_epochs": outcome.epochs, "score": outcome.score, "curve": curve}
    return {
        "failed": 0,
        "holdout_accuracy": outcome.metrics.get("holdout_accuracy"),
        "metrics": json.dumps(outcome.metrics),
        "current_metrics": json.dumps(outcome.current_metrics),
        "train_seconds": outcome.train_seconds,
        "members": outcome.members,
        "peak_rss_mb": outcome.peak_rss_mb,
        "curve": json.dumps(outcome.curve),
    }


def _outcome(result: dict[str, Any]) -> TrialOutcome:
    if result.get("failed", 1):
        return Failure(str(result.get("message", "the trial reported nothing")), bool(result.get("user_error")))
    curve = tuple((int(e), float(v)) for e, v in json.loads(result.get("curve", "[]")))
    if "stopped_epochs" in result:
        return StoppedEarly(int(result["stopped_epochs"]), float(result["score"]), curve)
    return TrialResult(
        None,
        json.loads(result["metrics"]),
        json.loads(result["current_metrics"]),
        float(result["train_seconds"]),
        int(result["members"]),
        peak_rss_mb=float(result["peak_rss_mb"]),
        curve=curve,
    )


def _check_gpus(per_trial: float) -> None:
    """Trials that ask for GPUs the cluster does not have would wait forever: say so first."""
    import ray

    have = ray.cluster_resources().get("GPU", 0)
    if per_trial > have:
        raise UserError(  # a sweep file's key, not a flag: said as the file says it
            f"gpus_per_trial: {per_trial:g} in the sweep file, but the Ray cluster has {have:g} GPUs "
            "(set 0 to train on CPUs)"
        )


def run_trials(
    data: UpdateData,
    current: StoredCandidate,
    jobs: Sequence[Job],
    settings: SweepSettings,
    on_done: OnTrialDone,
    schedule: Schedule | None = None,
) -> None:
    """Run every job as a Tune trial; `on_done(index, outcome)` in the driver as each ends.
    With `schedule`, its scheduler lives in one actor that the trials ask at their rungs."""
    import ray
    from ray import tune

    _check_gpus(settings.gpus_per_trial)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic reporter honours verbose=0
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C stops the sweep like any command
    scratch = tempfile.mkdtemp(prefix="ctrain-tune-")
    decider: Any = None
    if schedule is not None:
        decider = ray.remote(num_cpus=0)(_Decider).remote(schedule.decide)
        schedule = dataclasses.replace(schedule, decide=_AskActor(decider))
    trainable = tune.with_resources(
        tune.with_parameters(_trial, payload=(data, current, list(jobs), schedule)),
        {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial, "memory": ACTOR_MEMORY},
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
        if decider is not None:
            ray.kill(decider)


def _relay_class() -> type:
    """A Tune callback handing each trial's outcome to `on_done` in the driver."""
    from ray import tune

    class Relay(tune.Callback):
        def __init__(self, on_done: OnTrialDone, names: list[str], retries: int) -> None:
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
