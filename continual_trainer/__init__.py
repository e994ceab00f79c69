"""continual-trainer: update deployed neural networks as new labelled data arrives."""

import os as _os

__version__ = "0.1.0"

# Installed, the checkout's folders `data`, `trainer`, `strategies` and `cluster` are this
# package's subpackages (pyproject.toml maps them; type checkers and IDEs read the strict
# editable install's tree, build/__editable__.*/). A process whose path puts the checkout's
# root first imports this folder instead, and finds them beside it: Ray puts its driver's
# working directory first on every worker's path (so that workers import the user's own
# modules), so a command run in the checkout has Ray workers that import from here.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "pyproject.toml")) and _os.path.isfile(
    _os.path.join(_checkout, "trainer", "loop.py")
):
    __path__.append(_checkout)

# The Python API (continual_trainer/api/) and a few names users need, imported on first use
# so that `ctrain` and `import continual_trainer` stay fast; neither imports TensorFlow or Ray.
_LAZY = {
    "ModelStore": "continual_trainer.api",
    "init_store": "continual_trainer.api",
    "open_store": "continual_trainer.api",
    "StreamOptions": "continual_trainer.api",
    "expected_inputs": "continual_trainer.api",
    "split_file": "continual_trainer.api",
    "run_demo": "continual_trainer.api",
    "strategy_names": "continual_trainer.api",
    "check_strategy": "continual_trainer.api",
    "metric_names": "continual_trainer.api",
    "leave_cluster": "continual_trainer.api",
    "WorkFailed": "continual_trainer.data.errors",
    "UserError": "continual_trainer.data.errors",
    "NothingNew": "continual_trainer.updatedata",
    "InputInfo": "continual_trainer.data.schema",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'continual_trainer' has no attribute {name!r}")
