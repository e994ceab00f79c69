"""The training loop: whole epochs inside one compiled TensorFlow function.

Keras `fit` returns to Python after every epoch and pays callbacks, data adapters
and per-step dispatch; for the small networks this tool updates, that overhead is
most of the time. Here one `tf.function` runs many epochs of shuffling, batching,
forward, loss, gradients and the optimizer step. Any Keras model trains through its
own call in training mode and its trainable variables (Conv, pooling, Embedding,
Normalization, Dropout, BatchNormalization with its moving statistics, regularization
losses, frozen layers); a pure stack of Dense layers takes a fast path with the same
mathematics whose trace is shared by every model of that shape. Calls are sized to
about half a second, so that Ctrl-C and progress reports are never far away; a loss
that becomes NaN or infinite stops training with a clear error.

The mathematics match `fit` with the same settings: a fresh shuffle each epoch,
the last partial batch kept, the loss a sample-weighted mean over the batch
(Keras's `sum_over_batch_size`), and the update rules of Keras's SGD, Adam, AdamW, RMSprop
and Adagrad with their clipping and weight decay (`trainer.optimizers`).

The general path traces once per model object; the fast path once per Dense structure,
so training many small networks (seeds, strategies, ensemble members) traces it once.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from continual_trainer.data.errors import UserError
from continual_trainer.data.parquet import one_line
from continual_trainer.trainer import optimizers
from continual_trainer.trainer.optimizers import CLIPS, OPTIMIZERS
from continual_trainer.trainer.params import Boolean, Choice, Interval, Params, Rule, param
from continual_trainer.trainer.progress import milestones, report, trained

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

CHUNK_SECONDS = 0.5


class TrainingDiverged(UserError):
    """The loss became NaN or infinite: the settings or the data's scale are to blame."""


_ACTIVATIONS = ("relu", "linear", "tanh", "sigmoid", "softmax")


EPOCHS = Interval(int, 1)
BATCH_SIZE = Interval(int, 1)
LEARNING_RATE = Interval(float, 0, low_open=True)
MOMENTUM = Interval(float, 0, 1, high_open=True)
DECAY_RATE = Interval(float, 0, 1, high_open=True)
NON_NEGATIVE = Interval(float, 0)
REGRESSION_LOSSES = ("auto", "mse", "mae", "huber")


@dataclass(frozen=True)
class LoopConfig(Params):
    """How to train: the reference recipe by default (SGD 0.01, momentum 0.9, 150 x 32); an
    imported model's own `compile()` where the user sets nothing (see `trainer.optimizers`).
    The optimizers' settings are Keras's, by Keras's names and defaults."""

    epochs: int = param(150, EPOCHS, "passes over the training rows")
    batch_size: int = param(32, BATCH_SIZE, "rows per optimizer step")
    learning_rate: float = param(0.01, LEARNING_RATE, "optimizer step size")
    momentum: float = param(0.9, MOMENTUM, "sgd and rmsprop: momentum")
    optimizer: str = param("sgd", Choice(OPTIMIZERS), "Keras's SGD, Adam, AdamW, RMSprop or Adagrad")
    nesterov: bool = param(False, Boolean(), "sgd: Nesterov momentum")
    beta_1: float = param(0.9, DECAY_RATE, "adam, adamw: decay of the first moment")
    beta_2: float = param(0.999, DECAY_RATE, "adam, adamw: decay of the second moment")
    epsilon: float = param(1e-7, Interval(float, 0, low_open=True), "adam, adamw, rmsprop, adagrad: stability term")
    rho: float = param(0.9, DECAY_RATE, "rmsprop: decay of the squared-gradient average")
    centered: bool = param(False, Boolean(), "rmsprop: divide by the gradient's variance")
    initial_accumulator_value: float = param(0.1, NON_NEGATIVE, "adagrad: the accumulators' start")
    weight_decay: float = param(0.0, NON_NEGATIVE, "decoupled weight decay (adamw without it: Keras's 0.004)")
    clipnorm: float = param(0.0, NON_NEGATIVE, "clip each gradient to this norm (0: off)")
    global_clipnorm: float = param(0.0, NON_NEGATIVE, "clip all gradients to this joint norm (0: off)")
    clipvalue: float = param(0.0, NON_NEGATIVE, "clip each gradient's values to +-this (0: off)")
    loss: str = param(
        "auto",
        Choice(REGRESSION_LOSSES),
        "regression: mse (auto), mae, or huber (Keras's Huber, delta 1 in label units)",
    )
    patience: int = param(0, Interval(int, 0), "early stopping: epochs without a better validation loss (0: off)")
    validation: float = param(
        0.1, Interval(float, 0, 0.5, low_open=True), "with patience: share of the training rows held out to stop on"
    )
    max_seconds: float = param(
        0.0,
        Interval(float, 0),
        "wall-clock budget of a candidate's training, shared by the networks it trains (0: none)",
    )

    rules = (
        Rule(
            lambda p: sum(bool(getattr(p, k)) for k in CLIPS) <= 1,
            "set at most one of clipnorm, global_clipnorm and clipvalue (as Keras allows)",
        ),
    )

    def loop(self) -> LoopConfig:
        """Just the loop's settings (of a strategy's parameters, which extend them)."""
        return LoopConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LoopConfig)})


