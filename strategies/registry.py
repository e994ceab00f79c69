"""The one registry of update strategies: names, parameters, capabilities.

Code elsewhere never compares a strategy's name: it asks what the strategy declared
when it registered (`Capabilities`), as scikit-learn's tags and river's `_tags` do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from continual_trainer.trainer import params as P
from continual_trainer.trainer.registry import Registry

if TYPE_CHECKING:
    from continual_trainer.strategies.base import UpdateInputs
    from continual_trainer.trainer.candidate import Candidate

StrategyFn = Callable[["UpdateInputs", Any], "Candidate"]

DATA_PARALLEL = ("averaging", "bagging")
STARTS = ("current", "members", "body", "scratch")


@dataclass(frozen=True)
class Capabilities:
    """What a strategy can do, declared once when it registers.

    Attributes:
        trains: it trains something (False for `keep`); a strategy that does not train
            may run when no new batch has arrived.
        learns_new_classes: it can give the model outputs for classes the current model
            lacks (after `ingest --new-classes`).
        data_parallel: how `update --actors N` runs it: `averaging` (each actor trains
            a copy on its shard, weights averaged every K steps), `bagging` (each actor
            fits one new member on its shard), or None (not data-parallel).
        in_pieces: it can train on rows left in the store and read a chunk at a time (above
            `--memory-budget`), not only on rows in memory.
        starts_from: what its candidate starts as, before training: `current` (the current
            model's function: with a learning rate near 0 it predicts what the current model
            does), `members` (the current members stay, unchanged, beside new ones), `body`
            (the current network's body under new layers) or `scratch` (new networks).
    """

    trains: bool = True
    learns_new_classes: bool = False
    data_parallel: str | None = None
    in_pieces: bool = False
    starts_from: str = "scratch"

    def __post_init__(self) -> None:
        if self.starts_from not in STARTS:
            raise ValueError(f"starts_from must be one of {', '.join(STARTS)}")
        if self.data_parallel not in (None, *DATA_PARALLEL):
            raise ValueError(f"data_parallel must be None or one of {', '.join(DATA_PARALLEL)}")


@dataclass(frozen=True)
class Strategy:
    """A registered strategy: its name, parameter dataclass, function and capabilities."""

    name: str
    params: type
    fn: StrategyFn
    summary: str
    can: Capabilities

    def __call__(self, inputs: UpdateInputs, params: Any) -> Candidate:
        if not isinstance(params, self.params):
            raise TypeError(f"{self.name} takes {self.params.__name__}, got {type(params).__name__}")
        return self.fn(inputs, params)

    @property
    def param_names(self) -> frozenset[str]:
        """The names of this strategy's parameters (its dataclass's fields)."""
        return frozenset(f.name for f in dataclasses.fields(self.params))

    def make_params(self, values: Mapping[str, Any] | None = None) -> Any:
        """Build the parameters from `values` (strings are parsed), or raise UserError naming the key."""
        return P.build_for(self.name, self.params, values)


_REGISTRY = Registry[Strategy]("strategy", "strategy", group="continual_trainer.strategies")


def register(
    name: str, params: type, summary: str, can: Capabilities = Capabilities()
) -> Callable[[StrategyFn], StrategyFn]:
    """Register `fn(inputs, params) -> Candidate` under `name`; a duplicate name is an error."""

    def decorate(fn: StrategyFn) -> StrategyFn:
        if not dataclasses.is_dataclass(params):
            raise TypeError(f"parameters of {name!r} must be a dataclass")
        _REGISTRY.add(name, Strategy(name, params, fn, summary, can))
        return fn

    return decorate


def get(name: str) -> Strategy:
    return _REGISTRY.get(name)


def names(**wanted: Any) -> list[str]:
    """Registered names in registration order, optionally only those whose capabilities match.

    `names(learns_new_classes=True)` lists the strategies that can learn new classes.
    """
    return [s.name for s in _REGISTRY if all(getattr(s.can, k) == v for k, v in wanted.items())]


# What a version's state (a strategy's arrays kept beside its members: a replay memory,
# Fisher information) holds, for its manifest. Each module that writes state keys registers
# one describer for them; the pipeline asks `describe_state`, never a strategy by name.
StateDescriber = Callable[[Mapping[str, Any], Sequence[str]], dict[str, Any]]
_DESCRIBERS: list[StateDescriber] = []


def describes_state(fn: StateDescriber) -> StateDescriber:
    """Register `fn(state, batch_ids) -> {section: summary}` (empty if none of its keys are there)."""
    _DESCRIBERS.append(fn)
    return fn


def describe_state(state: Mapping[str, Any], batch_ids: Sequence[str]) -> dict[str, Any]:
    """Every registered describer's sections for `state` (`batch_ids`: every batch in
    ingestion order, which a row's `order` indexes)."""
    out: dict[str, Any] = {}
    for describe in _DESCRIBERS:
        out.update(describe(state, batch_ids))
    return out
