"""The training loop: whole epochs inside one compiled TensorFlow function.

Keras `fit` returns to Python after every epoch and pays callbacks, data adapters
and per-step dispatch; for the small networks this tool updates, that overhead is
most of the time. Here one `tf.function` runs many epochs of shuffling, batching,
forward, loss, gradients and the optimizer step, for any stack of Dense layers.
Calls are sized to about half a second, so that Ctrl-C and progress reports are never
far away; a loss that becomes NaN or infinite stops training with a clear error.

The mathematics match `fit` with the same settings: a fresh shuffle each epoch,
the last partial batch kept, the loss a sample-weighted mean over the batch
(Keras's `sum_over_batch_size`), and the same update rules as Keras `SGD` (with
momentum) and `Adam`, applied by TensorFlow's fused kernels for those rules.

The traced function is cached by network structure, so training many models of the
same shape (seeds, strategies, ensemble members) traces it once per process.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from data.errors import UserError
from trainer.params import Choice, Interval, Params, param

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

OPTIMIZERS = ("sgd", "adam")
CHUNK_SECONDS = 0.5


class TrainingDiverged(UserError):
    """The loss became NaN or infinite: the settings or the data's scale are to blame."""


_ACTIVATIONS = ("relu", "linear", "tanh", "sigmoid", "softmax")


EPOCHS = Interval(int, 1)
BATCH_SIZE = Interval(int, 1)
LEARNING_RATE = Interval(float, 0, low_open=True)
MOMENTUM = Interval(float, 0, 1, high_open=True)


@dataclass(frozen=True)
class LoopConfig(Params):
    """How to train: the reference recipe by default (SGD 0.01, momentum 0.9, 150 x 32)."""

    epochs: int = param(150, EPOCHS, "passes over the training rows")
    batch_size: int = param(32, BATCH_SIZE, "rows per optimizer step")
    learning_rate: float = param(0.01, LEARNING_RATE, "optimizer step size")
    momentum: float = param(0.9, MOMENTUM, "SGD momentum (ignored by adam)")
    optimizer: str = param("sgd", Choice(OPTIMIZERS), "sgd (with momentum) or adam")


@dataclass(frozen=True)
class OptimizerState:
    """Optimizer slots (momentum, or Adam's moments and step) kept between `train` calls."""

    slots: list[Any]


@dataclass(frozen=True)
class TrainResult:
    epoch_loss: np.ndarray
    seconds: float
    state: OptimizerState


@dataclass(frozen=True)
class _LayerShape:
    activation: str
    has_bias: bool
    trainable: bool


ExtraLoss = Callable[[list["tf.Variable"]], "tf.Tensor"]


def _structure(model: keras.Model) -> tuple[tuple[_LayerShape, ...], list[Any]]:
    """The static shape of a Dense stack and its weight variables in order."""
    import keras

    shapes, weights = [], []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if not isinstance(layer, keras.layers.Dense):
            raise ValueError(f"the training loop supports Dense stacks; layer {layer.name!r} is {type(layer).__name__}")
        act = keras.activations.serialize(layer.activation)
        act = act if isinstance(act, str) else act.get("config", {}).get("name", act)
        if act not in _ACTIVATIONS:
            raise ValueError(f"layer {layer.name!r}: unsupported activation {act!r}")
        shapes.append(_LayerShape(act, layer.use_bias, bool(layer.trainable)))
        weights.append(layer.kernel.value)
        if layer.use_bias:
            weights.append(layer.bias.value)
    if not shapes or shapes[-1].activation not in ("sigmoid", "softmax"):
        raise ValueError("the last layer must be a sigmoid or softmax head")
    return tuple(shapes), weights


def _forward(shapes: tuple[_LayerShape, ...], weights: list[Any], x: tf.Tensor) -> tf.Tensor:
    """Logits of the head (its activation is folded into the loss)."""
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
        h = tf.matmul(h, weights[i])
        i += 1
        if layer.has_bias:
            h = tf.nn.bias_add(h, weights[i])
            i += 1
        if k < len(shapes) - 1:
            h = act[layer.activation](h)
    return h


