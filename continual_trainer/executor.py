"""Where work runs: one small protocol, for this process here and for Ray in `cluster.executor`.

Every command that trains or scores (update, predict, demo, sweep, stream) hands its
work to an `Executor`; nothing else decides where code runs. A job is one strategy run
against one update's data; its outcome is a `TrialResult` or a `Failure`. A user's
mistake found while a job runs (a bad parameter for this store, a model that cannot
learn the new classes) is caught in one place, `run_job`, wherever the job runs, and
comes back as a `Failure` that is reported, not retried.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from continual_trainer.data.errors import UserError, WorkFailed
from continual_trainer.data.rows import Rows
from continual_trainer.trainer.params import Interval, Params, param
from continual_trainer.trainer.registry import Registry
from continual_trainer.trials import PartsOf, TrialResult, run_strategy, score_candidate, stored_parts

__all__ = [
    "EXECUTORS",
    "Executor",
    "Failure",
    "Job",
    "LocalExecutor",
    "Schedule",
    "StoppedEarly",
    "SweepSettings",
    "deferred_executor",
    "executor_name",
    "make_executor",
    "result_or_raise",
    "run_job",
    "run_trial",
]

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from continual_trainer import strategies
    from continual_trainer.data.storage import Store
    from continual_trainer.trainer.candidate import Candidate
    from continual_trainer.updatedata import UpdateData
    from continual_trainer.versions import StoredCandidate

Decide = Callable[[str, int, float], bool]  # (trial, epochs, score) -> go on?


@dataclass(frozen=True)
class Job:
    """One strategy run.

    Attributes:
        strategy: the registered strategy, shipped whole (so strategies a caller
            registered at run time work on workers too).
        params: its parameter dataclass.
        seed: fixes initialisation, sampling and shuffling.
        actors: more than 1: train data-parallel on that many Ray actors, as the
            strategy's `can.data_parallel` says; 0 or 1: in one process.
        sync_steps: with `actors` and averaging: steps between weight averages.
        trial: the sweep trial it is (names it to a scheduler).
    """

    strategy: strategies.Strategy
    params: Any
    seed: int
    actors: int = 0
    sync_steps: int = 100
    trial: str = ""


@dataclass(frozen=True)
class Failure:
    """A job that produced no result, and why.

    Attributes:
        message: one line for the user.
        user_error: the user's input or configuration is at fault (exit code 2; never
            retried); otherwise the work itself failed, e.g. workers died beyond retries.
        error: the user's mistake as raised (so that the CLI can name its flag), if there was one.
    """

    message: str
    user_error: bool
    error: UserError | None = None


@dataclass(frozen=True)
class StoppedEarly:
    """A sweep trial its scheduler stopped at a rung (see `schedule`): the epochs it trained,
    its holdout score then, and every score it reported as (epochs, score)."""

    epochs: int
    score: float
    curve: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class Schedule:
    """How a sweep's trials are watched as they train: every `every` epochs each scores its
    model on `rows` (a holdout sample) and asks `decide(trial, epochs, score)` whether to go on."""

    every: int
    rows: Rows
    decide: Decide


Outcome = TrialResult | Failure
OnDone = Callable[[int, Outcome], None]
TrialOutcome = TrialResult | Failure | StoppedEarly  # a sweep's trials may also be stopped early
OnTrialDone = Callable[[int, TrialOutcome], None]


@dataclass(frozen=True)
class SweepSettings(Params):
    """How a sweep's trials are scheduled (ignored where there is one process)."""

    cpus_per_trial: float = param(1.0, Interval(float, 0, low_open=True), "Ray CPUs per trial")
    gpus_per_trial: float = param(0.0, Interval(float, 0), "Ray GPUs per trial (0: trials see no GPU)")
    max_failures: int = param(2, Interval(int, 0), "retries of a trial whose worker died")
    max_concurrent: int = param(0, Interval(int, 0), "trials at once (0: as many as there are CPUs)")


class Executor(Protocol):
    """Runs jobs and scoring somewhere: in this process, or on Ray."""

    @property
    def where(self) -> str:
        """Where the work runs, in words for the user."""

    def run(
        self,
        data: UpdateData,
        current: StoredCandidate,
        jobs: Sequence[Job],
        *,
        extra_eval: Mapping[str, Rows] | None = None,
        on_done: OnDone | None = None,
    ) -> list[Outcome]:
        """Run `jobs` (in parallel where possible); outcomes in the order of `jobs`, each also
        passed to `on_done(index, outcome)` as it arrives. Candidates come back whole."""

    def sweep(
        self,
        data: UpdateData,
        current: StoredCandidate,
        jobs: Sequence[Job],
        settings: SweepSettings,
        on_done: OnTrialDone,
        schedule: Schedule | None = None,
    ) -> None:
        """Run a sweep's trials, retrying those whose worker dies, each watched by `schedule`
        if given; only scores come back."""

    def score(self, store: Store, version: str, uri: str, table: pa.Table) -> np.ndarray:
        """Class probabilities of a stored version for every row of the Parquet file `uri`
        (already read and checked here as `table`)."""


