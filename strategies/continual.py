"""Learning the new without forgetting the old: replay, dark experience replay, LwF and EWC.

Each starts from the current network (given a head for new classes where the store has
more, see `transfer.with_classes`) and keeps what it needs for the next update in the
new version's state: `replay` and `der` a bounded memory of old rows (`strategies.memory`),
`ewc` the Fisher information. What they read of the old batches:
- `replay`, `der`: the current version's memory only; a version without one (made by
  another strategy) fills it from the old batches' training rows once;
- `ewc`: the current version's Fisher information; without it, computed on its memory or
  else on a sample of the old rows;
- `lwf`: no old rows at all, only the current model's outputs on the new rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from continual_trainer.data.errors import UserError
from continual_trainer.data.rows import Rows, RowSource
from continual_trainer.strategies.base import (
    FinetuneRecipe,
    TrainParams,
    UpdateInputs,
    per_network,
    train_rows,
    training_set,
)
from continual_trainer.strategies.memory import SELECTIONS, Memory, has_memory, logits_of, pad_logits, select
from continual_trainer.strategies.registry import Capabilities, describes_state, register
from continual_trainer.strategies.transfer import single_network, with_classes
from continual_trainer.trainer.candidate import Candidate
from continual_trainer.trainer.loop import LogitMatch, Penalty, lay_out
from continual_trainer.trainer.models import feed
from continual_trainer.trainer.params import Choice, Interval, Params, param

if TYPE_CHECKING:
    import keras

FISHER = "fisher."


@describes_state
def _fisher_summary(state: Mapping[str, np.ndarray], batch_ids: Sequence[str]) -> dict[str, Any]:
    """EWC's Fisher information a version keeps, for its manifest: how many arrays and values."""
    fisher = [k for k in state if k.startswith(FISHER)]
    return {"fisher": {"arrays": len(fisher), "values": int(sum(state[k].size for k in fisher))}} if fisher else {}


CONTINUAL = Capabilities(
    learns_new_classes=True, in_pieces=True, starts_from="current"
)  # also on rows left in the store


@dataclass(frozen=True)
class MemoryOptions(Params):
    """The replay memory the new version keeps."""

    memory_size: int = param(200, Interval(int, 1), "rows kept in the replay memory")
    selection: str = param("reservoir", Choice(SELECTIONS), "reservoir or class_balanced")
    replay_ratio: float = param(
        0.5, Interval(float, 0, 1, low_open=True, high_open=True), "share of the training loss on memory rows"
    )

    def reads_old(self, state: Mapping[str, Any]) -> bool:
        return not has_memory(state)


@dataclass(frozen=True)
class ReplayParams(FinetuneRecipe, MemoryOptions):
    """Fine-tune on new rows + the replay memory."""


@dataclass(frozen=True)
class DerParams(ReplayParams):
    """Dark experience replay: memory rows pull the logits towards those stored with them."""

    alpha: float = param(0.5, Interval(float, 0), "weight of matching memory rows' stored logits")

    @property
    def label_weight(self) -> float:
        """The weight of memory rows' labels: none in DER."""
        return 0.0


@dataclass(frozen=True)
class DerppParams(DerParams):
    """DER++: memory rows also keep their labels in the loss."""

    beta: float = param(1.0, Interval(float, 0), "weight of memory rows' labels")

    @property
    def label_weight(self) -> float:
        return self.beta


@dataclass(frozen=True)
class LwfParams(FinetuneRecipe, TrainParams):
    """Fine-tune on new rows towards targets mixed with the current model's softened outputs."""

    alpha: float = param(0.5, Interval(float, 0, 1, high_open=True), "weight of the current model's outputs")
    temperature: float = param(2.0, Interval(float, 0, low_open=True), "softens the current model's outputs")


@dataclass(frozen=True)
class EwcParams(FinetuneRecipe, TrainParams):
    """Fine-tune on new rows with the elastic weight consolidation penalty (online EWC)."""

    ewc_lambda: float = param(100.0, Interval(float, 0), "strength of the penalty (EWC's lambda)")
    gamma: float = param(1.0, Interval(float, 0, 1), "decay of earlier versions' Fisher information")
    fisher_rows: int = param(500, Interval(int, 1), "rows sampled to estimate the Fisher information")

    def reads_old(self, state: Mapping[str, Any]) -> bool:
        return not any(k.startswith(FISHER) for k in state) and not has_memory(state)


