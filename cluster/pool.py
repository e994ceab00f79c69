"""Trainer actors: long-lived workers that import TensorFlow once and run jobs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ray

from continual_trainer.cluster.runtime import kill, pin_threads
from continual_trainer.data.rows import Rows
from continual_trainer.executor import Failure, Job, OnDone, Outcome, run_job
from continual_trainer.trials import TrialResult
from continual_trainer.updatedata import UpdateData
from continual_trainer.versions import StoredCandidate

ACTOR_MEMORY = 1024**3  # what one trainer declares to Ray; peak measured at 783 MiB (scripts/bench_sweep.py)
WAIT_SECONDS = 0.5  # the longest a signal waits for the driver to see it


@dataclass(frozen=True)
class PackedResult:
    """A TrialResult with its candidate as `.keras` bytes, fit to cross process boundaries."""

    result: TrialResult
    candidate: StoredCandidate

    @classmethod
    def pack(cls, outcome: Outcome) -> PackedResult | Failure:
        if isinstance(outcome, Failure):
            return outcome
        assert outcome.candidate is not None
        return cls(dataclasses.replace(outcome, candidate=None), StoredCandidate.of(outcome.candidate))

    def unpack(self) -> TrialResult:
        return dataclasses.replace(self.result, candidate=self.candidate.load())


class CurrentCache:
    """The current model, loaded once per worker process for as long as jobs use the same one."""

    def __init__(self) -> None:
        self._key: Any = None
        self._model: Any = None

    def get(self, data: UpdateData, current: StoredCandidate) -> Any:
        key = (data.parent, current.weights, tuple(len(f) for f in current.files))
        if key != self._key:
            self._model, self._key = current.load(), key
        return self._model


@ray.remote
class TrainerActor:
    """Runs jobs against shared update data; keeps the current model it was sent."""

    def __init__(self) -> None:
        self.threads = pin_threads()
        self.current = CurrentCache()

    def run(
        self, data: UpdateData, current: StoredCandidate, job: Job, extra_eval: Mapping[str, Rows]
    ) -> PackedResult | Failure:
        return PackedResult.pack(run_job(data, self.current.get(data, current), job, extra_eval))

    def thread_pools(self) -> tuple[int, int]:
        """TensorFlow's (intra-op, inter-op) pool sizes in this actor."""
        import tensorflow as tf

        return (
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
        )

    def peak_memory_bytes(self) -> int:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_jobs(
    data: UpdateData,
    current: StoredCandidate,
    jobs: Sequence[Job],
    *,
    actors: int | None = None,
    extra_eval: Mapping[str, Rows] | None = None,
    on_done: OnDone | None = None,
) -> list[Outcome]:
    """Run `jobs` in parallel on trainer actors; outcomes in the order of `jobs`.

    The update data, the current model's stored files and `extra_eval` go into the
    object store once; every actor reads them from there. An actor that dies is
    restarted and its job retried; one that keeps dying gives a Failure.
    """
    cpus = int(ray.available_resources().get("CPU", 1)) or 1
    n = max(1, min(actors or cpus, len(jobs)))
    options = {"num_cpus": 1, "memory": ACTOR_MEMORY, "max_restarts": 2, "max_task_retries": 2}
    idle = [TrainerActor.options(**options).remote() for _ in range(n)]  # type: ignore[attr-defined]  # a @ray.remote class: mypy does not apply class decorators
    refs = (ray.put(data), ray.put(current), ray.put(dict(extra_eval or {})))
    queue = list(enumerate(jobs))
    pending: dict[Any, tuple[int, Any]] = {}
    outcomes: list[Outcome | None] = [None] * len(jobs)
    try:
        while queue or pending:
            while queue and idle:
                i, job = queue.pop(0)
                actor = idle.pop()
                pending[actor.run.remote(refs[0], refs[1], job, refs[2])] = (i, actor)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_SECONDS)
            if not ready:  # back in Python between waits: a signal's handler runs (Ray's wait never returns for it)
                continue
            (done,) = ready
            i, actor = pending.pop(done)
            idle.append(actor)
            try:
                packed = ray.get(done)
            except ray.exceptions.RayActorError as exc:
                packed = Failure(f"{jobs[i].strategy.name}: its worker died ({type(exc).__name__})", user_error=False)
            outcome = packed if isinstance(packed, Failure) else packed.unpack()
            outcomes[i] = outcome
            if on_done:
                on_done(i, outcome)
    finally:
        kill(idle + [a for _, a in pending.values()])
    return outcomes  # type: ignore[return-value]
