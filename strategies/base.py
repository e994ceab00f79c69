"""What a strategy is given, shared parameter sets, and the training-set recipe."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from continual_trainer.data.errors import UserError
from continual_trainer.data.rows import Rows, RowSource, with_statistics
from continual_trainer.data.sampling import importance_weights, recency_weights
from continual_trainer.trainer.loop import LoopConfig, LossHook, train, train_stream
from continual_trainer.trainer.models import ModelSpec, build_model, feed
from continual_trainer.trainer.params import Choice, Interval, Params, Rule, param

if TYPE_CHECKING:
    import keras

    from continual_trainer.data.schema import InputInfo
    from continual_trainer.trainer.candidate import Candidate

WEIGHTINGS = ("none", "recency", "importance")


@dataclass(frozen=True)
class UpdateRows:
    """The rows of one update and the store's recipe for networks: what the update's data
    (`continual_trainer.updatedata.UpdateData`) holds and every strategy is given.

    Attributes:
        old: training rows of the batches the current model has seen.
        new: training rows of the batches that arrived since.
        old_holdout, new_holdout: the held-out rows of those batches.
        n_classes: classes the store knows now (may exceed what the current model knows);
            0 for regression.
        model_spec: the store's network recipe, for fresh models.
        input_spec: the model inputs the store's columns give (`data.schema.InputInfo`).
        target: a regression label's first-batch mean and standard deviation (see
            `data.schema.Schema.target`).
    """

    old: RowSource
    new: RowSource
    old_holdout: RowSource
    new_holdout: RowSource
    n_classes: int
    model_spec: ModelSpec
    input_spec: Mapping[str, InputInfo] = field(default_factory=dict)
    target: tuple[float, float] | None = None

    @functools.cached_property
    def holdout(self) -> RowSource:
        """Held-out rows of old and new batches, for model selection such as fitted ensemble
        weights (the caller reports metrics on the same rows); left in the store: read when used."""
        return self.old_holdout.join(self.new_holdout)

    @property
    def regression(self) -> bool:
        return self.n_classes == 0

    def rows(self) -> dict[str, Any]:
        """These fields by name, to build an `UpdateInputs` or `UpdateData` from them."""
        return {f.name: getattr(self, f.name) for f in fields(UpdateRows)}


@dataclass(frozen=True, kw_only=True)
class UpdateInputs(UpdateRows):
    """Everything a strategy may use; strategies must not mutate any of it: the update's rows
    (`UpdateRows`), the current version and a seed.

    Attributes:
        current: the promoted model or ensemble.
        seed: fixes initialisation, sampling and shuffling.
    """

    current: Candidate
    seed: int

    def fresh_model(self, seed_offset: int = 0, rows: RowSource | None = None) -> keras.Model:
        """A new network of the store's recipe, covering every class the store knows; with
        `rows`, its input statistics are theirs (see `fit_fresh`), else the store's first batch's."""
        if rows is None:
            return build_model(self.model_spec, self.input_spec, self.n_classes, self.seed + seed_offset, self.target)
        spec = with_statistics(self.input_spec, rows.chunks())
        return build_model(self.model_spec, spec, self.n_classes, self.seed + seed_offset, self.target, adapt=True)


@dataclass(frozen=True)
class NoParams(Params):
    """A strategy without parameters."""

    def reads_old(self, state: Mapping[str, Any]) -> bool:
        return False


def reads_old(params: Any, state: Mapping[str, Any]) -> bool:
    """Whether a strategy with these parameters needs the old batches' training rows, given
    the current version's state (a replay memory can stand in for them). Parameters that do
    not say are assumed to."""
    method = getattr(params, "reads_old", None)
    return True if method is None else bool(method(state))


FRACTION = Interval(float, 0, 1, low_open=True)
VALIDATION_ROWS = 50_000  # early stopping on rows read from the store: at most this many held in memory


@dataclass(frozen=True)
class TrainParams(LoopConfig):
    """Training on new data only: the reference recipe for a fresh model."""

    uses_old: ClassVar[bool] = False

    new_fraction: float = param(1.0, FRACTION, "share of the new rows to sample")
    weighting: str = param("none", Choice(WEIGHTINGS), "instance weights: none, recency or importance")
    half_life: float = param(1.0, Interval(float, 0, low_open=True), "with weighting=recency: batches per halving")

    rules = (
        Rule(
            lambda p: p.weighting != "importance" or p.trains_on_old(),
            "weighting=importance reweights old rows; this strategy trains on new data only",
        ),
    )

    def trains_on_old(self) -> bool:
        return self.uses_old

    def reads_old(self, state: Mapping[str, Any]) -> bool:
        return self.trains_on_old()

    def loop_config(self) -> LoopConfig:
        return self.loop()


@dataclass(frozen=True)
class FinetuneRecipe(LoopConfig):
    """The fine-tuning recipe: a tenth of the reference learning rate, 100 epochs."""

    learning_rate: float = 0.001
    epochs: int = 100


@dataclass(frozen=True)
class TrainAllParams(TrainParams):
    """Training on old + new data; `old_fraction` samples the old rows."""

    uses_old: ClassVar[bool] = True

    old_fraction: float = param(1.0, FRACTION, "share of the old rows to sample")


# Instance weights: one per row in memory; for rows left in the store, a function of each
# row's batch order; None for equal weights.
Weights = np.ndarray | Callable[[np.ndarray], np.ndarray] | None


def training_set(inputs: UpdateInputs, params: TrainParams) -> tuple[RowSource, Weights]:
    """The rows a strategy trains on, and their instance weights (None for equal).

    New rows are sampled by `new_fraction`; old rows, if the strategy uses them, by
    `old_fraction`. `recency` halves a row's weight every `half_life` batches back;
    `importance` weights old rows by how much they resemble the new data.
    Rows left in the store give a recipe for reading them a chunk at a time, with the weights
    as a function of each row's batch.
    """
    new = inputs.new.sampled(params.new_fraction, inputs.seed + 1)
    old = inputs.old.sampled(getattr(params, "old_fraction", 1.0), inputs.seed + 2) if params.trains_on_old() else None
    rows = new if old is None else old.join(new)
    if params.weighting == "recency":
        if rows.in_memory:
            return rows, recency_weights(rows.load().order, params.half_life)
        counts = rows.rows_by_order()
        newest = max(counts)
        total = sum(c * 0.5 ** ((newest - o) / params.half_life) for o, c in counts.items())
        mean = total / max(sum(counts.values()), 1)
        return rows, lambda order: (np.power(0.5, (newest - order) / params.half_life) / mean).astype(np.float32)
    if params.weighting == "importance" and old is not None:
        if not rows.in_memory:
            raise UserError(
                "weighting=importance compares every old row with the new ones in memory; it is not available "
                "above the memory budget (use recency, or raise the budget)"
            )
        x_old, x_new = old.load().matrix(), new.load().matrix()
        w = np.concatenate([importance_weights(x_old, x_new, inputs.seed), np.ones(len(new), np.float32)])
        return rows, (w / w.mean()).astype(np.float32)
    return rows, None


def fit_fresh(inputs: UpdateInputs, params: TrainParams, seed_offset: int = 0) -> keras.Model:
    """A new network of the store's recipe trained on the strategy's training set, its input
    statistics computed on those rows (all of them for `fresh_all`): a member trained from
    scratch reads the data as it is now, not as the store's first batch was."""
    rows, weights = training_set(inputs, params)
    model = inputs.fresh_model(seed_offset, rows)
    train_rows(model, inputs, rows, params, weights, seed_offset)
    return model


