"""Named things of one kind, each registered once: the strategies, the drift triggers, the
executors.

A registry keeps its entries in registration order (the order listings show) and turns an
unknown name into the user's mistake, worded with the API argument that named it. A registry
with an entry-point group also holds what installed packages declare there (a pip package adds
a strategy with `[project.entry-points."continual_trainer.strategies"] name = "pkg.module"`):
each entry point is loaded once, the first time the registry is read, and loading it imports
its module, which registers its entries as the built-in ones do. A plugin that fails to load is
named in one warning and left out; it never stops a command.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from continual_trainer.data.errors import UserError

T = TypeVar("T")
log = logging.getLogger(__name__)


class Registry(Generic[T]):
    """Entries of one `kind` by name; `option` is the API argument that names one."""

    def __init__(
        self, kind: str, option: str, group: str | None = None, load: Callable[[Any], T] | None = None
    ) -> None:
        """`group`: the entry-point group whose plugins join this registry; `load`: what to do
        with an entry point's loaded object (default: nothing, its import registered it)."""
        self.kind, self.option = kind, option
        self._entries: dict[str, T] = {}
        self._group, self._load = group, load
        self._plugins_loaded = group is None

    def _plugins(self) -> None:
        """Load the entry points of the group, once."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from importlib.metadata import entry_points

        for point in entry_points(group=self._group or ""):
            if point.name in self._entries:
                continue
            try:
                loaded = point.load()
                if self._load is not None:
                    self.add(point.name, self._load(loaded))
            except Exception as exc:  # a broken plugin is its author's problem, not this command's
                log.warning("%s plugin %r (%s) could not be loaded: %s", self.kind, point.name, point.value, exc)

    def add(self, name: str, entry: T) -> None:
        """Register `entry` under `name`; a name registered twice is a programming error."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry

    def remove(self, name: str) -> None:
        """Unregister `name` (e.g. an entry a test registered for itself)."""
        del self._entries[name]

    def get(self, name: str) -> T:
        if name not in self._entries:
            self._plugins()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self._entries)
            raise UserError.about(self.option, name, f"unknown {self.kind}; choose one of {known}") from None

    def names(self) -> list[str]:
        self._plugins()
        return list(self._entries)

    def __iter__(self) -> Iterator[T]:
        self._plugins()
        return iter(list(self._entries.values()))