Fit = Callable[["UpdateData", "Candidate", Job], tuple["Candidate", dict[str, Any]]]


def run_job(
    data: UpdateData,
    current: Candidate,
    job: Job,
    extra_eval: Mapping[str, Rows] | None = None,
    fit: Fit | None = None,
    parts_of: PartsOf = stored_parts,
) -> Outcome:
    """Run one job from this process and score it; a user's mistake becomes a `Failure`.

    By default the strategy trains here; `fit` trains it some other way (data-parallel
    on actors) and says how, for the manifest; `parts_of` then scores rows left in the
    store (here by default, or sharded over those actors).
    """
    try:
        if fit is None:
            return run_strategy(data, current, job.strategy, job.params, job.seed, extra_eval)
        start = time.perf_counter()
        candidate, execution = fit(data, current, job)
        seconds = time.perf_counter() - start
        return score_candidate(data, current, candidate, seconds, extra_eval, execution, parts_of)
    except UserError as exc:
        return Failure(str(exc), user_error=True, error=exc)


def run_trial(data: UpdateData, current: Candidate, job: Job, schedule: Schedule | None) -> TrialOutcome:
    """`run_job` for a sweep's trial, its training watched by `schedule` (if any): the scores
    it reported come back with its result, or it stops early (`StoppedEarly`)."""
    if schedule is None:
        return run_job(data, current, job)
    from continual_trainer.schedule import Pruned, Watch
    from continual_trainer.trainer.progress import watching

    watch = Watch(job.trial, schedule.every, schedule.rows, data.n_classes, schedule.decide)
    try:
        with watching(watch):
            outcome = run_job(data, current, job)
    except Pruned as stop:
        return StoppedEarly(stop.epochs, stop.score, tuple(watch.curve))
    return dataclasses.replace(outcome, curve=tuple(watch.curve)) if isinstance(outcome, TrialResult) else outcome


def result_or_raise(outcome: Outcome) -> TrialResult:
    """The result, or the failure raised as UserError (exit 2) or WorkFailed (exit 1)."""
    if isinstance(outcome, Failure):
        if outcome.error is not None:
            raise outcome.error
        raise (UserError if outcome.user_error else WorkFailed)(outcome.message)
    return outcome


