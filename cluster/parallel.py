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
import functools
import itertools
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import ray

from continual_trainer.cluster.pool import ACTOR_MEMORY, PackedResult
from continual_trainer.cluster.runtime import get, kill, pin_threads
from continual_trainer.data.chunks import StoredRows
from continual_trainer.data.errors import UserError
from continual_trainer.data.rows import Rows, RowSource, shard_index, with_statistics
from continual_trainer.data.storage import trust, verified
from continual_trainer.executor import Failure, Job, WorkFailed, run_job
from continual_trainer.strategies.base import TrainParams, training_set
from continual_trainer.strategies.ensemble import combine
from continual_trainer.trainer.candidate import Candidate
from continual_trainer.trainer.evaluate import join_parts
from continual_trainer.trainer.loop import LoopConfig, prefetched
from continual_trainer.trials import stored_parts
from continual_trainer.updatedata import UpdateData
from continual_trainer.versions import StoredCandidate


@ray.remote
class ShardTrainer:
    """A model copy training on one shard, `steps` at a time, keeping its optimizer state.
    It starts empty (TensorFlow loaded), so it can start while the coordinator prepares the
    shards; `begin` gives it its work."""

    def __init__(self) -> None:
        pin_threads()

    def begin(
        self,
        model: bytes,
        rows: RowSource,
        weights: Any,
        config: LoopConfig,
        seed: int,
        task: tuple[str, float],
        checked: frozenset[tuple[Any, ...]] = frozenset(),
        resume: tuple[int, int] = (0, 0),
    ) -> None:
        """Take a shard: `checked` are batch files the coordinator checked against their sha256
        (so each is hashed once per job, not once per actor); `resume` (rounds, steps) done by
        an actor this one replaces: its rows of those steps are passed over, in the same order."""
        from continual_trainer.trainer.models import from_bytes

        trust(checked)
        self.model = from_bytes(model)
        self.task, self.target_std = task
        self.config = config
        self.seed = seed
        self.source = _Shuffled(rows.load(), weights, seed) if rows.in_memory else _StoredStream(rows, weights, seed)
        self.rounds, skip = resume[0], resume[1] * config.batch_size
        while skip > 0:
            skip -= len(self.source.take(min(skip, SKIP_ROWS))[0])
        self.state: Any = None

    def score(
        self, model: bytes, weights: list[np.ndarray], rows: StoredRows, n_classes: int
    ) -> tuple[dict[str, np.ndarray], int]:
        """`trials.stored_parts` of the network with `weights` on these stored rows (this
        actor's share of a batch's held-out rows)."""
        from continual_trainer.trainer.models import from_bytes

        if getattr(self, "scorer", None) is None:
            self.scorer = from_bytes(model)
        self.scorer.set_weights(weights)
        return stored_parts(Candidate.single(self.scorer), rows, n_classes)

    def steps(self, weights: list[np.ndarray] | None, steps: int) -> list[np.ndarray]:
        from continual_trainer.trainer.loop import train
        from continual_trainer.trainer.models import feed

        if weights is not None:
            self.model.set_weights(weights)
        part, w = self.source.take(steps * self.config.batch_size)
        one_pass = dataclasses.replace(self.config, epochs=1, patience=0, max_seconds=0.0)  # rounds: no stopping
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


class _Shuffled:
    """The next rows of a shard held in memory: its epochs, each in a fresh permutation."""

    def __init__(self, rows: Rows, weights: np.ndarray | None, seed: int) -> None:
        self.rows, self.weights = rows, weights
        self.rng = np.random.default_rng(seed)
        self.order, self.pos = self.rng.permutation(len(rows)), 0

    def take(self, n: int) -> tuple[Rows, np.ndarray | None]:
        take = []
        while n > 0:  # the next rows of this shard's epoch; a new permutation when it ends
            if self.pos == len(self.order):
                self.order, self.pos = self.rng.permutation(len(self.order)), 0
            chunk = self.order[self.pos : self.pos + n]
            take.append(chunk)
            self.pos += len(chunk)
            n -= len(chunk)
        index = np.concatenate(take)
        return self.rows.take(index), None if self.weights is None else self.weights[index]