P = TypeVar("P")


def per_network(params: P, networks: int) -> P:
    """`params` for one of `networks` networks a strategy trains in turn: the candidate's
    wall-clock budget (`max_seconds`) shared among them, so that fine-tuning an ensemble of
    two takes the time one network would."""
    seconds = getattr(params, "max_seconds", 0.0)
    if networks <= 1 or not seconds:
        return params
    return dataclasses.replace(params, max_seconds=seconds / networks)  # type: ignore[type-var]


def fit(model: keras.Model, inputs: UpdateInputs, params: TrainParams, seed_offset: int = 0) -> keras.Model:
    """Train `model` in place on the strategy's training set; return it."""
    rows, weights = training_set(inputs, params)
    train_rows(model, inputs, rows, params, weights, seed_offset)
    return model


def train_rows(
    model: keras.Model,
    inputs: UpdateInputs,
    rows: RowSource,
    config: LoopConfig,
    weights: Weights,
    seed_offset: int = 0,
    spread: tuple[Rows, np.ndarray] | None = None,
    relabel: Callable[[Rows], np.ndarray] | None = None,
    hooks: tuple[LossHook, ...] = (),
) -> None:
    """Train `model` in place on `rows` with the loop settings of `config` and the update's
    seed and task; `hooks` are what the strategy adds to the loop's loss (`loop.LossHook`: a
    penalty, a logit match; with per-row columns, the targets come laid out beside them).
    Rows left in the store (`data.chunks`) are read a chunk at a time (`loop.train_stream`),
    with `weights` then a function of the rows' batch order, or None, and `spread` rows held
    in memory with their weights mixed into every pass (see `passes_over`). `relabel` gives
    the targets to train towards from the rows (e.g. a teacher's soft targets), piece by piece."""
    if not rows.in_memory:
        if weights is not None and not callable(weights):
            raise TypeError("rows left in the store are weighted by a function of their batch order")
        seed, settings = inputs.seed + seed_offset, config.loop()
        validation = None
        if settings.patience:  # a share of the rows set aside, at most VALIDATION_ROWS of it read
            rows, aside = rows.set_aside(settings.validation, seed)
            aside = aside.sampled(min(1.0, VALIDATION_ROWS / max(len(aside), 1)), seed + 17)
            held = aside.load()
            y = held.y if relabel is None else relabel(held)
            validation = (feed(model, held.x), y, None if weights is None else weights(held.order))
        train_stream(
            model,
            passes_over(model, rows, weights, seed, spread, relabel),
            settings,
            seed=seed,
            task="regression" if inputs.regression else "classification",
            target_std=inputs.target[1] if inputs.target else 1.0,
            validation=validation,
            hooks=hooks,
        )
        return
    if callable(weights):
        raise TypeError("rows in memory are weighted one weight per row")
    held = rows.load()
    if relabel is not None:
        held = Rows(held.x, relabel(held), held.order)
    if spread is not None:  # in memory: simply more rows
        w = np.ones(len(held), np.float32) if weights is None else np.asarray(weights, np.float32)
        held, weights = Rows.concat([held, spread[0]]), np.concatenate([w, spread[1]])
    train(
        model,
        feed(model, held.x),
        held.y,
        config.loop(),
        sample_weight=weights,
        seed=inputs.seed + seed_offset,
        task="regression" if inputs.regression else "classification",
        target_std=inputs.target[1] if inputs.target else 1.0,
        hooks=hooks,
    )