# -- replay and DER -------------------------------------------------------------------------------


def _memory(inputs: UpdateInputs, params: MemoryOptions, logits: bool) -> Memory:
    """The current version's memory; one filled from the old rows if it keeps none (with
    the current model's logits, for DER)."""
    memory = Memory.from_state(inputs.current.state)
    if memory is not None and (memory.logits is not None or not logits):
        return memory
    if memory is None and not inputs.old.in_memory:  # offered a chunk at a time
        teacher = inputs.current.members[0]
        teach = (lambda x: logits_of(teacher, x, inputs.regression)) if logits else None
        return _offered(None, inputs.old, params, inputs.seed + 3, teach)
    old = memory.rows if memory is not None else inputs.old.load()
    stored = logits_of(inputs.current.members[0], old.x, inputs.regression) if logits else None
    return select(None, old, params.memory_size, params.selection, inputs.seed + 3, stored)


def _weight_pair(n_new: int, n_memory: int, ratio: float) -> tuple[float, float]:
    """The weights of a new row and of a memory row that give the memory rows `ratio` of the
    loss, with mean 1 over all the rows."""
    memory = ratio * n_new / ((1 - ratio) * n_memory) if n_memory and n_new else 1.0
    mean = (n_new + memory * n_memory) / max(n_new + n_memory, 1)
    return 1.0 / mean, memory / mean


def _weights(n_new: int, n_memory: int, ratio: float) -> np.ndarray:
    """Row weights giving the memory rows `ratio` of the loss, with mean 1."""
    new, memory = _weight_pair(n_new, n_memory, ratio)
    return np.concatenate([np.full(n_new, new, np.float32), np.full(n_memory, memory, np.float32)])


def _offered(
    memory: Memory | None,
    rows: RowSource,
    params: MemoryOptions,
    seed: int,
    logits: Callable[[Any], np.ndarray] | None = None,
) -> Memory:
    """The memory after rows left in the store were offered to it a chunk at a time (each
    chunk as `select` offers a batch: the reservoir stays uniform over every row offered;
    `class_balanced` balances what it has kept with each chunk), with `logits(x)` of each
    chunk's rows for DER."""
    for i, chunk in enumerate(rows.chunks()):
        new_logits = None if logits is None else logits(chunk.x)
        memory = select(memory, chunk, params.memory_size, params.selection, seed + 7919 * i, new_logits)
    if memory is None:
        raise UserError("replay: there are no rows to fill the memory with")
    return memory


@register("replay", ReplayParams, "fine-tune on new rows + a bounded memory of old rows", CONTINUAL)
def replay(inputs: UpdateInputs, params: ReplayParams) -> Candidate:
    """Experience replay: the memory's rows join each epoch; the new version keeps a memory
    updated with the new rows. New rows left in the store are read a chunk at a time, the
    memory's rows spread over each pass, and offered to the memory chunk by chunk."""
    model = with_classes(single_network(inputs, "replay"), inputs.n_classes, inputs.seed, "replay")
    memory = _memory(inputs, params, logits=False)
    if not inputs.new.in_memory:
        new, old = _weight_pair(len(inputs.new), len(memory), params.replay_ratio)
        spread = (memory.rows, np.full(len(memory), old, np.float32))
        train_rows(model, inputs, inputs.new, params, lambda o: np.full(len(o), new, np.float32), spread=spread)
        return Candidate((model,), (1.0,), _offered(memory, inputs.new, params, inputs.seed + 4).to_state())
    fresh = inputs.new.load()
    rows = Rows.concat([fresh, memory.rows])
    train_rows(model, inputs, rows, params, _weights(len(fresh), len(memory), params.replay_ratio))
    kept = select(memory, fresh, params.memory_size, params.selection, inputs.seed + 4)
    return Candidate((model,), (1.0,), kept.to_state())


@register("der", DerParams, "dark experience replay: memory rows matched to their stored logits", CONTINUAL)
def der(inputs: UpdateInputs, params: DerParams) -> Candidate:
    """DER (Buzzega et al., 2020): memory rows are trained towards the logits the model gave
    them when they were stored (`alpha`); `derpp` adds their labels (`beta`). New rows left in
    the store are read a chunk at a time, as `replay` reads them."""
    return _dark(inputs, params, "der")


