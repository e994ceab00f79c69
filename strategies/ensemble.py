"""Ensembles of the current model(s) and a new member."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from data.errors import UserError
from strategies.base import TrainAllParams, TrainParams, UpdateInputs, fit
from strategies.registry import Capabilities, register
from trainer.candidate import Candidate, member_proba
from trainer.models import build_model
from trainer.params import Choice, Interval, Params, Rule, param

if TYPE_CHECKING:
    import keras

ENSEMBLE_WEIGHTS = ("equal", "fitted")


@dataclass(frozen=True)
class EnsembleOptions(Params):
    """How members are kept and weighted."""

    max_members: int = param(0, Interval(int, 0), "keep at most this many members, oldest dropped (0: no limit)")
    ensemble_weights: str = param("equal", Choice(ENSEMBLE_WEIGHTS), "equal, or fitted to the holdout's log loss")

    rules = (Rule(lambda p: p.max_members != 1, "max_members must be 0 (no limit) or >= 2, got 1"),)


@dataclass(frozen=True)
class EnsembleParams(TrainParams, EnsembleOptions):
    """A new member fit on new data."""


@dataclass(frozen=True)
class EnsembleAllParams(TrainAllParams, EnsembleOptions):
    """A new member fit on old + new data."""


def ensemble(inputs: UpdateInputs, params: EnsembleParams | EnsembleAllParams) -> Candidate:
    """Add a fresh member (covering every class the store knows) to the current ones."""
    new = fit(build_model(inputs.model_spec, inputs.n_features, inputs.n_classes, inputs.seed), inputs, params)
    return combine(inputs, (new,), params)


def combine(inputs: UpdateInputs, new: tuple[keras.Model, ...], params: EnsembleOptions) -> Candidate:
    """The current members plus `new` ones, capped at `max_members` and weighted."""
    members = (*inputs.current.members, *new)
    if params.max_members:
        members = members[-params.max_members :]
    if params.ensemble_weights == "fitted":
        if len(inputs.holdout) == 0:
            raise UserError("ensemble_weights=fitted needs held-out rows, and this store's holdout_fraction is 0")
        weights = fitted_weights(
            [member_proba(m, inputs.holdout.x, inputs.n_classes) for m in members], inputs.holdout.y
        )
    else:
        weights = tuple(1 / len(members) for _ in members)
    return Candidate(members, weights)


def fitted_weights(probas: list[np.ndarray], y: np.ndarray) -> tuple[float, ...]:
    """Simplex weights minimising the log loss of the weighted mean of `probas`."""
    from scipy.optimize import minimize

    picked = np.stack([p[np.arange(len(y)), y] for p in probas], axis=1)  # (n, members)

    def loss(z: np.ndarray) -> float:
        w = np.exp(z - z.max())
        w /= w.sum()
        return float(-np.mean(np.log(np.clip(picked @ w, 1e-15, None))))

    z = minimize(loss, np.zeros(len(probas)), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-7}).x
    w = np.exp(z - z.max())
    w /= w.sum()
    return tuple(float(v) for v in w)


ENSEMBLES = Capabilities(learns_new_classes=True, data_parallel="bagging")
register("ensemble_new", EnsembleParams, "current model + a new member fit on new data only", ENSEMBLES)(ensemble)
register("ensemble_all", EnsembleAllParams, "current model + a new member fit on old + new data", ENSEMBLES)(ensemble)
