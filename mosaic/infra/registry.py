"""One registry class for every named, pluggable thing: metrics, baselines, flavours, CLI commands.

Why it exists: a name in a config or on the command line must resolve the same way everywhere,
with the same error when it does not. An entry is registered either as the object itself (with
`@registry.register` or `registry.register(obj, name=...)`) or as a lazy "module:object" string,
imported only when the name is first asked for, so heavy or conflicting dependencies (an
official release's pipeline, the metrics' models) load only when used. An unknown name is a
ValueError that lists every registered name.
"""
from __future__ import annotations

import importlib
from typing import Any, Generic, Iterator, TypeVar

T = TypeVar("T")


def import_object(spec: str, what: str = "object") -> Any:
    """The object a "module:attribute" string names; ValueError naming the string when it cannot be had."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{what} {spec!r}: expected 'module:object'")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"{what} {spec!r}: cannot import {module!r} ({e})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{what} {spec!r}: {module!r} has no {attr!r}") from None
    return obj


class Registry(Generic[T]):
    """Named entries of one kind (`kind` names it in errors, e.g. "metric")."""

    def __init__(self, kind: str, entries: dict[str, T | str] | None = None):
        self.kind = kind
        self._entries: dict[str, T | str] = {}
        for name, entry in (entries or {}).items():
            self.add(name, entry)

    def add(self, name: str, entry: T | str) -> None:
        """Register `entry` (an object, or a lazy "module:object" string) as `name`; twice is an error."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry

    def register(self, obj: T | None = None, *, name: str | None = None) -> Any:
        """Decorator (bare, or with name=...): registers the object under `name` or its `name` attribute."""

        def deco(o: T) -> T:
            key = name if name is not None else getattr(o, "name", None)
            if not isinstance(key, str):
                raise ValueError(f"{self.kind} {o!r}: no name given and no str `name` attribute")
            self.add(key, o)
            return o

        return deco(obj) if obj is not None else deco

    def get(self, name: str) -> T:
        """The entry registered as `name` (a lazy one is imported now, once)."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self._entries) or 'none'}")
        entry = self._entries[name]
        if isinstance(entry, str):
            entry = import_object(entry, f"{self.kind} {name!r}")
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, entry) pairs, importing lazy entries."""
        return ((n, self.get(n)) for n in self.names())

    def values(self) -> Iterator[T]:
        return (self.get(n) for n in self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