@dataclass(frozen=True)
class OptimizerState:
    """Optimizer slots (momentum, or Adam's moments and step) kept between `train` calls."""

    slots: list[Any]


@dataclass(frozen=True)
class TrainResult:
    """Attributes:
    epoch_loss: the mean training loss of each epoch run.
    seconds: wall-clock seconds.
    state: the optimizer state, to continue.
    stopped: why training ended before `epochs`: `patience` (the validation loss stopped
        improving; the best epoch's weights were restored) or `budget` (`max_seconds`); None
        if it ran every epoch.
    best_epoch: with patience, the epoch whose weights the model has (1-based; 0 when no
        epoch beat the starting weights on the held-out rows, which the model has again).
    """

    epoch_loss: np.ndarray
    seconds: float
    state: OptimizerState
    stopped: str | None = None
    best_epoch: int | None = None


@dataclass(frozen=True)
class _LayerShape:
    activation: str
    has_bias: bool
    trainable: bool


LABEL_MODES = ("binary", "sparse", "soft", "mse", "mae", "huber")
REGRESSION_MODES = ("mse", "mae", "huber")
# How each regression loss scales with the label: the loss is measured in label standard
# deviations (so a learning rate means the same whatever the label's scale), which for a loss
# of power k in the error is the loss in label units weighted by 1 / target_std**k (Huber's
# delta then stays 1 in label units, as Keras's default).
_POWER = {"mse": 2, "mae": 1, "huber": 2}


class LossHook:
    """What a strategy adds to the loop's loss, as Avalanche's plugins add a term before the
    backward pass: per-row target columns and the row's loss given them, a term added to
    every batch's loss, or both. The loop knows no strategy; a strategy hands it hooks.

    Per-row columns: `width(units)` columns per row, laid beside the labels by the caller
    (`lay_out`), in the order of the hooks; `row_loss` turns the head's base loss into the
    row's loss, `held_out_rows` does the same in NumPy for early stopping's held-out loss.
    A term: `adds_term` and `term(variables)`, given the trainable variables in the model's
    `trainable_variables` order.

    Hooks are part of the compiled loop's cache key: equal hooks share one trace (a stateless
    hook traces once per process), a hook compared by identity (`eq=False`) traces once for
    itself, as a penalty closing over this update's constants must.
    """

    adds_term: ClassVar[bool] = False

    def width(self, units: int) -> int:
        return 0

    def row_loss(self, base: Any, logits: Any, columns: Any, units: int) -> Any:
        return base

    def held_out_rows(self, base: np.ndarray, columns: np.ndarray, units: int) -> np.ndarray:
        return base

    def term(self, variables: list[Any]) -> Any:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class Penalty(LossHook):
    """A term added to every batch's loss, e.g. an EWC penalty: `fn(trainable variables)`."""

    fn: Callable[[list[Any]], Any]
    adds_term: ClassVar[bool] = True

    def term(self, variables: list[Any]) -> Any:
        return self.fn(variables)


@dataclass(frozen=True)
class LogitMatch(LossHook):
    """Dark experience replay's term: per row, a weight times the mean squared distance
    between the model's logits and target logits over the classes whose target is not NaN.

    For a softmax head both sides are centred over those classes first, so logits and
    log-probabilities (logits up to a per-row constant) compare. With it, the row's
    classification loss is scaled by a weight of its own (0 for rows that are only matched).
    A row's columns (`columns`): [target logits, their mask, cross-entropy weight, match weight].
    """

    def width(self, units: int) -> int:
        return 2 * units + 2

    @staticmethod
    def columns(targets: np.ndarray, weight: np.ndarray, ce_weight: np.ndarray) -> np.ndarray:
        """Rows' columns: `targets` (n, units), NaN for classes the stored model did not know;
        the match's `weight` and the cross-entropy's `ce_weight`, (n,) each."""
        mask = np.isfinite(targets)
        return np.concatenate(
            [np.where(mask, targets, 0), mask, np.asarray(ce_weight)[:, None], np.asarray(weight)[:, None]], axis=1
        ).astype(np.float32)

    @staticmethod
    def unmatched(n: int, units: int) -> np.ndarray:
        """Columns of `n` rows trained on their labels only."""
        return LogitMatch.columns(np.full((n, units), np.nan, np.float32), np.zeros(n, np.float32), np.ones(n))

    def row_loss(self, base: Any, logits: Any, columns: Any, units: int) -> Any:
        import tensorflow as tf

        target, mask = columns[:, :units], columns[:, units : 2 * units]
        count = tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)
        z = logits
        if units > 1:
            z = z - tf.reduce_sum(mask * z, axis=1, keepdims=True) / count
            target = target - tf.reduce_sum(mask * target, axis=1, keepdims=True) / count
        match = tf.reduce_sum(mask * tf.square(z - target), axis=1) / count[:, 0]
        return columns[:, 2 * units] * base + columns[:, 2 * units + 1] * match

    def held_out_rows(self, base: np.ndarray, columns: np.ndarray, units: int) -> np.ndarray:
        return base * columns[:, 2 * units]