class _StoredStream:
    """The next rows of a shard left in the store, read a chunk at a time by a thread while
    the actor trains: passes over its row groups in an order fixed by the seed and the pass,
    each chunk's rows shuffled."""

    def __init__(self, rows: RowSource, weights: Any, seed: int) -> None:
        self.rows, self.weights, self.seed = rows, weights, seed
        self.pieces = prefetched(self._passes(), depth=2)
        self.pending: list[Rows] = []

    def _passes(self) -> Any:
        rng = np.random.default_rng(self.seed)
        for n in itertools.count():
            read = 0
            for piece in self.rows.chunks(shuffle_seed=self.seed * 1_000_003 + n):
                read += len(piece)
                yield piece.take(rng.permutation(len(piece)))
            if not read:
                raise UserError("an actor's shard has no rows")

    def take(self, n: int) -> tuple[Rows, np.ndarray | None]:
        have = sum(len(p) for p in self.pending)
        while have < n:
            self.pending.append(next(self.pieces))
            have += len(self.pending[-1])
        rows = Rows.concat(self.pending) if len(self.pending) > 1 else self.pending[0]
        out, rest = rows.view(0, n), rows.view(n, len(rows))
        self.pending = [rest] if len(rest) else []
        return out, None if self.weights is None else self.weights(out.order)


SKIP_ROWS = 65_536  # rows passed over at a time by a replacement actor
REPLACEMENTS = 2  # actors replaced per job before model averaging gives up


def start_trainers(n: int) -> list[Any]:
    """`n` shard trainers, starting (each loads TensorFlow on a CPU of its own)."""
    make = ShardTrainer.options(num_cpus=1, memory=ACTOR_MEMORY)  # type: ignore[attr-defined]  # a @ray.remote class: mypy does not apply class decorators
    return [make.remote() for _ in range(n)]


def finetune_averaged(
    data: UpdateData,
    current: Candidate,
    params: TrainParams,
    seed: int,
    *,
    actors: int,
    sync_steps: int,
    trainers: list[Any] | None = None,
) -> tuple[Candidate, float, int]:
    """Fine-tune the current (single) network on `actors` shards with model averaging; return
    it, the seconds until every actor had its shard (included in the training time) and how
    many actors died and were replaced (a replacement starts from the last average, with a
    fresh optimizer state, and passes over the rows its shard has trained on). `trainers`
    (from `start_trainers`) are used if given, replacements put in their place, and left to
    the caller to kill (e.g. after they scored the holdout); else they are started and killed
    here.

    Raises:
        WorkFailed: actors died more than `REPLACEMENTS` times.
    """
    from continual_trainer.trainer.models import clone, model_classes, set_weights, to_bytes

    began = time.perf_counter()
    owned = trainers is None
    pool = start_trainers(actors) if trainers is None else trainers
    averaged, done = None, 0
    try:
        if len(current.members) != 1:
            members = len(current.members)
            raise UserError.about(
                "actors", None, f"data-parallel fine-tuning needs a single network; current has {members} members"
            )
        if data.n_classes and model_classes(current.members[0]) < data.n_classes:
            raise UserError("the current model lacks the store's new classes; fine-tuning cannot add outputs")
        rows, weights = training_set(data.inputs(current, seed), params)
        config = params.loop_config()
        model_ref = ray.put(to_bytes(current.members[0]))
        parts = list(_parts(rows, weights, actors, seed))
        rows.verify()  # stored rows: checked here while the actors start, not by each of them
        checked = verified()
        trainers = pool[: len(parts)]  # fewer shards than actors: fewer row groups than actors

        def begin(i: int, trainer: Any, resume: tuple[int, int] = (0, 0)) -> Any:
            part, w = parts[i]
            return trainer.begin.remote(model_ref, part, w, config, seed + i, _task(data), checked, resume)

        get([begin(i, t) for i, t in enumerate(trainers)])
        started = time.perf_counter() - began
        sizes = np.array([len(part) for part, _ in parts], np.float64)
        total = params.epochs * math.ceil(max(sizes) / config.batch_size)
        replaced, rounds = 0, 0
        while done < total:
            k = min(sync_steps, total - done)
            refs = [t.steps.remote(averaged, k) for t in trainers]
            copies = []
            for i, ref in enumerate(refs):
                while True:
                    try:
                        copies.append(get(ref))
                        break
                    except ray.exceptions.RayActorError as exc:  # its process or node died: replace it
                        replaced += 1
                        if replaced > REPLACEMENTS:
                            what = type(exc).__name__
                            raise WorkFailed(f"model averaging: actors died {replaced} times ({what})") from None
                        trainers[i] = pool[i] = start_trainers(1)[0]  # the caller's list holds it too
                        begin(i, trainers[i], (rounds, done))  # passes over its shard's rows up to here
                        ref = trainers[i].steps.remote(averaged, k)
            averaged = [
                np.average(np.stack(ws), axis=0, weights=sizes).astype(ws[0].dtype) for ws in zip(*copies, strict=True)
            ]
            done, rounds = done + k, rounds + 1
    finally:
        if owned:
            kill(pool)
    if averaged is None:
        raise WorkFailed("model averaging: no round of training ran")
    model = clone(current.members[0])
    set_weights(model, averaged)
    return Candidate.single(model), started, replaced