def _trainable_index(shapes: tuple[_LayerShape, ...]) -> list[int]:
    index, i = [], 0
    for layer in shapes:
        n = 2 if layer.has_bias else 1
        if layer.trainable:
            index.extend(range(i, i + n))
        i += n
    return index


def _make_epochs_fn(
    shapes: tuple[_LayerShape, ...], label_mode: str, optimizer: str, weighted: bool, extra_loss: ExtraLoss | None
) -> Any:
    import tensorflow as tf

    train_idx = _trainable_index(shapes)

    def batch_loss(logits: tf.Tensor, y: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
        if label_mode == "binary":
            per_row = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits)[:, 0]
        elif label_mode == "sparse":
            per_row = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        else:
            per_row = tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=logits)
        return tf.reduce_mean(per_row * w if weighted else per_row)

    def apply(params: list[Any], grads: list[tf.Tensor], slots: list[Any], lr: Any, b1: Any, b2: Any) -> None:
        if optimizer == "sgd":
            for v, g, accum in zip(params, grads, slots, strict=True):
                tf.raw_ops.ResourceApplyKerasMomentum(var=v.handle, accum=accum.handle, lr=lr, grad=g, momentum=b1)
            return
        step = slots[-1]
        step.assign_add(1.0)
        b1p, b2p = tf.pow(b1, step), tf.pow(b2, step)
        for k, (v, g) in enumerate(zip(params, grads, strict=True)):
            m, s = slots[2 * k], slots[2 * k + 1]
            tf.raw_ops.ResourceApplyAdam(
                var=v.handle,
                m=m.handle,
                v=s.handle,
                beta1_power=b1p,
                beta2_power=b2p,
                lr=lr,
                beta1=b1,
                beta2=b2,
                epsilon=tf.constant(1e-7),
                grad=g,
            )

    @tf.function(reduce_retracing=True)
    def run_epochs(weights, slots, x, y, w, first_epoch, n_epochs, seed, batch_size, hp):
        n = tf.shape(x)[0]
        steps = (n + batch_size - 1) // batch_size
        params = [weights[i] for i in train_idx]
        lr, b1, b2 = tf.unstack(hp)
        losses = tf.TensorArray(tf.float32, size=n_epochs)
        for e in tf.range(n_epochs):
            perm = tf.argsort(tf.random.stateless_uniform([n], seed=tf.stack([seed, first_epoch + e])))
            xs, ys = tf.gather(x, perm), tf.gather(y, perm)
            ws = tf.gather(w, perm) if weighted else w
            total = tf.constant(0.0)
            for s in tf.range(steps):
                a = s * batch_size
                b = tf.minimum(a + batch_size, n)
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(params)
                    loss = batch_loss(_forward(shapes, weights, xs[a:b]), ys[a:b], ws[a:b])
                    if extra_loss is not None:
                        loss += extra_loss(weights)
                apply(params, tape.gradient(loss, params), slots, lr, b1, b2)
                total += loss
            losses = losses.write(e, total / tf.cast(steps, tf.float32))
        return losses.stack()

    return run_epochs


@functools.lru_cache(maxsize=64)
def _cached_epochs_fn(shapes: tuple[_LayerShape, ...], label_mode: str, optimizer: str, weighted: bool) -> Any:
    return _make_epochs_fn(shapes, label_mode, optimizer, weighted, None)