def lay_out(y: np.ndarray, units: int, columns: list[np.ndarray]) -> np.ndarray:
    """Labels (class indices or probabilities) as float columns, one per output unit, with
    hooks' per-row `columns` beside them in the order of the hooks (see `LossHook`)."""
    if y.ndim == 1:
        y = y[:, None].astype(np.float32) if units == 1 else np.eye(units, dtype=np.float32)[y.astype(np.int64)]
    return np.concatenate([y, *columns], axis=1).astype(np.float32)


def _hook_widths(hooks: tuple[LossHook, ...], units: int) -> list[int]:
    return [h.width(units) for h in hooks]


def _hooked(per_row: Callable[[Any, Any, Any], Any], hooks: tuple[LossHook, ...], units: int) -> Any:
    """`per_row(labels, logits, output)` with the hooks' row losses applied in turn (their
    columns sliced from the laid-out targets); `per_row` itself if no hook has columns."""
    widths = _hook_widths(hooks, units)
    if not any(widths):
        return per_row

    def loss(y: Any, z: Any, out: Any) -> Any:
        rows, at = per_row(y[:, :units], z, out), units
        for hook, w in zip(hooks, widths, strict=True):
            if w:
                rows, at = hook.row_loss(rows, z, y[:, at : at + w], units), at + w
        return rows

    return loss


def _term(hooks: tuple[LossHook, ...]) -> Callable[[list[Any]], Any] | None:
    """The hooks' terms summed, or None if none adds one."""
    import tensorflow as tf

    adding = [h for h in hooks if h.adds_term]
    if not adding:
        return None
    return lambda variables: tf.add_n([h.term(variables) for h in adding])


def label_mode(model: keras.Model, y: np.ndarray, task: str = "classification", loss: str = "auto") -> str:
    """How the targets meet the model's output: `binary` (one sigmoid unit), `sparse` (class
    indices for a softmax), `soft` (class probabilities, as in distillation, or labels laid
    out beside hooks' columns), or for regression its loss: `mse`, `mae` or `huber`."""
    if task == "regression":
        return "mse" if loss == "auto" else loss
    if loss != "auto":
        raise UserError.about(
            "loss", loss, "applies to regression; a classifier trains with cross-entropy", group="params"
        )
    if output_units(model) == 1:
        return "binary"
    return "soft" if y.ndim == 2 else "sparse"


def output_units(model: keras.Model) -> int:
    return int(model.outputs[0].shape[-1])


def _targets(y: np.ndarray, mode: str) -> np.ndarray:
    if mode == "sparse":
        return y.astype(np.int32)
    y = y.astype(np.float32)
    return y if y.ndim == 2 else y[:, None]


# -- the fast path: a stack of Dense layers, traced once per structure ---------------------------


def _dense_structure(model: keras.Model, mode: str) -> tuple[tuple[_LayerShape, ...], list[Any]] | None:
    """The static shape of a pure Dense stack (optionally after a Normalization layer) and its
    weight variables in order, or None if the model is anything else (the general path)."""
    import keras
    import tensorflow as tf

    shapes, weights = [], []
    for k, layer in enumerate(model.layers):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if k == 0 and type(layer) is keras.layers.Normalization and _plain_normalization(layer):
            shapes.append(_LayerShape("normalize", True, False))  # fixed (x - mean) / std: two constants
            weights += [tf.cast(layer.mean, tf.float32), tf.cast(layer.variance, tf.float32)]
            continue
        if type(layer) is not keras.layers.Dense or layer.kernel_regularizer or layer.bias_regularizer:
            return None
        if layer.activity_regularizer or layer.kernel_constraint or layer.bias_constraint:
            return None
        act = keras.activations.serialize(layer.activation)
        act = act if isinstance(act, str) else act.get("config", {}).get("name", act)
        if act not in _ACTIVATIONS:
            return None
        shapes.append(_LayerShape(act, layer.use_bias, bool(layer.trainable)))
        weights.append(layer.kernel.value)
        if layer.use_bias:
            weights.append(layer.bias.value)
    head = {
        "binary": ("sigmoid",),
        "sparse": ("softmax",),
        "soft": ("softmax",),
        "mse": ("linear",),
        "mae": ("linear",),
        "huber": ("linear",),
    }[mode]
    if not shapes or shapes[-1].activation not in head or len(model.inputs) != 1:
        return None
    return tuple(shapes), weights


def _forward(shapes: tuple[_LayerShape, ...], weights: list[Any], x: tf.Tensor) -> tf.Tensor:
    """The head's pre-activation (its activation is folded into the loss)."""
    import tensorflow as tf

    act = {
        "relu": tf.nn.relu,
        "tanh": tf.nn.tanh,
        "sigmoid": tf.nn.sigmoid,
        "softmax": tf.nn.softmax,
        "linear": tf.identity,
    }
    h, i = x, 0
    for k, layer in enumerate(shapes):
        if layer.activation == "normalize":  # as keras.layers.Normalization computes it
            h = (h - weights[i]) / tf.maximum(tf.sqrt(weights[i + 1]), 1e-7)
            i += 2
            continue
        h = tf.matmul(h, weights[i])
        i += 1
        if layer.has_bias:
            h = tf.nn.bias_add(h, weights[i])
            i += 1
        if k < len(shapes) - 1:
            h = act[layer.activation](h)
    return h