def _parts(rows: Any, weights: Any, actors: int, seed: int) -> Any:
    """Each actor's shard of the training rows and its weights: rows in memory split at random,
    rows left in the store by row groups (each actor reads its own; the weights stay a function
    of the rows' batch)."""
    if not rows.in_memory:
        shards = [rows.sharded(i, actors) for i in range(actors)]
        yield from ((s, weights) for s in shards if len(s))
        return
    held = rows.load()
    for i in range(actors):
        s = shard_index(len(held), i, actors, seed)
        if len(s):
            yield held.take(s), None if weights is None else weights[s]


def _task(data: UpdateData) -> tuple[str, float]:
    """The task and, for regression, the label's scale the loss is measured in (as locally)."""
    if data.n_classes == 0:
        return "regression", data.target[1] if data.target else 1.0
    return "classification", 1.0


@ray.remote(num_cpus=1)
def _fit_member(
    data: UpdateData, rows: RowSource, weights: Any, config: LoopConfig, seed: int, checked: frozenset
) -> bytes:
    pin_threads()
    trust(checked)
    from continual_trainer.strategies.base import passes_over
    from continual_trainer.trainer.loop import train, train_stream
    from continual_trainer.trainer.models import build_model, feed, to_bytes

    model = build_model(data.model_spec, data.input_spec, data.n_classes, seed, data.target, adapt=True)
    task, target_std = _task(data)
    if not rows.in_memory:  # this actor's row groups, read from the store a chunk at a time
        passes = passes_over(model, rows, weights, seed)
        train_stream(model, passes, config, seed=seed, task=task, target_std=target_std)
    else:
        held = rows.load()
        x = feed(model, held.x)
        train(model, x, held.y, config, sample_weight=weights, seed=seed, task=task, target_std=target_std)
    return to_bytes(model)


