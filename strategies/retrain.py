"""Keep, fine-tune or refit a single network: the retraining family."""

from __future__ import annotations

from dataclasses import dataclass

from continual_trainer.data.errors import UserError
from continual_trainer.strategies.base import (
    FinetuneRecipe,
    NoParams,
    TrainAllParams,
    TrainParams,
    UpdateInputs,
    fit,
    fit_fresh,
    per_network,
)
from continual_trainer.strategies.registry import Capabilities, names, register
from continual_trainer.trainer.candidate import Candidate
from continual_trainer.trainer.models import clone, model_classes


@dataclass(frozen=True)
class FinetuneParams(FinetuneRecipe, TrainParams):
    """Continue training on new data with a tenth of the reference learning rate."""


@dataclass(frozen=True)
class FinetuneAllParams(FinetuneRecipe, TrainAllParams):
    """Continue training on old + new data with a tenth of the reference learning rate."""


@register(
    "keep",
    NoParams,
    "do nothing: the current model stays",
    Capabilities(trains=False, in_pieces=True, starts_from="current"),
)
def keep(inputs: UpdateInputs, params: NoParams) -> Candidate:
    return inputs.current


def finetune(inputs: UpdateInputs, params: TrainParams) -> Candidate:
    """Continue training a copy of every current member; ensemble weights stay."""
    for model in inputs.current.members:
        if not inputs.regression and model_classes(model) < inputs.n_classes:
            raise UserError(
                f"the current model knows {model_classes(model)} classes but the store has {inputs.n_classes}; "
                f"fine-tuning cannot add outputs: use one of {', '.join(names(learns_new_classes=True))}"
            )
    each = per_network(params, len(inputs.current.members))
    members = tuple(fit(clone(m), inputs, each, seed_offset=i) for i, m in enumerate(inputs.current.members))
    return Candidate(members, inputs.current.weights)


def fresh(inputs: UpdateInputs, params: TrainParams) -> Candidate:
    """Fit a new network of the store's recipe; the current model is discarded."""
    return Candidate.single(fit_fresh(inputs, params))


FINETUNE = Capabilities(data_parallel="averaging", in_pieces=True, starts_from="current")
FRESH = Capabilities(learns_new_classes=True, in_pieces=True)
register(
    "finetune_new", FinetuneParams, "continue training the current model on new data, smaller learning rate", FINETUNE
)(finetune)
register(
    "finetune_all",
    FinetuneAllParams,
    "continue training the current model on old + new data, smaller learning rate",
    FINETUNE,
)(finetune)
register("fresh_new", TrainParams, "fit a new model on new data only, discard the old", FRESH)(fresh)
register("fresh_all", TrainAllParams, "fit a new model on old + new data", FRESH)(fresh)