@register("derpp", DerppParams, "DER++: memory rows matched to their stored logits and their labels", CONTINUAL)
def derpp(inputs: UpdateInputs, params: DerppParams) -> Candidate:
    """DER++ (Buzzega et al., 2020): DER plus the memory rows' labels, weighted by `beta`."""
    return _dark(inputs, params, "derpp")


def _dark(inputs: UpdateInputs, params: DerParams, name: str) -> Candidate:
    model = with_classes(single_network(inputs, name), inputs.n_classes, inputs.seed, name)
    memory = _memory(inputs, params, logits=True)
    if not inputs.new.in_memory:
        return _der_in_pieces(inputs, inputs.new, params, model, memory)
    fresh = inputs.new.load()
    n_new, n_mem = len(fresh), len(memory)
    rows = Rows.concat([fresh, memory.rows])
    weights = _weights(n_new, n_mem, params.replay_ratio)
    assert memory.logits is not None
    if inputs.regression:
        mixed, total = _mixed_targets(memory, params)
        rows = Rows(rows.x, np.concatenate([fresh.y, mixed]), rows.order)
        weights[n_new:] *= total
        train_rows(model, inputs, rows, params, weights)
    else:
        units = int(model.outputs[0].shape[-1])
        columns = np.concatenate([LogitMatch.unmatched(n_new, units), _matched(memory, params, units)])
        rows = Rows(rows.x, lay_out(rows.y, units, [columns]), rows.order)
        train_rows(model, inputs, rows, params, weights, hooks=(LogitMatch(),))
    new_logits = logits_of(model, fresh.x, inputs.regression)
    kept = select(memory, fresh, params.memory_size, params.selection, inputs.seed + 4, new_logits)
    return Candidate((model,), (1.0,), kept.to_state())


def _der_in_pieces(
    inputs: UpdateInputs, new: RowSource, params: DerParams, model: keras.Model, memory: Memory
) -> Candidate:
    """`der` on new rows left in the store: the memory's rows, with their targets laid out as
    the in-memory loop lays them out, spread over every pass; new rows offered to the memory
    a chunk at a time with the trained model's logits."""
    assert memory.logits is not None
    n_mem = len(memory)
    new_weight, memory_weight = _weight_pair(len(new), n_mem, params.replay_ratio)
    weights = lambda order: np.full(len(order), new_weight, np.float32)  # noqa: E731
    if inputs.regression:
        mixed, total = _mixed_targets(memory, params)
        spread = (Rows(memory.rows.x, mixed, memory.rows.order), np.full(n_mem, memory_weight * total))
        train_rows(model, inputs, new, params, weights, spread=spread)
    else:
        units = int(model.outputs[0].shape[-1])

        def labels_only(part: Rows) -> np.ndarray:
            return lay_out(part.y, units, [LogitMatch.unmatched(len(part), units)])

        kept = Rows(memory.rows.x, lay_out(memory.rows.y, units, [_matched(memory, params, units)]), memory.rows.order)
        spread = (kept, np.full(n_mem, memory_weight, np.float32))
        train_rows(model, inputs, new, params, weights, spread=spread, relabel=labels_only, hooks=(LogitMatch(),))
    logits = lambda x: logits_of(model, x, inputs.regression)  # noqa: E731
    return Candidate((model,), (1.0,), _offered(memory, new, params, inputs.seed + 4, logits).to_state())


def _mixed_targets(memory: Memory, params: DerParams) -> tuple[np.ndarray, float]:
    """For regression, where both of a memory row's terms are squared errors: one target mixing
    its stored prediction (weight `alpha`) and its label (`label_weight`), and the mixed term's
    weight."""
    assert memory.logits is not None
    total = params.alpha + params.label_weight
    if not total:
        return memory.rows.y.astype(np.float32), total
    mixed = (params.alpha * memory.logits[:, 0] + params.label_weight * memory.rows.y) / total
    return mixed.astype(np.float32), total


def _matched(memory: Memory, params: DerParams, units: int) -> np.ndarray:
    """The memory rows' `LogitMatch` columns: their stored logits, `alpha` and `label_weight`."""
    assert memory.logits is not None
    n = len(memory)
    return LogitMatch.columns(
        _unit_logits(memory.logits, units), np.full(n, params.alpha), np.full(n, params.label_weight)
    )