def _plain_normalization(layer: Any) -> bool:
    axis = layer.axis if isinstance(layer.axis, tuple | list) else (layer.axis,)
    return not layer.invert and tuple(axis) == (-1,) and layer.mean is not None


def _trainable_index(shapes: tuple[_LayerShape, ...]) -> list[int]:
    index: list[int] = []
    i = 0
    for layer in shapes:
        n = 2 if layer.has_bias else 1
        if layer.trainable:
            index.extend(range(i, i + n))
        i += n
    return index


def _dense_loss(mode: str) -> Callable[[Any, Any], Any]:
    """Per-row loss from the head's pre-activation, as Keras computes it for that head."""
    import tensorflow as tf

    if mode == "binary":
        return lambda y, z: tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z)[:, 0]
    if mode == "sparse":
        return lambda y, z: tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z)
    if mode == "soft":
        return lambda y, z: tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=z)
    if mode == "mae":
        return lambda y, z: tf.reduce_mean(tf.abs(z - y), axis=-1)
    if mode == "huber":
        return lambda y, z: tf.reduce_mean(_huber(tf.abs(z - y)), axis=-1)
    return lambda y, z: tf.reduce_mean(tf.square(z - y), axis=-1)


def _huber(error: Any) -> Any:
    """Keras's Huber loss of absolute errors, delta 1: squared below it, linear above."""
    import tensorflow as tf

    return tf.where(error <= 1.0, 0.5 * tf.square(error), error - 0.5)


@functools.lru_cache(maxsize=64)
def _dense_fn(
    shapes: tuple[_LayerShape, ...],
    mode: str,
    rule: optimizers.UpdateRule,
    weighted: bool,
    hooks: tuple[LossHook, ...],
    units: int,
) -> Any:
    """The compiled epochs of a Dense structure (`units` matters only to hooks with columns:
    networks of one structure and any width share a trace)."""
    train_idx = _trainable_index(shapes)
    base = _dense_loss(mode)
    per_row = _hooked(lambda y, z, _: base(y, z), hooks, units)

    def step_loss(weights: list[Any], xb: Any, yb: Any) -> Any:
        return per_row(yb, _forward(shapes, weights, xb), None)

    pick = lambda weights: [weights[i] for i in train_idx]  # noqa: E731
    return _epochs_fn(step_loss, pick, rule, weighted, _term(hooks), autograph=False)


# -- the general path: any Keras model, through its own call ------------------------------------


_GENERAL_FNS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()


def _general_fn(
    model: keras.Model, mode: str, rule: optimizers.UpdateRule, weighted: bool, hooks: tuple[LossHook, ...]
) -> Any:
    """The compiled epochs of one model (traced once per model, settings and hooks)."""
    import keras

    key = (mode, rule, weighted, hooks)
    fns = _GENERAL_FNS.setdefault(model, {})
    if key not in fns:
        units = output_units(model)
        loss = {
            "binary": keras.losses.binary_crossentropy,
            "sparse": keras.losses.sparse_categorical_crossentropy,
            "soft": keras.losses.categorical_crossentropy,
            "mse": keras.losses.mean_squared_error,
            "mae": keras.losses.mean_absolute_error,
            "huber": keras.losses.huber,
        }[mode]
        # Hooks with columns are given the logits Keras's losses recover from the head's output.
        hooked = any(_hook_widths(hooks, units))
        per_row = _hooked(lambda y, _, out: loss(y, out), hooks, units)

        def step_loss(_: Any, xb: Any, yb: Any) -> Any:
            # The model's own call in training mode: Dropout drops, BatchNormalization updates
            # its moving statistics.
            out = model(xb, training=True)
            return per_row(yb, _logits(out, units) if hooked else None, out)

        def regularization(_: Any) -> Any:
            return model.losses

        fns[key] = _epochs_fn(step_loss, None, rule, weighted, _term(hooks), regularization)
    return fns[key]


def _logits(out: Any, units: int) -> Any:
    """Logits from a head's probabilities: the log-probabilities of a softmax (logits up to a
    per-row constant), the logit of a sigmoid unit."""
    import tensorflow as tf

    p = tf.clip_by_value(out, 1e-7, 1 - 1e-7 if units == 1 else 1.0)
    return tf.math.log(p) - (tf.math.log(1 - p) if units == 1 else 0.0)


# -- shared: one compiled function running many epochs ---------------------------------------------


