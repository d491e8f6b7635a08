"""One tiny registry type, used for models, datasets and methods alike."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from equiprune.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; ``@registry.register("name")`` adds one."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str, field: str | None = None) -> T:
        try:
            return self._items[name]
        except KeyError:
            where = f"{field}: " if field else ""
            near = difflib.get_close_matches(str(name), self.names(), n=3)
            hint = f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""
            raise ConfigError(
                f"{where}unknown {self.kind} {name!r}{hint}; expected one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
