"""One registry of named, keyword-configured implementations (solvers, executors, ...).

Unknown names and unknown keyword arguments are rejected with the list of valid ones, as DESIGN.md
asks of every extension point. The built-in implementations register themselves when `package`
is imported, so the registry imports it lazily on first lookup.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
C = TypeVar("C", bound=type)


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str) -> None:
        self.kind, self.package = kind, package  # e.g. "solver", "solvers"
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[C], C]:
        """Class decorator: `@registry.register("ilp")` sets `cls.name` and records the class."""

        def deco(cls: C) -> C:
            cls.name = name  # type: ignore[attr-defined]  # every registered class declares `name`
            self._classes[name] = cls
            return cls

        return deco

    def names(self) -> list[str]:
        importlib.import_module(self.package)
        return sorted(self._classes)

    def lookup(self, name: str) -> type[T]:
        names = self.names()
        if name not in self._classes:
            raise ValueError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(names)}")
        return self._classes[name]

    def params(self, name: str) -> list[str]:
        """The keyword arguments implementation `name` accepts."""
        return [p for p in inspect.signature(self.lookup(name).__init__).parameters if p != "self"]

    def create(self, name: str, **kwargs: Any) -> T:
        params = self.params(name)
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise TypeError(f"{self.kind} {name!r} takes no argument(s) {unknown}; valid: {', '.join(params) or 'none'}")
        return self._classes[name](**kwargs)
