"""Parameters that declare their own constraints, beside the field.

A parameter dataclass (a strategy's, the training loop's, later a drift trigger's)
declares each field with `param(default, constraint)`. From that one declaration come
validation (`validate`, called by `__post_init__`), parsing of `--set key=value`
strings (`parse`), and the invalid values the contract tests try (`invalid_values`),
in the manner of scikit-learn's `_parameter_constraints`. Rules that tie two fields
together are `Rule`s in the class's `rules`.

A subclass may override a default with a plain annotation (`epochs: int = 100`): the
constraint is looked up along the class's bases.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


class Constraint:
    """What values a parameter takes; subclasses say how to check, parse and break it."""

    def describe(self) -> str:
        raise NotImplementedError

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def parse(self, raw: str) -> Any:
        """The value a `--set` string stands for; ValueError with a short reason if none."""
        raise NotImplementedError

    def coerce(self, value: Any) -> Any:
        """A value from a typed source (YAML, Python) in the parameter's type, if it fits."""
        return self.parse(value) if isinstance(value, str) else value

    def invalid(self) -> list[str]:
        """`--set` strings this constraint must refuse (for the contract tests)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Interval(Constraint):
    """A whole number or finite real number between optional bounds.

    Attributes:
        kind: `int` or `float`.
        low, high: bounds (None: unbounded on that side).
        low_open, high_open: whether a bound itself is excluded.
    """

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        noun = "a whole number" if self.kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            lo, hi = ("(" if self.low_open else "["), (")" if self.high_open else "]")
            return f"in {lo}{_num(self.low)}, {_num(self.high)}{hi}"
        if self.low is not None:
            bound = f"{'>' if self.low_open else '>='} {_num(self.low)}"
        elif self.high is not None:
            bound = f"{'<' if self.high_open else '<='} {_num(self.high)}"
        else:
            return noun
        return bound if self.kind is int else f"{bound} and finite"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def parse(self, raw: str) -> Any:
        try:
            return int(raw) if self.kind is int else float(raw)
        except ValueError:
            raise ValueError("expected a whole number" if self.kind is int else "expected a number") from None

    def coerce(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.parse(value)
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    def invalid(self) -> list[str]:
        out = ["abc"]
        if self.kind is int:
            out.append("1.5")
        else:
            out += ["nan", "inf"]
        if self.low is not None:
            out.append(_num(self.low if self.low_open else self.low - 1))
        if self.high is not None:
            out.append(_num(self.high if self.high_open else self.high + 1))
        return out


@dataclass(frozen=True)
class Choice(Constraint):
    """One of a few names."""

    options: tuple[str, ...]

    def describe(self) -> str:
        return f"one of {', '.join(self.options)}"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.options

    def parse(self, raw: str) -> Any:
        return raw

    def invalid(self) -> list[str]:
        return ["no-such-option", ""]


@dataclass(frozen=True)
class Boolean(Constraint):
    """true or false (`--set` also takes yes/no, 1/0, on/off)."""

    def describe(self) -> str:
        return "true or false"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def parse(self, raw: str) -> Any:
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError("expected true or false")

    def invalid(self) -> list[str]:
        return ["maybe", "2"]


@dataclass(frozen=True)
class Sizes(Constraint):
    """Comma-separated whole numbers >= 1, as a string (e.g. layer sizes `20,10`); may be empty."""

    def describe(self) -> str:
        return "comma-separated whole numbers >= 1, e.g. 20,10"

    def accepts(self, value: Any) -> bool:
        return (
            isinstance(value, str)
            and re.fullmatch(r"\s*(\d+\s*(,\s*\d+\s*)*)?", value) is not None
            and all(int(s) >= 1 for s in value.split(",") if s.strip())
        )

    def parse(self, raw: str) -> Any:
        return raw

    def coerce(self, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    def invalid(self) -> list[str]:
        return ["ten", "0", "5,-1"]


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


@dataclass(frozen=True)
class Rule:
    """A constraint across fields: `holds(params)` must be true, else `message`."""

    holds: Callable[[Any], bool]
    message: str


def param(default: Any, constraint: Constraint, doc: str = "") -> Any:
    """A dataclass field with its constraint (and a one-line description for help texts)."""
    return dataclasses.field(default=default, metadata={"constraint": constraint, "doc": doc})


def constraint_of(cls: type, name: str) -> Constraint | None:
    """The constraint declared for field `name` on `cls` or the nearest base declaring one."""
    for base in cls.__mro__:
        f = getattr(base, "__dataclass_fields__", {}).get(name)
        if f is not None and "constraint" in f.metadata:
            return f.metadata["constraint"]
    return None


def doc_of(cls: type, name: str) -> str:
    for base in cls.__mro__:
        f = getattr(base, "__dataclass_fields__", {}).get(name)
        if f is not None and f.metadata.get("doc"):
            return f.metadata["doc"]
    return ""


class Params:
    """Base of parameter dataclasses: validates every declared field, then the rules.

    `rules` of a class add to those of its bases.
    """

    rules: ClassVar[tuple[Rule, ...]] = ()

    def __post_init__(self) -> None:
        validate(self)


def validate(obj: Any) -> None:
    """Raise ValueError naming the first field whose value breaks its constraint, or a rule."""
    cls = type(obj)
    for f in dataclasses.fields(obj):
        constraint = constraint_of(cls, f.name)
        value = getattr(obj, f.name)
        if constraint is not None and not constraint.accepts(value):
            raise ValueError(f"{f.name} must be {constraint.describe()}, got {value!r}")
    for base in reversed(cls.__mro__):  # every class's own rules, the most basic first
        for rule in base.__dict__.get("rules", ()):
            if not rule.holds(obj):
                raise ValueError(rule.message)


def build(cls: type, values: Mapping[str, Any] | None) -> Any:
    """`cls(**values)` with strings parsed and types coerced by each field's constraint.

    Raises KeyError(name) for an unknown field, and ValueError (naming the field) for a
    value that does not parse or breaks a constraint.
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, raw in (values or {}).items():
        if key not in fields:
            raise KeyError(key)
        constraint = constraint_of(cls, key)
        try:
            kwargs[key] = constraint.coerce(raw) if constraint is not None else raw
        except ValueError as exc:
            raise ValueError(f"{key}={raw}: {exc}") from None
    return cls(**kwargs)


