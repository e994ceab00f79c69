"""Reuse the current network's body: graft new layers on it, or give it a new head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from data.errors import UserError
from strategies.base import TrainAllParams, UpdateInputs, fit
from strategies.registry import Capabilities, register
from trainer.candidate import Candidate
from trainer.models import clone, head_layer, hidden_layers, model_classes
from trainer.params import Choice, Interval, Rule, Sizes, param

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


def _frozen_body(inputs: UpdateInputs, freeze: int, strategy: str) -> tuple[keras.Model, list[keras.layers.Layer]]:
    """A copy of the current network and its hidden layers, the first `freeze` frozen."""
    if len(inputs.current.members) != 1:
        raise UserError(
            f"{strategy} needs a single-network current model; it has {len(inputs.current.members)} members"
        )
    model = clone(inputs.current.members[0])
    body = list(model.layers[:-1])
    if freeze > len(body):
        raise UserError(f"--set freeze={freeze}: the current model has only {len(body)} hidden layers")
    n_frozen = len(body) if freeze == -1 else freeze
    for i, layer in enumerate(body):
        layer.trainable = i >= n_frozen
    return model, body


@register(
    "graft",
    GraftParams,
    "freeze the current model's layers, add new trainable layers and head",
    Capabilities(learns_new_classes=True),
)
def graft(inputs: UpdateInputs, params: GraftParams) -> Candidate:
    import keras

    _, body = _frozen_body(inputs, params.freeze, "graft")
    prefix = f"graft{len(body)}"
    new_layers = hidden_layers(params.graft_sizes(), inputs.seed, prefix=prefix)
    head = head_layer(inputs.n_classes, inputs.seed + 1000, name="head")
    model = keras.Sequential([keras.Input((inputs.n_features,)), *body, *new_layers, head], name="grafted")
    return Candidate.single(fit(model, inputs, params))


@dataclass(frozen=True)
class NewHeadParams(TransferParams):
    """The body starts from the current weights and keeps learning (`freeze=-1`: head only)."""

    freeze: int = 0


@register(
    "new_head",
    NewHeadParams,
    "keep the body, replace the output layer with one for every class",
    Capabilities(learns_new_classes=True),
)
def new_head(inputs: UpdateInputs, params: NewHeadParams) -> Candidate:
    """Old classes keep their output weights (a sigmoid unit becomes the class-1 softmax
    column), classes the old head lacked start fresh."""
    import keras

    old, body = _frozen_body(inputs, params.freeze, "new_head")
    head = head_layer(inputs.n_classes, inputs.seed + 1000, name="head")
    model = keras.Sequential([keras.Input((inputs.n_features,)), *body, head], name="new_head")
    w_old, b_old = old.layers[-1].get_weights()
    w, b = head.get_weights()
    b[:] = 0
    known = model_classes(old)
    if w_old.shape[1] == 1 and w.shape[1] > 1:  # sigmoid -> softmax: logits [0, z] give the same p
        w[:, 0], b[0] = 0.0, 0.0
        w[:, 1], b[1] = w_old[:, 0], b_old[0]
    else:
        cols = min(w_old.shape[1], w.shape[1]) if known <= inputs.n_classes else 0
        w[:, :cols], b[:cols] = w_old[:, :cols], b_old[:cols]
    head.set_weights([w.astype(np.float32), b.astype(np.float32)])
    return Candidate.single(fit(model, inputs, params))
