"""Update strategies: small frozen parameter dataclasses and one function each.

Importing the package registers every strategy; TensorFlow is imported only when a strategy
runs. Strategies that installed packages declare in the entry-point group
`continual_trainer.strategies` join the registry the first time it is read.

This module is also a strategy author's whole surface: a strategy is a function
`fn(inputs: UpdateInputs, params) -> Candidate` registered with `register(name, Params,
summary, Capabilities(...))`; `TrainParams` (and `TrainAllParams`, `NoParams`) are the
parameter dataclasses to extend (`param` declares a field's constraints), and `fit`,
`fit_fresh`, `clone` train a copy of a network or a fresh one through the compiled loop. See the
the Strategies page's "Write your own strategy" (docs/strategies.md).
"""

# Importing a module registers its strategies; this order is the listing order.
from continual_trainer.strategies import retrain  # noqa: I001, F401
from continual_trainer.strategies import ensemble  # noqa: F401
from continual_trainer.strategies import transfer  # noqa: F401
from continual_trainer.strategies import continual  # noqa: F401
from continual_trainer.data.errors import UserError
from continual_trainer.strategies.base import (
    NoParams,
    TrainAllParams,
    TrainParams,
    UpdateInputs,
    UpdateRows,
    fit,
    fit_fresh,
)
from continual_trainer.strategies.registry import Capabilities, Strategy, get, names, register
from continual_trainer.trainer.candidate import Candidate
from continual_trainer.trainer.models import clone, model_classes
from continual_trainer.trainer.params import Interval, param

__all__ = [
    "Candidate",
    "Capabilities",
    "Interval",
    "NoParams",
    "Strategy",
    "TrainAllParams",
    "TrainParams",
    "UpdateInputs",
    "UpdateRows",
    "UserError",
    "clone",
    "fit",
    "fit_fresh",
    "get",
    "model_classes",
    "names",
    "param",
    "register",
]
