"""Data-parallel updates on actors, in the way each strategy declares (`can.data_parallel`).

- `averaging` (the fine-tuning strategies): every actor holds a disjoint shard of the
  training rows and a copy of the model with its own optimizer state; every
  `sync_steps` steps the driver averages the copies' weights (by shard size) and sends
  the average back (synchronous local SGD), for the strategy's epochs over each shard.
- `bagging` (the ensembles): each actor fits one new member on its own shard; the
  members join the current ones under the strategy's `max_members` and weighting.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import ray

from continual_trainer.cluster.pool import ACTOR_MEMORY
from continual_trainer.cluster.runtime import get, kill, pin_threads
from continual_trainer.data.errors import UserError
from continual_trainer.data.rows import Rows
from continual_trainer.strategies.base import TrainParams, training_set
from continual_trainer.strategies.ensemble import combine
from continual_trainer.trainer.candidate import Candidate
from continual_trainer.trainer.executor import Job
from continual_trainer.trainer.loop import LoopConfig
from continual_trainer.trainer.updatedata import UpdateData


def _shards(n_rows: int, n: int, seed: int) -> list[np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n_rows)
    return [np.sort(s) for s in np.array_split(perm, n) if len(s)]


@ray.remote
class ShardTrainer:
    """A model copy training on one shard, `steps` at a time, keeping its optimizer state."""

    def __init__(
        self,
        model: bytes,
        rows: Rows,
        weights: np.ndarray | None,
        config: LoopConfig,
        seed: int,
        task: tuple[str, float],
    ) -> None:
        pin_threads()
        from continual_trainer.trainer.models import from_bytes

        self.model = from_bytes(model)
        self.task, self.target_std = task
        self.rows, self.weights, self.config = rows, weights, config
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.order = self.rng.permutation(len(rows))
        self.pos = 0
        self.rounds = 0
        self.state: Any = None

    def steps(self, weights: list[np.ndarray] | None, steps: int) -> list[np.ndarray]:
        from continual_trainer.trainer.loop import train
        from continual_trainer.trainer.models import feed

        if weights is not None:
            self.model.set_weights(weights)
        take = []
        need = steps * self.config.batch_size
        while need > 0:  # the next rows of this shard's epoch; a new permutation when it ends
            if self.pos == len(self.order):
                self.order, self.pos = self.rng.permutation(len(self.order)), 0
            chunk = self.order[self.pos : self.pos + need]
            take.append(chunk)
            self.pos += len(chunk)
            need -= len(chunk)
        index = np.concatenate(take)
        w = None if self.weights is None else self.weights[index]
        one_pass = dataclasses.replace(self.config, epochs=1, patience=0, max_seconds=0.0)  # rounds: no stopping
        part = self.rows.take(index)
        result = train(
            self.model,
            feed(self.model, part.x),
            part.y,
            one_pass,
            sample_weight=w,
            seed=self.seed,
            state=self.state,
            first_epoch=self.rounds,
            task=self.task,
            target_std=self.target_std,
        )
        self.state, self.rounds = result.state, self.rounds + 1
        return self.model.get_weights()


def finetune_averaged(
    data: UpdateData, current: Candidate, params: TrainParams, seed: int, *, actors: int, sync_steps: int
) -> Candidate:
    """Fine-tune the current (single) network on `actors` shards with model averaging."""
    from continual_trainer.trainer.models import clone, model_classes, to_bytes

    if len(current.members) != 1:
        raise UserError(
            f"--actors: data-parallel fine-tuning needs a single network; current has {len(current.members)} members"
        )
    if data.n_classes and model_classes(current.members[0]) < data.n_classes:
        raise UserError("the current model lacks the store's new classes; fine-tuning cannot add outputs")
    rows, weights = training_set(data.inputs(current, seed), params)
    shards = _shards(len(rows), actors, seed)
    config = params.loop_config()
    model_ref = ray.put(to_bytes(current.members[0]))
    trainers = [
        ShardTrainer.options(num_cpus=1, memory=ACTOR_MEMORY).remote(
            model_ref, rows.take(s), None if weights is None else weights[s], config, seed + i, _task(data)
        )
        for i, s in enumerate(shards)
    ]
    sizes = np.array([len(s) for s in shards], np.float64)
    total = params.epochs * math.ceil(max(sizes) / config.batch_size)
    averaged, done = None, 0
    try:
        while done < total:
            k = min(sync_steps, total - done)
            copies = get([t.steps.remote(averaged, k) for t in trainers])
            averaged = [
                np.average(np.stack(ws), axis=0, weights=sizes).astype(ws[0].dtype) for ws in zip(*copies, strict=True)
            ]
            done += k
    finally:
        kill(trainers)
    model = clone(current.members[0])
    model.set_weights(averaged)
    return Candidate.single(model)


def _task(data: UpdateData) -> tuple[str, float]:
    """The task and, for regression, the label's scale the loss is measured in (as locally)."""
    if data.n_classes == 0:
        return "regression", data.target[1] if data.target else 1.0
    return "classification", 1.0


@ray.remote(num_cpus=1)
def _fit_member(data: UpdateData, rows: Rows, weights: np.ndarray | None, config: LoopConfig, seed: int) -> bytes:
    pin_threads()
    from continual_trainer.trainer.loop import train
    from continual_trainer.trainer.models import build_model, feed, to_bytes

    model = build_model(data.model_spec, data.input_spec, data.n_classes, seed, data.target)
    task, target_std = _task(data)
    train(
        model, feed(model, rows.x), rows.y, config, sample_weight=weights, seed=seed, task=task, target_std=target_std
    )
    return to_bytes(model)


def bagged_ensemble(data: UpdateData, current: Candidate, params: Any, seed: int, *, actors: int) -> Candidate:
    """Fit one new member per actor, each on its own shard, and add them to the current members."""
    from continual_trainer.trainer.models import from_bytes

    inputs = data.inputs(current, seed)
    rows, weights = training_set(inputs, params)
    shards = _shards(len(rows), actors, seed)
    shipped = ray.put(data)
    refs = [
        _fit_member.options(memory=ACTOR_MEMORY).remote(
            shipped,
            rows.take(s),
            None if weights is None else weights[s],
            params.loop_config(),
            seed + i,
        )
        for i, s in enumerate(shards)
    ]
    members = tuple(from_bytes(b) for b in get(refs))
    return combine(inputs, members, params)


def fit_parallel(data: UpdateData, current: Candidate, job: Job) -> tuple[Candidate, dict[str, Any]]:
    """Train `job` data-parallel on `job.actors` actors, the way its strategy declares; return
    the candidate and how it ran (for the manifest)."""
    mode = job.strategy.can.data_parallel
    if mode == "averaging":
        if job.sync_steps < 1:
            raise UserError(f"--sync-steps must be >= 1, got {job.sync_steps}")
        candidate = finetune_averaged(data, current, job.params, job.seed, actors=job.actors, sync_steps=job.sync_steps)
        return candidate, {"mode": "model_averaging", "actors": job.actors, "sync_steps": job.sync_steps}
    if mode == "bagging":
        candidate = bagged_ensemble(data, current, job.params, job.seed, actors=job.actors)
        return candidate, {"mode": "bagging", "actors": job.actors}
    raise UserError(f"--actors: {job.strategy.name} does not train data-parallel")