def _unit_logits(logits: np.ndarray, units: int) -> np.ndarray:
    """Stored logits as the model's head has them: one column for a sigmoid unit, else one
    per class (NaN for classes the storing model did not know)."""
    if units == 1:
        return logits[:, -1:] if logits.shape[1] == 1 else (logits[:, 1] - logits[:, 0])[:, None]
    padded = pad_logits(logits, units)[:, :units]
    # A class the storing model did not know had no output then. In the paper's fixed head its
    # logit was there, pushed down by the cross-entropy on the known classes; here it is the
    # row's lowest known logit, so that matching keeps new classes from overtaking old rows
    # (left unmatched, DER held 0.42 on the class-incremental digits; filled, 0.957).
    unknown = ~np.isfinite(padded)
    if unknown.any():
        padded = np.where(unknown, np.nanmin(padded, axis=1, keepdims=True), padded).astype(np.float32)
    return padded


# -- LwF ------------------------------------------------------------------------------------------


@register("lwf", LwfParams, "fine-tune on new rows, distilling the current model's outputs", CONTINUAL)
def lwf(inputs: UpdateInputs, params: LwfParams) -> Candidate:
    """Learning without forgetting (Li & Hoiem, 2016): each member trains towards
    `(1 - alpha) * label + alpha * teacher`, the teacher being the member before training
    at `temperature` (its known classes; new classes get 0 from it). For regression the
    teacher's prediction is mixed into the label the same way."""
    rows, weights = training_set(inputs, params)
    members, each = [], per_network(params, len(inputs.current.members))
    for i, current in enumerate(inputs.current.members):
        model = with_classes(current, inputs.n_classes, inputs.seed + i, "lwf")
        units = int(model.outputs[0].shape[-1])

        def distilled(part: Rows, current: Any = current, units: int = units) -> np.ndarray:
            """The targets of these rows: their labels mixed with the teacher's outputs (for rows
            left in the store, computed chunk by chunk as they are read)."""
            teacher = logits_of(current, part.x, inputs.regression)
            if inputs.regression:
                return ((1 - params.alpha) * part.y + params.alpha * teacher[:, 0]).astype(np.float32)
            return _soft_targets(part.y, teacher, params, units)

        train_rows(model, inputs, rows, each, weights, relabel=distilled)
        members.append(model)
    return Candidate(tuple(members), inputs.current.weights)


def _soft_targets(y: np.ndarray, teacher: np.ndarray, params: LwfParams, units: int) -> np.ndarray:
    if units == 1:  # a sigmoid unit: the probability of class 1
        p = 1 / (1 + np.exp(-teacher[:, 0] / params.temperature))
        return ((1 - params.alpha) * y + params.alpha * p)[:, None].astype(np.float32)
    soft = pad_logits(teacher, units)[:, :units] / params.temperature
    soft = np.exp(soft - np.nanmax(soft, axis=1, keepdims=True))
    soft = np.nan_to_num(soft, nan=0.0)
    soft /= soft.sum(axis=1, keepdims=True)
    onehot = np.eye(units, dtype=np.float32)[y.astype(np.int64)]
    return ((1 - params.alpha) * onehot + params.alpha * soft).astype(np.float32)


# -- EWC ------------------------------------------------------------------------------------------


