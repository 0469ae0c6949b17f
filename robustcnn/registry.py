"""One small registry class shared by datasets, models, attacks and training methods."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from robustcnn.errors import choices_error

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a public name to a builder. `register` is a decorator; unknown names list the valid ones."""

    def __init__(self, kind: str):
        self.kind = kind  # used in error messages: "unknown <kind> 'x'"
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise RuntimeError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise choices_error(self.kind, name, self.names())
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[T]:
        """Every entry in the order registered (for a registry whose order means something, such as the checks')."""
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries
