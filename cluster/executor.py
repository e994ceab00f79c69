"""The Ray implementation of `trainer.executor.Executor`: trainer actors, Tune trials, sharded scoring."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from continual_trainer.cluster import pool, runtime
from continual_trainer.data.rows import Rows
from continual_trainer.executor import (
    Failure,
    Job,
    OnDone,
    OnTrialDone,
    Outcome,
    Schedule,
    SweepSettings,
    run_job,
)

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from continual_trainer.data.storage import Store
    from continual_trainer.updatedata import UpdateData
    from continual_trainer.versions import StoredCandidate


class RayExecutor:
    """Work on the Ray cluster at RAY_ADDRESS, or on a local Ray started on first use.

    Args:
        actors: how many actors score a file (`predict --actors`) or run jobs at
            once (default: one per CPU of the cluster).
    """

    def __init__(self, actors: int = 0) -> None:
        runtime.connect()
        self.actors = actors
        self.where = runtime.describe()

    def run(
        self,
        data: UpdateData,
        current: StoredCandidate,
        jobs: Sequence[Job],
        *,
        extra_eval: Mapping[str, Rows] | None = None,
        on_done: OnDone | None = None,
    ) -> list[Outcome]:
        parallel = [i for i, job in enumerate(jobs) if job.actors > 1]
        if not parallel:
            return pool.run_jobs(
                data, current, jobs, actors=self.actors or None, extra_eval=extra_eval, on_done=on_done
            )
        import ray

        from continual_trainer.cluster.parallel import coordinate, fit_parallel

        in_pieces = not data.new.in_memory
        shipped = ray.put(data) if in_pieces else None
        outcomes: list[Outcome] = []
        model = None
        for i, job in enumerate(jobs):  # each data-parallel job uses the whole cluster in turn
            if i in parallel and shipped is not None:  # above the memory budget the driver holds no rows nor scores
                packed = runtime.get(coordinate.remote(shipped, current, job, dict(extra_eval or {})))
                outcomes.append(packed if isinstance(packed, Failure) else packed.unpack())
            else:
                model = current.load() if model is None else model
                outcomes.append(run_job(data, model, job, extra_eval, fit=fit_parallel if i in parallel else None))
            if on_done:
                on_done(i, outcomes[-1])
        return outcomes

    def sweep(
        self,
        data: UpdateData,
        current: StoredCandidate,
        jobs: Sequence[Job],
        settings: SweepSettings,
        on_done: OnTrialDone,
        schedule: Schedule | None = None,
    ) -> None:
        from continual_trainer.cluster.tune import run_trials

        run_trials(data, current, jobs, settings, on_done, schedule)

    def score(self, store: Store, version: str, uri: str, table: pa.Table) -> np.ndarray:
        import ray

        from continual_trainer.cluster.sharded import ScorerPool

        scorers = ScorerPool.start(store, version, self.actors or max(1, int(ray.cluster_resources().get("CPU", 1))))
        try:
            return scorers.score(uri)[0]
        finally:
            scorers.stop()