def _epochs_fn(
    step_loss: Callable[[Any, Any, Any], Any],
    pick_trainable: Callable[[list[Any]], list[Any]] | None,
    rule: optimizers.UpdateRule,
    weighted: bool,
    term: Callable[[list[Any]], Any] | None,
    regularization: Callable[[Any], list[Any]] | None = None,
    autograph: bool = True,
) -> Any:
    """A `tf.function` running `n_epochs` epochs: shuffle, batch, loss, gradients, optimizer step.

    `weights` are the variables `step_loss` reads; the trainable ones among them are
    `pick_trainable(weights)` (all of them if None); `term(trainable)`, if given, is added to
    every batch's loss (`LossHook.term`).
    """
    import tensorflow as tf

    # The loops are written as `tf.while_loop`s, so the fast path (our own Python) needs no
    # AutoGraph conversion, which costs more than a second per process; a model's own call
    # (the general path) may branch on tensors and keeps it.
    @tf.function(reduce_retracing=True, autograph=autograph)
    def run_epochs(weights, slots, x, y, w, first_epoch, n_epochs, seed, batch_size, hp):
        n = tf.shape(y)[0]
        steps = (n + batch_size - 1) // batch_size
        params = weights if pick_trainable is None else pick_trainable(weights)

        def epoch(e: Any, losses: Any) -> tuple[Any, Any]:
            perm = tf.argsort(tf.random.stateless_uniform([n], seed=tf.stack([seed, first_epoch + e])))
            xs = tf.nest.map_structure(lambda t: tf.gather(t, perm), x)
            ys = tf.gather(y, perm)
            ws = tf.gather(w, perm) if weighted else w

            def step(s: Any, total: Any) -> tuple[Any, Any]:
                a = s * batch_size
                b = tf.minimum(a + batch_size, n)
                xb = tf.nest.map_structure(lambda t: t[a:b], xs)
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(params)
                    rows = step_loss(weights, xb, ys[a:b])
                    loss = tf.reduce_mean(rows * ws[a:b] if weighted else rows)
                    if regularization is not None:
                        extra = regularization(weights)
                        if extra:
                            loss += tf.add_n(extra)
                    if term is not None:
                        loss += term(params)
                grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, params)]
                optimizers.step(rule, params, grads, slots, hp)
                return s + 1, total + loss

            _, total = tf.while_loop(lambda s, _: s < steps, step, (tf.constant(0), tf.constant(0.0)))
            return e + 1, losses.write(e, total / tf.cast(steps, tf.float32))

        start = (tf.constant(0), tf.TensorArray(tf.float32, size=n_epochs))
        _, losses = tf.while_loop(lambda e, _: e < n_epochs, epoch, start)
        return losses.stack()

    return run_epochs


@dataclass
class _Compiled:
    """A model's compiled epochs function with what it reads: the weights it trains (the
    fast path's copies or the model's variables), the optimizer's state and settings."""

    fn: Any
    weights: list[Any]
    trainable: list[Any]
    state: OptimizerState
    hp: Any
    dense: bool
    traced: bool = False

    def tensor(self, x: np.ndarray | Mapping[str, np.ndarray]) -> Any:
        import tensorflow as tf

        if self.dense:
            return tf.constant(x, tf.float32)
        return tf.nest.map_structure(tf.constant, x)


def _compile(
    model: keras.Model,
    mode: str,
    config: LoopConfig,
    weighted: bool,
    hooks: tuple[LossHook, ...],
    units: int,
    single_input: bool,
    state: OptimizerState | None,
) -> _Compiled:
    import tensorflow as tf

    dense = _dense_structure(model, mode) if single_input else None
    rule = optimizers.rule_of(config)
    if dense is not None:
        shapes, weights = dense
        trainable = [weights[i] for i in _trainable_index(shapes)]
        fn = _dense_fn(shapes, mode, rule, weighted, hooks, units if any(_hook_widths(hooks, units)) else 1)
    else:
        weights = trainable = [v.value for v in model.trainable_variables]
        fn = _general_fn(model, mode, rule, weighted, hooks)
    if state is None:
        state = OptimizerState(optimizers.new_slots(rule, trainable, config))
    hp = tf.constant(optimizers.hyper(config), tf.float32)
    return _Compiled(fn, weights, trainable, state, hp, dense is not None)


def _run(
    compiled: _Compiled,
    model: keras.Model,
    config: LoopConfig,
    args: tuple[Any, Any, Any],
    epoch: int,
    k: int,
    seed: int,
    done: int,
    largest: Callable[[], float],
) -> np.ndarray:
    """`k` epochs of the compiled function over `args` (inputs, targets, weights): their losses."""
    import tensorflow as tf

    scalars = (tf.constant(epoch), tf.constant(k), tf.constant(seed % 2**31), tf.constant(config.batch_size))
    try:
        if not compiled.traced:  # one trace for any number of rows: buffers and rounds differ in length
            relaxed = tf.nest.map_structure(lambda t: tf.TensorSpec([None, *t.shape[1:]], t.dtype), args)
            compiled.fn.get_concrete_function(compiled.weights, compiled.state.slots, *relaxed, *scalars, compiled.hp)
            compiled.traced = True
        out = compiled.fn(compiled.weights, compiled.state.slots, *args, *scalars, compiled.hp).numpy()
    except (TypeError, ValueError, NotImplementedError, tf.errors.OpError) as exc:
        if done:
            raise
        what = f"model {model.name!r} cannot be trained by the compiled loop"
        raise UserError(f"{what}: {one_line(str(exc))}") from exc
    if not np.isfinite(out).all():
        bad = done + int(np.argmin(np.isfinite(out))) + 1
        raise TrainingDiverged(
            f"training diverged: the loss became {'NaN' if np.isnan(out).any() else 'infinite'} in epoch {bad} "
            f"(learning_rate {config.learning_rate:g}); nothing was saved. Lower the learning rate or scale the "
            f"features (the largest |value| is {largest():.3g})"
        )
    return out


