"""Update strategies: small frozen parameter dataclasses and one function each.

Importing the package registers every strategy; TensorFlow is imported only when
a strategy runs.
"""

# Importing a module registers its strategies; this order is the listing order.
from continual_trainer.strategies import retrain  # noqa: I001, F401
from continual_trainer.strategies import ensemble  # noqa: F401
from continual_trainer.strategies import transfer  # noqa: F401
from continual_trainer.strategies import continual  # noqa: F401
from continual_trainer.strategies.base import UpdateInputs, UpdateRows
from continual_trainer.strategies.registry import Capabilities, Strategy, get, names, register

__all__ = ["Capabilities", "Strategy", "UpdateInputs", "UpdateRows", "get", "names", "register"]