@register("ewc", EwcParams, "fine-tune on new rows, penalising changes to important weights (online EWC)", CONTINUAL)
def ewc(inputs: UpdateInputs, params: EwcParams) -> Candidate:
    """Elastic weight consolidation, online (Kirkpatrick et al., 2017; Schwarz et al., 2018):
    the loss adds `ewc_lambda / 2 * sum(F * (w - w_current)**2)`, F the diagonal Fisher
    information the current version keeps (decayed by `gamma` at each update, plus the new
    version's own, estimated on `fisher_rows` of its training rows)."""
    import tensorflow as tf

    current = single_network(inputs, "ewc")
    model = with_classes(current, inputs.n_classes, inputs.seed, "ewc")
    anchor = [np.asarray(v.numpy()) for v in model.trainable_variables]  # the current weights
    before = _stored_fisher(inputs.current.state)
    if before is None:
        memory = Memory.from_state(inputs.current.state)
        rows = memory.rows if memory is not None else inputs.old
        before = fisher(current, _sample(rows, params.fisher_rows, inputs.seed + 5), inputs)
    if len(before) != len(anchor):
        before = [np.zeros_like(a) for a in anchor]  # a different network: nothing to consolidate
    before = [params.gamma * _padded(f, a.shape) for f, a in zip(before, anchor, strict=True)]
    consts = [(tf.constant(f, tf.float32), tf.constant(a, tf.float32)) for f, a in zip(before, anchor, strict=True)]
    strength = params.ewc_lambda / 2

    def penalty(variables: list[Any]) -> Any:
        return strength * tf.add_n(
            [tf.reduce_sum(f * tf.square(v - a)) for v, (f, a) in zip(variables, consts, strict=True)]
        )

    rows, weights = training_set(inputs, params)
    train_rows(model, inputs, rows, params, weights, hooks=(Penalty(penalty),))
    own = fisher(model, _sample(rows, params.fisher_rows, inputs.seed + 6), inputs)
    state = {f"{FISHER}{i}": (f + g).astype(np.float32) for i, (f, g) in enumerate(zip(before, own, strict=True))}
    return Candidate((model,), (1.0,), state)


def _stored_fisher(state: Mapping[str, np.ndarray]) -> list[np.ndarray] | None:
    keys = sorted((k for k in state if k.startswith(FISHER)), key=lambda k: int(k[len(FISHER) :]))
    return [state[k] for k in keys] or None


def _padded(f: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Fisher information of a variable that grew (a head with new classes): zero for the new part."""
    if f.shape == shape:
        return f
    out = np.zeros(shape, np.float32)
    if len(f.shape) == len(shape):
        common = tuple(slice(0, min(a, b)) for a, b in zip(f.shape, shape, strict=True))
        out[common] = f[common]
    return out


def _sample(source: RowSource, n: int, seed: int) -> Rows:
    """At most `n` of the rows, drawn by `seed`, in memory (rows left in the store: about
    `n` of them read by a seeded draw per row, then trimmed)."""
    rows = source.load() if source.in_memory else source.sampled(min(1.0, 1.1 * n / max(len(source), 1)), seed).load()
    if len(rows) <= n:
        return rows
    return rows.take(np.sort(np.random.default_rng(seed).choice(len(rows), n, replace=False)))


def fisher(model: keras.Model, rows: Rows, inputs: UpdateInputs) -> list[np.ndarray]:
    """The diagonal of the empirical Fisher information of `model`'s trainable variables: the
    mean over `rows` of each row's squared gradient of its loss (log-likelihood of its label;
    for regression the squared error in label standard deviations)."""
    import keras
    import tensorflow as tf

    variables = model.trainable_variables
    if not len(rows):
        return [np.zeros(v.shape, np.float32) for v in variables]
    units = int(model.outputs[0].shape[-1])
    if inputs.regression:
        scale = inputs.target[1] if inputs.target else 1.0
        loss, y = keras.losses.mean_squared_error, (rows.y / scale)[:, None].astype(np.float32)
        model_out = _scaled(model, scale)
    elif units == 1:
        loss, y, model_out = keras.losses.binary_crossentropy, rows.y[:, None].astype(np.float32), model
    else:
        loss, y, model_out = keras.losses.sparse_categorical_crossentropy, rows.y.astype(np.int32), model
    x = tf.nest.map_structure(tf.constant, feed(model, rows.x))

    @tf.function
    def accumulate(x: Any, y: Any) -> Any:
        total = [tf.zeros(v.shape, tf.float32) for v in variables]
        for i in tf.range(tf.shape(y)[0]):
            xi = tf.nest.map_structure(lambda t: t[i : i + 1], x)  # noqa: B023 - used at once
            with tf.GradientTape() as tape:
                value = tf.reduce_sum(loss(y[i : i + 1], model_out(xi, training=False)))
            grads = tape.gradient(value, variables)
            total = [
                t + tf.square(tf.zeros(v.shape) if g is None else g)
                for t, g, v in zip(total, grads, variables, strict=True)
            ]
        return total

    return [np.asarray(t) / len(rows) for t in accumulate(x, tf.constant(y))]


def _scaled(model: keras.Model, scale: float) -> Any:
    return lambda x, training=False: model(x, training=training) / scale