def train(
    model: keras.Model,
    x: np.ndarray | Mapping[str, np.ndarray],
    y: np.ndarray,
    config: LoopConfig,
    *,
    sample_weight: np.ndarray | None = None,
    seed: int = 0,
    hooks: tuple[LossHook, ...] = (),
    progress: Callable[[int], None] | None = None,
    state: OptimizerState | None = None,
    first_epoch: int = 0,
    task: str = "classification",
    target_std: float = 1.0,
) -> TrainResult:
    """Train `model` in place on (x, y).

    Args:
        model: any built Keras model (Sequential or functional, TensorFlow backend) with one
            output: a sigmoid (1 unit) or softmax head for classification, a linear one for
            regression. Layers with `trainable = False` are left untouched. A pure stack of
            Dense layers takes a fast path (the same mathematics, traced once per shape).
        x: the model's input: an array, or a mapping from input name to array.
        y: class indices, shape (n,); or soft targets: probabilities of class 1, shape (n, 1),
            for a sigmoid head, class probabilities, shape (n, k), for a softmax head (as in
            distillation); or numbers to predict (regression). With hooks that have per-row
            columns, the labels laid out beside them (`lay_out`).
        config: epochs, batch size and optimizer.
        sample_weight: per-row loss weights (default all 1).
        seed: fixes the shuffling order.
        hooks: what strategies add to the loss (`LossHook`): an EWC penalty, a logit match.
        progress: called with the number of epochs finished after each chunk (epochs are
            also counted on the command's open reporter, see `trainer.progress`).
        state: optimizer state from an earlier call on the same model, to continue
            (e.g. between rounds of model averaging); fresh if None.
        first_epoch: index of the first epoch, so continued calls shuffle differently.
        task: `classification` or `regression` (mean squared error).
        target_std: for regression, the squared error is measured in units of this (the
            label's first-batch standard deviation), so a learning rate means the same
            whatever the label's scale; `fit` with `learning_rate / target_std**2` matches.

    Returns:
        The mean training loss of each epoch, the wall-clock seconds and the optimizer
        state.

    Raises:
        TrainingDiverged: the loss became NaN or infinite (the model is left as it was
            then; callers train copies and discard them).
    """
    import tensorflow as tf

    # A penalty (`Penalty`) is a new function each update: its traces are expected, not a
    # mistake worth TensorFlow's retracing warning on the user's terminal.
    tf.get_logger().setLevel(logging.ERROR)
    start = time.perf_counter()
    n = len(y)
    if n == 0:
        raise ValueError("no training rows")
    mode = label_mode(model, y, task, config.loss)
    units = output_units(model)
    targets = _targets(y, mode)
    if any(_hook_widths(hooks, units)) and (mode not in ("binary", "soft") or y.ndim != 2):
        raise ValueError("hooks with per-row columns train a classifier on labels laid out beside them (lay_out)")
    if (
        mode in REGRESSION_MODES and target_std != 1.0
    ):  # the error in label standard deviations: weights carry the scale
        scaled = (1.0 if sample_weight is None else np.asarray(sample_weight)) / np.float32(target_std ** _POWER[mode])
        sample_weight = np.broadcast_to(np.asarray(scaled), (n,)).astype(np.float32)
    weighted = sample_weight is not None
    w = np.asarray(sample_weight, np.float32) if weighted else np.ones(1, np.float32)
    stopper = None
    if config.patience and n >= 10:  # hold out a seeded slice of the rows to stop on
        order = np.random.default_rng(seed).permutation(n)
        cut = max(1, round(n * config.validation))
        held, kept = np.sort(order[:cut]), np.sort(order[cut:])
        stopper = _Stopper(
            model, _take(x, held), targets[held], w[held] if weighted else None, mode, units, config, hooks
        )
        x, targets, n = _take(x, kept), targets[kept], len(kept)
        w = w[kept] if weighted else w
    single = x if isinstance(x, np.ndarray) else None
    compiled = _compile(model, mode, config, weighted, hooks, units, single is not None, state)
    trainable, state = compiled.trainable, compiled.state
    inputs = compiled.tensor(x)
    args = (inputs, tf.constant(targets), tf.constant(w))
    losses, done, chunk, stopped, per_epoch = [], 0, 1, None, 0.0
    watch = milestones()
    while done < config.epochs:
        k = min(chunk, config.epochs - done)
        if stopper is not None:
            k = 1  # the validation loss after every epoch
        if watch is not None:  # chunks end where a sweep's scheduler looks at the model
            k = max(1, min(k, watch.until_next()))
        if config.max_seconds and done:  # no chunk expected to overrun the budget by much
            left = config.max_seconds - (time.perf_counter() - start)
            k = max(1, min(k, int(left / max(per_epoch, 1e-9))))
        call_start = time.perf_counter()
        out = _run(compiled, model, config, args, first_epoch + done, k, seed, done, lambda: _largest(x))
        losses.append(out)
        done += k
        # Chunks of about CHUNK_SECONDS (the first call, which traces, is one epoch): the
        # process returns to Python often enough to notice Ctrl-C and report progress.
        per_epoch = (time.perf_counter() - call_start) / k
        chunk = 2 if done == k else max(1, int(CHUNK_SECONDS / max(per_epoch, 1e-9)))
        if progress is not None:
            progress(done)
        report("epochs", done, config.epochs, f"loss {float(out[-1]):.4g}")
        if watch is not None:
            watch.ran(k, model)
        if stopper is not None and stopper.stop(done):
            stopped = "patience"
            break
        if config.max_seconds and done < config.epochs and _spent(start, per_epoch) >= config.max_seconds:
            stopped = "budget"
            break
    best_epoch = stopper.restore() if stopper is not None else None
    _check_finite(trainable, config, f" (the largest |value| is {_largest(x):.3g})")
    trained(done, stopped, best_epoch)
    return TrainResult(np.concatenate(losses), time.perf_counter() - start, state, stopped, best_epoch)