def bagged_ensemble(data: UpdateData, current: Candidate, params: Any, seed: int, *, actors: int) -> Candidate:
    """Fit one new member per actor, each on its own shard, and add them to the current members."""
    from continual_trainer.trainer.models import from_bytes

    inputs = data.inputs(current, seed)
    rows, weights = training_set(inputs, params)
    rows.verify()  # stored rows: once here, not by each actor
    # New members read the data as it is now: input statistics over the whole training set.
    pieces = rows.chunks()
    shipped = ray.put(dataclasses.replace(data, input_spec=with_statistics(data.input_spec, pieces)))
    refs = [
        _fit_member.options(memory=ACTOR_MEMORY).remote(shipped, part, w, params.loop_config(), seed + i, verified())
        for i, (part, w) in enumerate(_parts(rows, weights, actors, seed))
    ]
    members = tuple(from_bytes(b) for b in get(refs))
    return combine(inputs, members, params)


@ray.remote(num_cpus=0)
def coordinate(
    data: UpdateData, current: StoredCandidate, job: Job, extra_eval: Mapping[str, Rows]
) -> PackedResult | Failure:
    """Run a data-parallel job from a worker: the shards' actors, the averaging and the scoring
    happen off the driver, which gets the scored candidate back as bytes. It takes no CPU of
    its own (it waits on the actors that do). Averaging actors start first, loading
    TensorFlow while this worker loads the current model."""
    early = start_trainers(job.actors) if job.strategy.can.data_parallel == "averaging" and job.sync_steps >= 1 else []
    try:
        fit = functools.partial(fit_parallel, trainers=early)
        model = current.load()
        parts_of = ShardedParts(early, model) if early else stored_parts
        return PackedResult.pack(run_job(data, model, job, extra_eval, fit=fit, parts_of=parts_of))
    finally:
        kill(early)


class ShardedParts:
    """`trials.stored_parts` for a single network, sharded: each trainer actor scores its row
    groups of a batch (as they trained on theirs); where one has died, this process scores
    the batch."""

    def __init__(self, trainers: list[Any], current: Candidate) -> None:
        from continual_trainer.trainer.models import to_bytes

        self.trainers = trainers
        self.model = ray.put(to_bytes(current.members[0]))
        self.weights: dict[int, Any] = {}

    def __call__(self, candidate: Candidate, rows: StoredRows, n_classes: int) -> tuple[dict[str, np.ndarray], int]:
        if len(candidate.members) != 1:
            return stored_parts(candidate, rows, n_classes)
        key = id(candidate)
        if key not in self.weights:
            self.weights[key] = ray.put(candidate.members[0].get_weights())
        n = len(self.trainers)
        try:
            shares = get(
                [
                    t.score.remote(self.model, self.weights[key], rows.sharded(i, n), n_classes)
                    for i, t in enumerate(self.trainers)
                ]
            )
        except ray.exceptions.RayActorError:
            return stored_parts(candidate, rows, n_classes)
        kept = [parts for parts, _ in shares if parts]
        return (join_parts(kept) if kept else {}), sum(missing for _, missing in shares)


def fit_parallel(
    data: UpdateData, current: Candidate, job: Job, trainers: list[Any] | None = None
) -> tuple[Candidate, dict[str, Any]]:
    """Train `job` data-parallel on `job.actors` actors, the way its strategy declares; return
    the candidate and how it ran (for the manifest). Averaging uses `trainers` if started."""
    mode = job.strategy.can.data_parallel
    if mode == "averaging":
        if job.sync_steps < 1:
            raise UserError.about("sync_steps", job.sync_steps, "must be >= 1")
        candidate, started, replaced = finetune_averaged(
            data, current, job.params, job.seed, actors=job.actors, sync_steps=job.sync_steps, trainers=trainers
        )
        how = {"mode": "model_averaging", "actors": job.actors, "sync_steps": job.sync_steps}
        return candidate, {**how, "start_seconds": round(started, 2), **({"replaced": replaced} if replaced else {})}
    if mode == "bagging":
        candidate = bagged_ensemble(data, current, job.params, job.seed, actors=job.actors)
        return candidate, {"mode": "bagging", "actors": job.actors}
    raise UserError.about("actors", None, f"{job.strategy.name} does not train data-parallel")
