"""Ensembles of the current model(s) and a new member."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from continual_trainer.data.errors import UserError
from continual_trainer.strategies.base import TrainAllParams, TrainParams, UpdateInputs, fit_fresh
from continual_trainer.strategies.registry import Capabilities, register
from continual_trainer.trainer.candidate import Candidate, member_output, member_proba
from continual_trainer.trainer.params import Choice, Interval, Params, Rule, param

if TYPE_CHECKING:
    import keras

ENSEMBLE_WEIGHTS = ("equal", "fitted")


@dataclass(frozen=True)
class EnsembleOptions(Params):
    """How members are kept and weighted."""

    max_members: int = param(0, Interval(int, 0), "keep at most this many members, oldest dropped (0: no limit)")
    ensemble_weights: str = param(
        "equal", Choice(ENSEMBLE_WEIGHTS), "equal, or fitted to the holdout (log loss or squared error)"
    )

    rules = (Rule(lambda p: p.max_members != 1, "max_members must be 0 (no limit) or >= 2, got 1"),)


@dataclass(frozen=True)
class EnsembleParams(TrainParams, EnsembleOptions):
    """A new member fit on new data."""


@dataclass(frozen=True)
class EnsembleAllParams(TrainAllParams, EnsembleOptions):
    """A new member fit on old + new data."""


def ensemble(inputs: UpdateInputs, params: EnsembleParams | EnsembleAllParams) -> Candidate:
    """Add a fresh member (covering every class the store knows) to the current ones."""
    return combine(inputs, (fit_fresh(inputs, params),), params)


def combine(inputs: UpdateInputs, new: tuple[keras.Model, ...], params: EnsembleOptions) -> Candidate:
    """The current members plus `new` ones, capped at `max_members` and weighted."""
    members = (*inputs.current.members, *new)
    if params.max_members:
        members = members[-params.max_members :]
    if params.ensemble_weights == "fitted":
        if len(inputs.holdout) == 0:
            raise UserError("ensemble_weights=fitted needs held-out rows, and this store's holdout_fraction is 0")
        holdout = inputs.holdout.load()  # left in the store: read, the fit needs every row
        x, y = holdout.x, holdout.y
        if inputs.regression:
            weights = fitted_weights([member_output(m, x)[:, 0] for m in members], y, regression=True)
        else:
            weights = fitted_weights([member_proba(m, x, inputs.n_classes) for m in members], y)
    else:
        weights = tuple(1 / len(members) for _ in members)
    return Candidate(members, weights)


def fitted_weights(preds: list[np.ndarray], y: np.ndarray, regression: bool = False) -> tuple[float, ...]:
    """Simplex weights minimising the log loss (classification: `preds` are class
    probabilities) or the squared error (regression) of the weighted mean of `preds`."""
    from scipy.optimize import minimize

    if regression:
        stacked = np.stack(preds, axis=1)  # (n, members)

        def loss(z: np.ndarray) -> float:
            return float(np.mean((stacked @ _simplex(z) - y) ** 2))

    else:
        picked = np.stack([p[np.arange(len(y)), y] for p in preds], axis=1)  # (n, members)

        def loss(z: np.ndarray) -> float:
            return float(-np.mean(np.log(np.clip(picked @ _simplex(z), 1e-15, None))))

    z = minimize(loss, np.zeros(len(preds)), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-7}).x
    return tuple(float(v) for v in _simplex(z))


def _simplex(z: np.ndarray) -> np.ndarray:
    w = np.exp(z - z.max())
    return w / w.sum()


ENSEMBLES = Capabilities(learns_new_classes=True, data_parallel="bagging", in_pieces=True, starts_from="members")
register("ensemble_new", EnsembleParams, "current model + a new member fit on new data only", ENSEMBLES)(ensemble)
register("ensemble_all", EnsembleAllParams, "current model + a new member fit on old + new data", ENSEMBLES)(ensemble)
