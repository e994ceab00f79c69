"""The one registry of update strategies, and parsing of their parameters."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from data.errors import UserError

if TYPE_CHECKING:
    from strategies.base import UpdateInputs
    from trainer.candidate import Candidate

StrategyFn = Callable[["UpdateInputs", Any], "Candidate"]


@dataclass(frozen=True)
class Strategy:
    """A registered strategy: its name, parameter dataclass and function."""

    name: str
    params: type
    fn: StrategyFn
    summary: str

    def __call__(self, inputs: UpdateInputs, params: Any) -> Candidate:
        if not isinstance(params, self.params):
            raise TypeError(f"{self.name} takes {self.params.__name__}, got {type(params).__name__}")
        return self.fn(inputs, params)

    def make_params(self, values: Mapping[str, Any] | None = None) -> Any:
        """Build the parameters from `values` (strings are parsed), or raise UserError."""
        fields = {f.name: f for f in dataclasses.fields(self.params)}
        kwargs = {}
        for key, raw in (values or {}).items():
            if key not in fields:
                known = ", ".join(sorted(fields)) or "none"
                raise UserError(f"--set {key}: {self.name} has no parameter {key!r}; its parameters: {known}")
            kwargs[key] = _parse(key, raw, fields[key].type)
        try:
            return self.params(**kwargs)
        except ValueError as exc:
            raise UserError(f"--set: {self.name}: {exc}") from None


_REGISTRY: dict[str, Strategy] = {}


def register(name: str, params: type, summary: str) -> Callable[[StrategyFn], StrategyFn]:
    """Register `fn(inputs, params) -> Candidate` under `name`; a duplicate name is an error."""

    def decorate(fn: StrategyFn) -> StrategyFn:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} is already registered")
        if not dataclasses.is_dataclass(params):
            raise TypeError(f"parameters of {name!r} must be a dataclass")
        _REGISTRY[name] = Strategy(name, params, fn, summary)
        return fn

    return decorate


def get(name: str) -> Strategy:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"--strategy {name}: unknown strategy; choose one of {', '.join(names())}") from None


def names() -> list[str]:
    return list(_REGISTRY)


def _parse(key: str, raw: Any, annotation: Any) -> Any:
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if not isinstance(raw, str):
        return raw
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise UserError(f"--set {key}={raw}: expected {'a whole number' if kind == 'int' else 'a number'}") from None
    return raw
