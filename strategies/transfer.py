"""Reuse the current network's body: graft new layers on it, or give it a new head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from continual_trainer.data.errors import UserError
from continual_trainer.strategies.base import TrainAllParams, UpdateInputs, fit
from continual_trainer.strategies.registry import Capabilities, register
from continual_trainer.trainer.candidate import Candidate
from continual_trainer.trainer.models import (
    clone,
    head_layer,
    hidden_layers,
    input_structure,
    is_preprocessing,
    model_classes,
    output_layer,
)
from continual_trainer.trainer.params import Choice, Interval, Rule, Sizes, param

if TYPE_CHECKING:
    import keras

DATA_CHOICES = ("new", "all")


@dataclass(frozen=True)
class TransferParams(TrainAllParams):
    """Train on `data` (`new` or `all`) with the first `freeze` body layers frozen (-1: all)."""

    data: str = param("all", Choice(DATA_CHOICES), "train on new data or on all (old + new)")
    freeze: int = param(-1, Interval(int, -1), "body layers kept frozen, from the input (-1: all)")

    rules = (Rule(lambda p: p.data == "all" or p.old_fraction == 1.0, "old_fraction has no effect with data=new"),)

    def trains_on_old(self) -> bool:
        return self.data == "all"


@dataclass(frozen=True)
class GraftParams(TransferParams):
    """`layers`: hidden sizes of the grafted layers, comma separated (empty: head only)."""

    layers: str = param("10", Sizes(), "hidden sizes of the grafted layers (empty: head only)")

    def graft_sizes(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.layers.split(",") if s.strip())


def single_network(inputs: UpdateInputs, strategy: str) -> keras.Model:
    """The current model's one network, or UserError naming the strategies that make one."""
    if len(inputs.current.members) != 1:
        from continual_trainer.strategies.registry import names

        one = names(starts_from="scratch", trains=True)  # strategies that make one new network
        raise UserError(
            f"{strategy} needs a single-network current model; the current one is an ensemble of "
            f"{len(inputs.current.members)} members. Make one network first with {' or '.join(one)} "
            f"(`ctrain update --store STORE --strategy {one[-1]}`), then run {strategy}; or roll back to a "
            "single-network version (`ctrain rollback --store STORE --to VERSION`)"
        )
    return inputs.current.members[0]


def _frozen_body(
    current: keras.Model, freeze: int, strategy: str
) -> tuple[keras.Model, Any, keras.layers.Layer, list[keras.layers.Layer]]:
    """A copy of `current`; the tensor its head reads (the body's output); the head (the
    last layer with weights before the output); and the weightless layers after the head
    (e.g. a rescaling to the label's units), to apply again after a new head. The first
    `freeze` body layers with weights are frozen (-1: all)."""
    import keras

    model = clone(current)
    head = output_layer(model)
    tail: list[Any] = []
    while not head.weights and not isinstance(head, keras.layers.InputLayer):
        tail.insert(0, head)
        head = head.input._keras_history.operation
    # The body is the layers that learn: preprocessing state (an adapted Normalization, a
    # lookup's vocabulary) is the data's and neither counts as a layer nor becomes trainable.
    body = [layer for layer in model.layers if layer is not head and layer.weights and not is_preprocessing(layer)]
    if freeze > len(body):
        raise UserError.about(
            "freeze",
            freeze,
            f"the current model has only {len(body)} hidden layer{'' if len(body) == 1 else 's'}",
            group="params",
        )
    n_frozen = len(body) if freeze == -1 else freeze
    for i, layer in enumerate(body):
        layer.trainable = i >= n_frozen
    if isinstance(head, keras.layers.InputLayer):
        raise UserError(f"{strategy}: the current model has no layers with weights")
    return model, head.input, head, tail


@register(
    "graft",
    GraftParams,
    "freeze the current model's layers, add new trainable layers and head",
    Capabilities(learns_new_classes=True, in_pieces=True, starts_from="body"),
)
def graft(inputs: UpdateInputs, params: GraftParams) -> Candidate:
    """New Dense layers and a new head on the current network's body (its output up to the
    input of its output layer), for Sequential and functional models alike."""
    import keras

    model, h, _, tail = _frozen_body(single_network(inputs, "graft"), params.freeze, "graft")
    for layer in hidden_layers(params.graft_sizes(), inputs.seed, prefix="graft"):
        h = layer(h)
    out = head_layer(inputs.n_classes, inputs.seed + 1000, name="graft_head")(h)
    for layer in tail:
        out = layer(out)
    return Candidate.single(fit(keras.Model(input_structure(model), out, name="grafted"), inputs, params))


@dataclass(frozen=True)
class NewHeadParams(TransferParams):
    """The body starts from the current weights and keeps learning (`freeze=-1`: head only)."""

    freeze: int = 0


@register(
    "new_head",
    NewHeadParams,
    "keep the body, replace the output layer with one for every class",
    Capabilities(learns_new_classes=True, in_pieces=True, starts_from="current"),
)
def new_head(inputs: UpdateInputs, params: NewHeadParams) -> Candidate:
    """Old classes keep their output weights (a sigmoid unit becomes the class-1 softmax
    column), classes the old head lacked start fresh."""
    if inputs.regression:
        raise UserError("new_head gives a model outputs for new classes; a regression store has no classes")
    old, h, old_head, _ = _frozen_body(single_network(inputs, "new_head"), params.freeze, "new_head")
    return Candidate.single(fit(_grown(old, h, old_head, inputs.n_classes, inputs.seed, "new_head"), inputs, params))


def with_classes(model: keras.Model, n_classes: int, seed: int, strategy: str) -> keras.Model:
    """A trainable copy of `model` whose head predicts `n_classes` classes: the same network
    if it already does, else its body with a head that keeps the known classes' weights
    (as `new_head` makes it). For regression (`n_classes` 0), a copy."""
    if n_classes == 0 or model_classes(model) >= n_classes:
        return clone(model)
    old, h, old_head, _ = _frozen_body(model, 0, strategy)
    return _grown(old, h, old_head, n_classes, seed, strategy)


def _grown(old: keras.Model, h: Any, old_head: Any, n_classes: int, seed: int, strategy: str) -> keras.Model:
    """`old`'s body (ending in tensor `h`) with a new Dense head for `n_classes`, keeping
    `old_head`'s weights for the classes it knew."""
    import keras

    if not isinstance(old_head, keras.layers.Dense):
        raise UserError(f"{strategy} replaces a Dense output layer; this model's is {type(old_head).__name__}")
    head = head_layer(n_classes, seed + 1000, name=f"{strategy}_head")
    model = keras.Model(input_structure(old), head(h), name=strategy)
    w_old, b_old = old_head.get_weights()
    w, b = head.get_weights()
    b[:] = 0
    known = model_classes(old)
    if w_old.shape[1] == 1 and w.shape[1] > 1:  # sigmoid -> softmax: logits [0, z] give the same p
        w[:, 0], b[0] = 0.0, 0.0
        w[:, 1], b[1] = w_old[:, 0], b_old[0]
    else:
        cols = min(w_old.shape[1], w.shape[1]) if known <= n_classes else 0
        w[:, :cols], b[:cols] = w_old[:, :cols], b_old[:cols]
    head.set_weights([w.astype(np.float32), b.astype(np.float32)])
    return model