def passes_over(
    model: keras.Model,
    rows: RowSource,
    weights: Callable[[np.ndarray], np.ndarray] | None,
    seed: int,
    spread: tuple[Rows, np.ndarray] | None = None,
    relabel: Callable[[Rows], np.ndarray] | None = None,
) -> Callable[[int], Iterator[Any]]:
    """For `loop.train_stream`: each epoch a pass over stored rows in an order fixed by the seed
    and the epoch, as the model's inputs, labels and weights (a function of the rows' batch).

    `spread`: rows held in memory with their weights (a replay memory), mixed into every pass
    evenly: each chunk takes its share of them, in an order fixed by the seed and the epoch,
    so a pass sees each once and every buffer a few, as shuffled in memory. `relabel`: the
    targets of each piece's stored rows instead of their labels (`spread`'s rows carry theirs
    in that form already)."""

    def passes(epoch: int) -> Iterator[Any]:
        extra = None if spread is None or not len(spread[0]) else spread
        order = np.random.default_rng([seed, epoch, 7]).permutation(len(extra[0])) if extra else None
        total, seen, taken = max(len(rows), 1), 0, 0
        for piece in rows.chunks(shuffle_seed=seed * 1_000_003 + epoch):
            w = None if weights is None else weights(piece.order)
            if relabel is not None:
                piece = Rows(piece.x, relabel(piece), piece.order)
            if extra is not None and order is not None:
                seen += len(piece)
                upto = round(len(order) * min(seen / total, 1.0))
                share, taken = order[taken:upto], max(taken, upto)
                w = np.ones(len(piece), np.float32) if w is None else w
                piece, w = Rows.concat([piece, extra[0].take(share)]), np.concatenate([w, extra[1][share]])
            yield feed(model, piece.x), piece.y, w
        if extra is not None and order is not None and taken < len(order):  # fewer rows read than counted
            rest = order[taken:]
            yield feed(model, extra[0].take(rest).x), extra[0].y[rest], extra[1][rest]

    return passes
