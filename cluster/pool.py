"""Trainer actors: long-lived workers that import TensorFlow once and run strategies."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ray

from cluster.runtime import pin_threads
from data.rows import Rows
from trainer.candidate import Candidate
from trainer.pipeline import TrialResult, UpdateData, run_strategy

ACTOR_MEMORY = 1024**3  # what one trainer declares to Ray; peak measured at 933 MiB (scripts/bench_sweep.py)


@dataclass(frozen=True)
class Job:
    """One strategy run to do on an actor."""

    strategy: Any  # strategies.Strategy: shipped whole, so strategies registered by the caller work too
    params: Any
    seed: int


@dataclass(frozen=True)
class PackedResult:
    """A TrialResult with its members as `.keras` bytes, fit to cross process boundaries."""

    files: list[bytes]
    weights: tuple[float, ...]
    metrics: dict[str, float | None]
    current_metrics: dict[str, float | None]
    train_seconds: float

    def unpack(self) -> TrialResult:
        return TrialResult(
            Candidate.from_files(self.files, self.weights), self.metrics, self.current_metrics, self.train_seconds
        )


@ray.remote
class TrainerActor:
    """Runs strategies against shared update data; caches the current model it was sent."""

    def __init__(self) -> None:
        self.threads = pin_threads()
        self._current_key: Any = None
        self._current: Candidate | None = None

    def run(
        self,
        data: UpdateData,
        current: tuple[list[bytes], tuple[float, ...]],
        job: Job,
        extra_eval: Mapping[str, Rows] | None = None,
    ) -> PackedResult:
        from trainer.models import to_bytes

        key = (data.parent, len(current[0]))
        if self._current_key != key:
            self._current = Candidate.from_files(*current)
            self._current_key = key
        result = run_strategy(data, self._current, job.strategy, job.params, job.seed, extra_eval)
        files = [to_bytes(m) for m in result.candidate.members]
        return PackedResult(
            files, result.candidate.weights, result.metrics, result.current_metrics, result.train_seconds
        )

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
    current: tuple[list[bytes], tuple[float, ...]],
    jobs: Sequence[Job],
    *,
    actors: int | None = None,
    extra_eval: Mapping[str, Rows] | None = None,
    on_done: Callable[[Job, TrialResult], None] | None = None,
) -> list[TrialResult]:
    """Run `jobs` in parallel on trainer actors; results in the order of `jobs`.

    `current` is the current version's stored member files and weights
    (`trainer.pipeline.candidate_files`). They and the update data go into the object
    store once; every actor reads them from there. An actor that dies is restarted and
    its job retried.
    """
    cpus = int(ray.available_resources().get("CPU", 1)) or 1
    n = max(1, min(actors or cpus, len(jobs)))
    options = {"num_cpus": 1, "memory": ACTOR_MEMORY, "max_restarts": 2, "max_task_retries": 2}
    idle = [TrainerActor.options(**options).remote() for _ in range(n)]
    refs = (ray.put(data), ray.put(current), ray.put(dict(extra_eval or {})))
    queue = list(enumerate(jobs))
    pending: dict[Any, tuple[int, Any]] = {}
    results: list[TrialResult | None] = [None] * len(jobs)
    while queue or pending:
        while queue and idle:
            i, job = queue.pop(0)
            actor = idle.pop()
            pending[actor.run.remote(refs[0], refs[1], job, refs[2])] = (i, actor)
        (done,), _ = ray.wait(list(pending), num_returns=1)
        i, actor = pending.pop(done)
        idle.append(actor)
        results[i] = ray.get(done).unpack()
        if on_done:
            on_done(jobs[i], results[i])
    for actor in idle:
        ray.kill(actor)
    return results  # type: ignore[return-value]