def _spent(start: float, per_epoch: float) -> float:
    """Seconds of a budget spent since `start`, counting half of the next epoch: an epoch
    that would end further past the budget than short of it is not begun."""
    return time.perf_counter() - start + per_epoch / 2


BUFFER_ROWS = 131_072  # rows shuffled together when training in pieces
Piece = tuple[Any, np.ndarray, "np.ndarray | None"]  # (model inputs, labels, sample weights or None)


def train_stream(
    model: keras.Model,
    passes: Callable[[int], Iterator[Piece]],
    config: LoopConfig,
    *,
    seed: int = 0,
    buffer_rows: int = BUFFER_ROWS,
    hooks: tuple[LossHook, ...] = (),
    progress: Callable[[int], None] | None = None,
    task: str = "classification",
    target_std: float = 1.0,
    validation: Piece | None = None,
) -> TrainResult:
    """Train `model` in place on rows too many to hold at once, read piece by piece.

    `passes(epoch)` yields one full pass over the rows as pieces (inputs as the model takes
    them, labels, sample weights or None), e.g. `data.chunks.StoredRows.chunks` fed to the
    model. Each epoch joins consecutive pieces into buffers of at least `buffer_rows` rows
    and runs one compiled epoch over each buffer (a fresh shuffle within it, the same
    mathematics as `train`), while a background thread reads and joins the next buffer.
    Memory holds two buffers, not the rows. With one buffer for all the rows, in the same
    order, the result is `train`'s on those rows. `max_seconds` is checked after each
    buffer. Early stopping (`patience`) is on `validation`: rows kept out of the passes and
    held in memory (inputs, labels, weights or None), whose loss is measured after each
    epoch; the best epoch's weights are restored.

    Raises:
        UserError: patience without validation rows, or there are no rows.
        TrainingDiverged: as `train`.
    """
    import tensorflow as tf

    if config.patience and validation is None:
        raise UserError("patience (early stopping) needs validation rows set aside when training in pieces")
    tf.get_logger().setLevel(logging.ERROR)
    start = time.perf_counter()
    compiled: _Compiled | None = None
    mode, units, given, scaled, weighted = "", 1, False, False, False
    losses: list[float] = []
    stopped = None
    stopper: _Stopper | None = None
    held = validation if config.patience and validation is not None and len(validation[1]) else None
    watch = milestones()
    for epoch in range(config.epochs):
        total, rows = 0.0, 0
        for b, (x, y, w) in enumerate(prefetched(_buffers(passes(epoch), buffer_rows))):
            if compiled is None:
                mode, units, given = label_mode(model, y, task, config.loss), output_units(model), w is not None
                scaled = mode in REGRESSION_MODES and target_std != 1.0  # the error in label standard deviations
                weighted = given or scaled
                compiled = _compile(model, mode, config, weighted, hooks, units, isinstance(x, np.ndarray), None)
                if held is not None:  # the starting weights' loss: epoch 0
                    stopper = _Stopper(model, held[0], _targets(held[1], mode), held[2], mode, units, config, hooks)
            if (w is not None) != given:
                raise ValueError("every piece must have sample weights, or none")
            if weighted:
                w = np.asarray(np.ones(len(y)) if w is None else w, np.float32)
                w = w / np.float32(target_std ** _POWER[mode]) if scaled else w
            else:
                w = np.ones(1, np.float32)
            args = (compiled.tensor(x), tf.constant(_targets(y, mode)), tf.constant(w))
            # The first buffer of an epoch shuffles as `train` would; the others by their own seed.
            out = _run(compiled, model, config, args, epoch, 1, seed + 7919 * b, epoch, functools.partial(_largest, x))
            total, rows = total + float(out[0]) * len(y), rows + len(y)
            if config.max_seconds and time.perf_counter() - start >= config.max_seconds:
                stopped = "budget"
                break
        if compiled is None:
            raise UserError("no training rows")
        losses.append(total / max(rows, 1))
        if progress is not None:
            progress(epoch + 1)
        report("epochs", epoch + 1, config.epochs, f"loss {losses[-1]:.4g}")
        if watch is not None:
            watch.ran(1, model)
        if stopper is not None and stopper.stop(epoch + 1):
            stopped = "patience"
        if stopped:
            break
    assert compiled is not None
    best_epoch = stopper.restore() if stopper is not None else None
    _check_finite(compiled.trainable, config)
    trained(len(losses), stopped, best_epoch)
    return TrainResult(np.asarray(losses, np.float32), time.perf_counter() - start, compiled.state, stopped, best_epoch)