def train(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    config: LoopConfig,
    *,
    sample_weight: np.ndarray | None = None,
    seed: int = 0,
    extra_loss: ExtraLoss | None = None,
    progress: Callable[[int], None] | None = None,
    state: OptimizerState | None = None,
    first_epoch: int = 0,
) -> TrainResult:
    """Train `model` in place on (x, y).

    Args:
        model: a stack of Dense layers ending in a sigmoid (1 unit) or softmax head;
            layers with `trainable = False` are left untouched.
        x: float features, shape (n, n_features).
        y: class indices, shape (n,), or soft targets: probabilities of class 1,
            shape (n, 1), for a sigmoid head; class probabilities, shape (n, k),
            for a softmax head (as in distillation).
        config: epochs, batch size and optimizer.
        sample_weight: per-row loss weights (default all 1).
        seed: fixes the shuffling order.
        extra_loss: a term added to every batch's loss, given the weight variables
            (kernel, bias per layer), e.g. an EWC penalty. Its function is not cached.
        progress: called with the number of epochs finished after each chunk.
        state: optimizer state from an earlier call on the same model, to continue
            (e.g. between rounds of model averaging); fresh if None.
        first_epoch: index of the first epoch, so continued calls shuffle differently.

    Returns:
        The mean training loss of each epoch, the wall-clock seconds and the optimizer
        state.
    """
    import tensorflow as tf

    start = time.perf_counter()
    shapes, weights = _structure(model)
    if len(x) == 0:
        raise ValueError("no training rows")
    soft = y.ndim == 2
    binary = shapes[-1].activation == "sigmoid"
    if binary:
        label_mode, targets = "binary", (y if soft else y[:, None]).astype(np.float32)
    elif soft:
        label_mode, targets = "soft", y.astype(np.float32)
    else:
        label_mode, targets = "sparse", y.astype(np.int32)
    weighted = sample_weight is not None
    w = np.asarray(sample_weight, np.float32) if weighted else np.ones(1, np.float32)

    train_idx = _trainable_index(shapes)
    per_param = 1 if config.optimizer == "sgd" else 2
    if state is None:
        slots = [tf.Variable(tf.zeros_like(weights[i])) for i in train_idx for _ in range(per_param)]
        if config.optimizer == "adam":
            slots.append(tf.Variable(0.0))
        state = OptimizerState(slots)
    slots = state.slots
    if config.optimizer == "adam":
        hp = tf.constant([config.learning_rate, 0.9, 0.999], tf.float32)
    else:
        hp = tf.constant([config.learning_rate, config.momentum, 0.0], tf.float32)

    fn = (
        _make_epochs_fn(shapes, label_mode, config.optimizer, weighted, extra_loss)
        if extra_loss is not None
        else _cached_epochs_fn(shapes, label_mode, config.optimizer, weighted)
    )
    args = (tf.constant(x, tf.float32), tf.constant(targets), tf.constant(w))
    losses, done, chunk = [], 0, 1
    while done < config.epochs:
        k = min(chunk, config.epochs - done)
        call_start = time.perf_counter()
        out = fn(
            weights,
            slots,
            *args,
            tf.constant(first_epoch + done),
            tf.constant(k),
            tf.constant(seed % 2**31),
            tf.constant(config.batch_size),
            hp,
        ).numpy()
        if not np.isfinite(out).all():
            bad = done + int(np.argmin(np.isfinite(out))) + 1
            raise TrainingDiverged(
                f"training diverged: the loss became {'NaN' if np.isnan(out).any() else 'infinite'} in epoch {bad} "
                f"(learning_rate {config.learning_rate:g}); nothing was saved. Lower the learning rate or scale the "
                f"features (the largest |value| is {float(np.max(np.abs(x))):.3g})"
            )
        losses.append(out)
        done += k
        # Chunks of about CHUNK_SECONDS (the first call, which traces, is one epoch): the
        # process returns to Python often enough to notice Ctrl-C and report progress.
        per_epoch = (time.perf_counter() - call_start) / k
        chunk = 2 if done == k else max(1, int(CHUNK_SECONDS / max(per_epoch, 1e-9)))
        if progress is not None:
            progress(done)
    return TrainResult(np.concatenate(losses), time.perf_counter() - start, state)
