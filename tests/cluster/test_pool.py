"""Trainer actors give the same results as the local pipeline, and pin their threads."""

from __future__ import annotations

import numpy as np
import pytest

from continual_trainer import strategies
from continual_trainer.cluster.pool import TrainerActor, run_jobs
from continual_trainer.data.storage import Store
from continual_trainer.executor import Job
from continual_trainer.trials import run_strategy
from continual_trainer.updatedata import load_update_data
from continual_trainer.versions import load_candidate, stored_candidate


@pytest.mark.ray
def test_actor_results_match_local_results(ray_cluster, tiny_store: str) -> None:
    store = Store.open(tiny_store)
    data = load_update_data(store)
    current = load_candidate(store, data.parent)
    names = ["finetune_new", "ensemble_all", "graft"]
    jobs = [Job(strategies.get(n), strategies.get(n).make_params({"epochs": "4"}), 3) for n in names]
    done = []
    remote = run_jobs(
        data, stored_candidate(store, data.parent), jobs, on_done=lambda i, r: done.append(jobs[i].strategy.name)
    )
    assert sorted(done) == sorted(names)
    for job, r in zip(jobs, remote, strict=True):
        local = run_strategy(data, current, job.strategy, job.params, job.seed)
        assert r.metrics.keys() == local.metrics.keys()
        np.testing.assert_allclose(
            r.candidate.predict_proba(data.new.x, data.n_classes),
            local.candidate.predict_proba(data.new.x, data.n_classes),
            atol=1e-5,
        )


@pytest.mark.ray
@pytest.mark.parametrize("cpus", [1, 2])
def test_actor_pins_tensorflow_to_its_cpus(ray_cluster, cpus: int) -> None:
    import ray

    actor = TrainerActor.options(num_cpus=cpus).remote()
    try:
        assert ray.get(actor.thread_pools.remote()) == (cpus, cpus)
        assert ray.get(actor.peak_memory_bytes.remote()) > 0
    finally:
        ray.kill(actor)