def _check_finite(weights: list[Any], config: LoopConfig, hint: str = "") -> None:
    """TrainingDiverged if the last steps overflowed the weights."""
    import tensorflow as tf

    if not all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in weights):
        raise TrainingDiverged(
            f"training diverged: the weights became infinite or NaN (learning_rate {config.learning_rate:g}); "
            f"nothing was saved. Lower the learning rate or scale the features{hint}"
        )


def _buffers(pieces: Iterator[Piece], buffer_rows: int) -> Iterator[Piece]:
    """Consecutive pieces joined into buffers of at least `buffer_rows` rows (the last may be
    smaller)."""
    parts: list[Piece] = []
    n = 0
    for piece in pieces:
        if len(piece[1]):
            parts.append(piece)
            n += len(piece[1])
        if n >= buffer_rows:
            yield _join(parts)
            parts, n = [], 0
    if parts:
        yield _join(parts)


def _join(parts: list[Piece]) -> Piece:
    if len(parts) == 1:
        return parts[0]
    first = parts[0][0]
    x = (
        np.concatenate([p[0] for p in parts])
        if isinstance(first, np.ndarray)
        else {name: np.concatenate([p[0][name] for p in parts]) for name in first}
    )
    w = None if parts[0][2] is None else np.concatenate([p[2] for p in parts])
    return x, np.concatenate([p[1] for p in parts]), w


_END = object()


def prefetched(items: Iterator[Any], depth: int = 1) -> Iterator[Any]:
    """`items`, produced by a background thread up to `depth` ahead (reading Parquet and
    joining arrays release the GIL, so they overlap the compiled training)."""
    out: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Raised(exc))

    thread = threading.Thread(target=work, name="ctrain-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


@dataclass(frozen=True)
class _Raised:
    exc: BaseException


def _take(x: np.ndarray | Mapping[str, np.ndarray], index: np.ndarray) -> Any:
    return x[index] if isinstance(x, np.ndarray) else {name: a[index] for name, a in x.items()}


class _Stopper:
    """Early stopping: the loss on held-out training rows before training and after each
    epoch; the weights of the best are kept and put back at the end. The starting weights
    count as epoch 0: a model that starts from a trained one (fine-tuning, replay) comes back
    as it was when no epoch beats it on the held-out rows, not worse for having trained."""

    def __init__(
        self,
        model: keras.Model,
        x: Any,
        y: np.ndarray,
        w: np.ndarray | None,
        mode: str,
        units: int,
        config: LoopConfig,
        hooks: tuple[LossHook, ...] = (),
    ) -> None:
        self.model, self.x, self.y, self.w = model, x, y, w
        self.mode, self.units, self.patience, self.hooks = mode, units, config.patience, hooks
        self.best, self.best_epoch, self.weights = self.loss(), 0, model.get_weights()

    def loss(self) -> float:
        from continual_trainer.trainer.candidate import member_output

        p = member_output(self.model, self.x if isinstance(self.x, Mapping) else {"_": self.x})
        y, eps = self.y, 1e-7
        if self.mode in REGRESSION_MODES:
            error = np.abs(p - y.reshape(len(y), -1))
            per = {"mse": error**2, "mae": error, "huber": np.where(error <= 1.0, 0.5 * error**2, error - 0.5)}
            rows = np.mean(per[self.mode], axis=1)
        elif self.mode == "sparse":
            rows = -np.log(np.clip(p[np.arange(len(y)), y], eps, None))
        else:  # binary, soft: cross-entropy with the (first `units`) target columns
            t = y[:, : self.units]
            if self.units == 1:
                q = np.clip(p[:, :1], eps, 1 - eps)
                rows = -(t * np.log(q) + (1 - t) * np.log(1 - q))[:, 0]
            else:
                rows = -np.sum(t * np.log(np.clip(p, eps, None)), axis=1)
            at = self.units
            for hook, width in zip(self.hooks, _hook_widths(self.hooks, self.units), strict=True):
                rows, at = hook.held_out_rows(rows, y[:, at : at + width], self.units), at + width
        return float(np.average(rows, weights=self.w) if self.w is not None else rows.mean())

    def stop(self, epoch: int) -> bool:
        """Record the epoch just finished; True when `patience` epochs passed without a better loss."""
        value = self.loss()
        if value < self.best - 1e-7:
            self.best, self.best_epoch, self.weights = value, epoch, self.model.get_weights()
        return epoch - self.best_epoch >= self.patience

    def restore(self) -> int:
        """Put the best weights back; their epoch (0: the starting weights)."""
        self.model.set_weights(self.weights)
        return self.best_epoch


def _largest(x: np.ndarray | Mapping[str, np.ndarray]) -> float:
    arrays = [x] if isinstance(x, np.ndarray) else list(x.values())
    return max((float(np.max(np.abs(a))) for a in arrays if a.size and a.dtype.kind == "f"), default=0.0)
