"""continual-trainer: update deployed neural networks as new labelled data arrives."""

import os as _os

__version__ = "0.1.0"

# Installed, the checkout's folders `data`, `trainer`, `strategies` and `cluster` are this
# package's subpackages (pyproject.toml maps them). Run from a checkout that is not installed
# (a Ray job's working directory on a cluster that has only the dependencies), they are found
# beside this folder.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "pyproject.toml")) and _os.path.isfile(
    _os.path.join(_checkout, "trainer", "cli.py")
):
    __path__.append(_checkout)

# The Python API (continual_trainer/api.py), imported on first use so that `ctrain` and
# `import continual_trainer` stay fast; neither imports TensorFlow or Ray.
_API = ("ModelStore", "init_store", "open_store")
_ERRORS = ("UserError",)
__all__ = [*_API, *_ERRORS, "InputInfo", "NothingNew", "__version__"]


def __getattr__(name: str):
    if name in _API:
        from continual_trainer import api

        return getattr(api, name)
    if name == "UserError":
        from continual_trainer.data.errors import UserError

        return UserError
    if name == "NothingNew":
        from continual_trainer.trainer.updatedata import NothingNew

        return NothingNew
    if name == "InputInfo":
        from continual_trainer.data.schema import InputInfo

        return InputInfo
    raise AttributeError(f"module 'continual_trainer' has no attribute {name!r}")
