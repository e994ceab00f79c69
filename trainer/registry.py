"""Named things of one kind, each registered once: the strategies, the drift triggers.

A registry keeps its entries in registration order (the order listings show) and turns an
unknown name into the user's mistake, worded with the API argument that named it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from continual_trainer.data.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one `kind` by name; `option` is the API argument that names one."""

    def __init__(self, kind: str, option: str) -> None:
        self.kind, self.option = kind, option
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> None:
        """Register `entry` under `name`; a name registered twice is a programming error."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry

    def remove(self, name: str) -> None:
        """Unregister `name` (e.g. an entry a test registered for itself)."""
        del self._entries[name]

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self._entries)
            raise UserError.about(self.option, name, f"unknown {self.kind}; choose one of {known}") from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __iter__(self) -> Iterator[T]:
        return iter(self._entries.values())