def build_for(owner: str, cls: type, values: Mapping[str, Any] | None, group: str = "params") -> Any:
    """`build`, with a mistake as UserError naming the key and `owner` (a registered strategy
    or trigger) and, for an unknown key, the parameters it has; `group` is the API's name of
    the mapping the values came in (`params`, `trigger_params`: see `UserError.about`)."""
    from continual_trainer.data.errors import UserError

    try:
        return build(cls, values)
    except KeyError as exc:
        key, known = exc.args[0], ", ".join(f.name for f in dataclasses.fields(cls)) or "none"
        raise UserError.about(
            key, None, f"{owner} has no parameter {key!r}; its parameters: {known}", group=group
        ) from None
    except ValueError as exc:
        raise UserError.about(owner, None, str(exc), group=group) from None


def invalid_values(cls: type) -> dict[str, list[str]]:
    """For every constrained field, `--set` strings that must be refused."""
    out = {}
    for f in dataclasses.fields(cls):
        constraint = constraint_of(cls, f.name)
        if constraint is not None:
            out[f.name] = constraint.invalid()
    return out


def describe(cls: type) -> list[tuple[str, Any, str, str]]:
    """(name, default, constraint, doc) of every field, for help texts and docs."""
    rows = []
    for f in dataclasses.fields(cls):
        constraint = constraint_of(cls, f.name)
        rows.append((f.name, f.default, constraint.describe() if constraint else "", doc_of(cls, f.name)))
    return rows


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20}
_UNITS |= {"g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}


def parse_size(raw: str | int) -> int:
    """Bytes from `2GiB`, `500MB`, `1.5g` or a number of bytes; ValueError if not a size."""
    text = str(raw).strip().lower().replace(" ", "")
    number = text.rstrip("kmgtib")
    try:
        value, unit = float(number), text[len(number) :]
    except ValueError:
        value, unit = 0.0, ""
    if unit not in _UNITS or not value > 0:
        raise ValueError(f"{raw!r} is not a size such as 2GiB, 500MB or a number of bytes")
    return int(value * _UNITS[unit])


_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(raw: str | float) -> float:
    """Seconds from `45s`, `30m`, `12h`, `7d` or a number of seconds; ValueError if not a duration."""
    text = str(raw).strip().lower()
    number = text.rstrip("smhd")
    try:
        value, unit = float(number), text[len(number) :]
    except ValueError:
        value, unit = -1.0, ""
    if unit not in _SECONDS or not value >= 0:
        raise ValueError(f"{raw!r} is not a duration such as 45s, 30m, 12h, 7d or a number of seconds")
    seconds = value * _SECONDS[unit]
    if seconds > MAX_DURATION:
        raise ValueError(f"{raw!r} is longer than {MAX_DURATION / (365 * 86400):.0f} years; durations are at most that")
    return seconds


MAX_DURATION = 100 * 365 * 86400.0  # seconds: longer than any store has existed, short enough for dates