class LocalExecutor:
    """Everything in this process: jobs side by side on `workers` threads (default one per
    CPU), each job's results as if it ran alone.

    Threads, not processes: the compiled training loop runs whole epochs inside TensorFlow,
    which releases the GIL, so two trials on two threads train at once; a process per worker
    would pay its own TensorFlow import, traces and copy of the rows. Measured on 2 cores,
    six strategies of 300 epochs on digits (`scripts/bench_local_parallel.py`): 2 threads
    1.84x one thread, 2 spawned processes 0.61x (their imports outweigh the work), results
    identical to the digit.
    """

    where = "this process (no Ray)"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers if workers is not None else (os.cpu_count() or 1))

    def run(
        self,
        data: UpdateData,
        current: StoredCandidate,
        jobs: Sequence[Job],
        *,
        extra_eval: Mapping[str, Rows] | None = None,
        on_done: OnDone | None = None,
    ) -> list[Outcome]:
        def one(model: Candidate, job: Job) -> Outcome:
            if job.actors > 1:
                return Failure("data-parallel training (--actors) runs on Ray actors", user_error=True)
            return run_job(data, model, job, extra_eval)

        return self._side_by_side(current, jobs, one, on_done, self.workers)  # type: ignore[arg-type,return-value]

    @staticmethod
    def _side_by_side(
        current: StoredCandidate,
        jobs: Sequence[Job],
        one: Callable[[Candidate, Job], TrialOutcome],
        on_done: OnTrialDone | None,
        workers: int,
    ) -> list[TrialOutcome]:
        """`one(model, job)` for every job on up to `workers` threads, outcomes in job order,
        each passed to `on_done` on this thread as it arrives."""
        model = current.load()
        outcomes: dict[int, TrialOutcome] = {}
        if workers == 1 or len(jobs) < 2:
            for i, job in enumerate(jobs):
                outcomes[i] = one(model, job)
                if on_done:
                    on_done(i, outcomes[i])
            return [outcomes[i] for i in range(len(jobs))]
        from concurrent.futures import ThreadPoolExecutor, as_completed

        from continual_trainer.trainer.progress import STOP

        pool = ThreadPoolExecutor(min(workers, len(jobs)), thread_name_prefix="ctrain-job")
        try:
            futures = {pool.submit(one, model, job): i for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                i = futures[future]
                outcomes[i] = future.result()
                if on_done:  # on this thread, as each arrives
                    on_done(i, outcomes[i])
        except BaseException:  # Ctrl-C, or a failure: the jobs still running stop at their next report
            STOP.set()
            pool.shutdown(wait=True, cancel_futures=True)
            STOP.clear()
            raise
        pool.shutdown()
        return [outcomes[i] for i in range(len(jobs))]

    def sweep(
        self,
        data: UpdateData,
        current: StoredCandidate,
        jobs: Sequence[Job],
        settings: SweepSettings,
        on_done: OnTrialDone,
        schedule: Schedule | None = None,
    ) -> None:
        workers = min(self.workers, settings.max_concurrent or self.workers)
        self._side_by_side(current, jobs, lambda model, job: run_trial(data, model, job, schedule), on_done, workers)

    def score(self, store: Store, version: str, uri: str, table: pa.Table) -> np.ndarray:
        from continual_trainer.versions import stored_candidate

        schema = store.schema  # a plain Dense stack scores without TensorFlow (`trainer.light`)
        return stored_candidate(store, version).for_scoring().predict(schema.inputs(table), schema.n_classes)


class Deferred:
    """An executor made the first time work needs it, so that a stream that finds nothing new
    starts no Ray; until then `where` says where work would run."""

    def __init__(self, make: Callable[[], Executor], planned: str) -> None:
        self._make, self._planned = make, planned
        self._made: Executor | None = None

    def _get(self) -> Executor:
        if self._made is None:
            self._made = self._make()
        return self._made

    @property
    def where(self) -> str:
        return self._made.where if self._made is not None else self._planned

    def run(self, *args: Any, **kwargs: Any) -> list[Outcome]:
        return self._get().run(*args, **kwargs)

    def sweep(self, *args: Any, **kwargs: Any) -> None:
        self._get().sweep(*args, **kwargs)

    def score(self, *args: Any, **kwargs: Any) -> np.ndarray:
        return self._get().score(*args, **kwargs)


# Executors by name: a factory given how many actors the work may use.
EXECUTORS: Registry[Callable[[int], Executor]] = Registry(
    "executor", "executor", group="continual_trainer.executors", load=lambda factory: factory
)


def _local(actors: int) -> Executor:
    return LocalExecutor()


def _ray(actors: int) -> Executor:
    from continual_trainer.cluster.executor import RayExecutor  # the layer above: Ray lives there

    return RayExecutor(actors)


EXECUTORS.add("local", _local)
EXECUTORS.add("ray", _ray)


def executor_name(ray: bool | None = None, actors: int = 0, name: str | None = None) -> str:
    """Where work runs, by name: `name` if given (`local`, `ray`, or one registered in
    `EXECUTORS`: UserError naming the choices if not); else `ray` when asked for (True, or actors
    to train or score on) or, if not said (None), when RAY_ADDRESS names a cluster; else `local`
    (this process)."""
    if name is not None:
        EXECUTORS.get(name)  # registered, or the user's mistake in one line
        if ray and name != "ray":
            raise UserError.about("executor", name, "--ray asks for the ray executor; give one of the two")
        return name
    if actors:
        return "ray"
    if ray is None:
        ray = bool(os.environ.get("RAY_ADDRESS"))
    return "ray" if ray else "local"


def make_executor(name: str | None = None, *, actors: int = 0) -> Executor:
    """The executor registered as `name` (`local`, `ray`, or one registered in `EXECUTORS`);
    None: by `executor_name`'s rule.

    Args:
        name: which executor. `ray` joins the cluster at RAY_ADDRESS, else starts a local one.
        actors: on Ray, how many actors score or run jobs at once (default: all CPUs).
    """
    return EXECUTORS.get(name or executor_name())(actors)


def deferred_executor(name: str | None = None, *, actors: int = 0) -> Executor:
    """`make_executor`, made only when work first needs it (a stream that finds nothing new
    starts no Ray)."""
    name = name or executor_name()
    make = EXECUTORS.get(name)
    if name == "local":
        return make(actors)
    address = os.environ.get("RAY_ADDRESS")
    if name != "ray":
        planned = f"the {name} executor (made when work needs it)"
    elif address:
        planned = f"the Ray cluster at {address}"
    else:
        planned = "a local Ray (started when a file needs it)"
    return Deferred(lambda: make(actors), planned)
