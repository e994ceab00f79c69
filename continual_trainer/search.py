"""How a sweep chooses its configurations: a grid, random draws, or Optuna's TPE.

A parameter's value in a sweep file is a plain value, a list (a grid's axis; a random
search picks one), or a search space under Ray Tune's names: `{uniform: [a, b]}`,
`{loguniform: [a, b]}`, `{randint: [a, b]}` (whole numbers in [a, b)), `{choice: [...]}`.
A grid and a random search know their trials before any runs; TPE proposes each
configuration from the scores of those before it, so it runs in waves (`Tpe`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from continual_trainer.data.errors import UserError

SEARCHES = ("grid", "random", "tpe")
SPACES = ("uniform", "loguniform", "randint", "choice")


def space(value: Any) -> tuple[str, Any] | None:
    """A search space (`{uniform: [a, b]}`, ...) as (kind, argument), or None for a plain value."""
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in SPACES:
        ((kind, arg),) = value.items()
        return str(kind), arg
    return None


def _checked(key: str, kind: str, arg: Any, name: str) -> Any:
    """The space's argument, or UserError saying what it must be."""
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise UserError(f"{name}: {key}: choice takes a non-empty list of values")
        return arg
    ok = isinstance(arg, list) and len(arg) == 2 and all(isinstance(v, int | float) for v in arg)
    if not ok or not arg[0] < arg[1] or (kind == "loguniform" and arg[0] <= 0):
        need = "0 < low < high" if kind == "loguniform" else "low < high"
        raise UserError(f"{name}: {key}: {kind} takes [low, high] with {need}, not {arg!r}")
    return arg


def product(grid: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """Every combination of a grid's lists (plain values are one-value axes)."""
    keys = sorted(grid)
    spaces = [k for k in keys if space(grid[k])]
    if spaces:
        raise UserError(f"{name}: {spaces[0]} is a search space; a grid takes lists (add `search: random`)")
    axes = [grid[k] if isinstance(grid[k], list) else [grid[k]] for k in keys]
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*axes)]


def draws(grid: Mapping[str, Any], rng: np.random.Generator, samples: int, name: str) -> list[dict[str, Any]]:
    """`samples` distinct configurations drawn from `grid` (a trial is known by its content, so a
    configuration drawn again would be the same trial); fewer if the space has fewer."""
    out: dict[str, dict[str, Any]] = {}
    for _ in range(100 * samples):
        if len(out) == samples:
            break
        combo = sample(grid, rng, name)
        out.setdefault(json.dumps(combo, sort_keys=True, default=str), combo)
    return list(out.values())


def sample(grid: Mapping[str, Any], rng: np.random.Generator, name: str) -> dict[str, Any]:
    """One configuration drawn from `grid`: a list or `{choice: [...]}` picks one of its values,
    `{uniform: [a, b]}` and `{loguniform: [a, b]}` draw a float (4 significant digits), `{randint:
    [a, b]}` a whole number in [a, b) (as Ray Tune's `tune.randint`); other values stay."""
    out: dict[str, Any] = {}
    for key in sorted(grid):
        value, found = grid[key], space(grid[key])
        if found is None:
            out[key] = value[int(rng.integers(len(value)))] if isinstance(value, list) and value else value
            continue
        kind, arg = found
        arg = _checked(key, kind, arg, name)
        if kind == "choice":
            out[key] = arg[int(rng.integers(len(arg)))]
        elif kind == "randint":
            out[key] = int(rng.integers(int(arg[0]), int(arg[1])))
        else:
            low, high = arg
            x = np.exp(rng.uniform(np.log(low), np.log(high))) if kind == "loguniform" else rng.uniform(low, high)
            out[key] = _short(x)
    return out


def _short(x: float) -> float:
    return float(f"{x:.4g}")


def largest(value: Any) -> float | None:
    """The largest number a parameter's value or space can give (None if it gives none)."""
    found = space(value)
    if found is not None:
        kind, arg = found
        if kind == "randint" and isinstance(arg, list) and len(arg) == 2:
            return float(arg[1]) - 1
        value = arg
    values = value if isinstance(value, list) else [value]
    numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return max(numbers) if numbers else None


def key_of(params: Mapping[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


class Tpe:
    """Optuna's TPE sampler over one strategy's space, through Ray Tune's `OptunaSearch` (the
    searcher Tune users know; it runs here, in the driver, and needs no cluster).

    Lists and `choice` become categorical parameters, `uniform`/`loguniform` floats (drawn
    as Optuna draws them, kept to 4 significant digits), `randint` whole numbers in [a, b);
    plain values stay as they are. Higher scores are better.
    """

    def __init__(self, grid: Mapping[str, Any], seed: int, name: str) -> None:
        try:
            import optuna
            from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

            from continual_trainer.cluster.search import optuna_search  # Tune's searcher: Ray's layer
        except ImportError:
            raise UserError(f"{name}: search: tpe needs Optuna: pip install 'continual-trainer[search]'") from None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.constants: dict[str, Any] = {}
        dists: dict[str, Any] = {}
        for key in sorted(grid):
            value, found = grid[key], space(grid[key])
            if found is None and not isinstance(value, list):
                self.constants[key] = value
                continue
            kind, arg = found or ("choice", value)
            arg = _checked(key, kind, arg, name)
            if kind == "choice":
                dists[key] = CategoricalDistribution(arg)
            elif kind == "randint":
                dists[key] = IntDistribution(int(arg[0]), int(arg[1]) - 1)
            else:
                dists[key] = FloatDistribution(float(arg[0]), float(arg[1]), log=kind == "loguniform")
        self._dists = dists
        # How many configurations the space holds, if it is finite (no floats): at most that many.
        self.size: int | None = 1
        for d in dists.values():
            if isinstance(d, FloatDistribution):
                self.size = None
                break
            n = len(d.choices) if isinstance(d, CategoricalDistribution) else d.high - d.low + 1
            self.size *= n
        self._searcher = optuna_search(dists, seed) if dists else None
        self._asked = 0

    def ask(self) -> tuple[str, dict[str, Any]]:
        """(a ticket for `tell`, the next configuration to try)."""
        self._asked += 1
        ticket = f"t{self._asked}"
        if self._searcher is None:
            return ticket, dict(self.constants)
        drawn = self._searcher.suggest(ticket) or {}
        # 4 significant digits, as random draws; still inside the range, for `seen` on resume
        values = {
            k: min(max(_short(v), self._dists[k].low), self._dists[k].high) if isinstance(v, float) else v
            for k, v in drawn.items()
        }
        return ticket, {**values, **self.constants}

    def tell(self, ticket: str, score: float | None) -> None:
        """The configuration's score (mean over seeds); None if it failed."""
        if self._searcher is not None:
            if score is None:
                self._searcher.on_trial_complete(ticket, error=True)
            else:
                self._searcher.on_trial_complete(ticket, {"score": score})

    def seen(self, params: Mapping[str, Any], score: float) -> None:
        """A configuration tried before (a resumed sweep's record) and its score."""
        if self._searcher is not None:
            point = {k: v for k, v in params.items() if k not in self.constants}
            self._searcher.add_evaluated_point(point, score)
