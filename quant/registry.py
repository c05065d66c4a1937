"""The one registry of named, keyword-configured implementations, used by every extension point:
backends, workloads, estimators, solvers, executors, export and import formats.

    BACKENDS: Registry[Backend] = Registry("backend", "quant.backends")

    @BACKENDS.register("int8")       # one decorator style: the name is given here, and set as `cls.name`
    class Int8Backend(Backend): ...

    BACKENDS.create("int8")          # options checked against the constructor's keyword parameters

An entry is a class or a plain function (export formats); `T` is what calling it produces. Unknown
names and unknown keyword options raise `quant.errors.UnknownNameError` with the list of valid ones,
as DESIGN.md asks of every extension point. The built-in implementations register themselves when
their modules are imported, so the registry imports `modules` lazily, on first lookup: a registry can
be declared in a light module (the CLI starts fast) and the heavy ones load only when needed.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from quant.errors import UnknownNameError

T = TypeVar("T")
E = TypeVar("E", bound=Callable[..., Any])


class Registry(Generic[T]):
    def __init__(self, kind: str, *modules: str, entry_points: str | None = None) -> None:
        self.kind = kind  # e.g. "solver", "export format": used in every message
        self.modules = modules  # imported on first lookup: importing them registers the built-ins
        # installed packages add implementations under this entry-point group (`name = "pkg.mod:Class"`)
        self.entry_points = entry_points
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[E], E]:
        """Decorator: `@registry.register("ilp")` records the class (and sets `cls.name`) or function."""

        def deco(entry: E) -> E:
            self.add(name, entry)
            return entry

        return deco

    def add(self, name: str, entry: Callable[..., T]) -> None:
        """Record `entry` under `name`; the same function may serve several names (json and yaml)."""
        if isinstance(entry, type):
            entry.name = name  # type: ignore[attr-defined]  # every registered class declares `name`
        self._entries[name] = entry

    def names(self) -> list[str]:
        for module in self.modules:
            importlib.import_module(module)
        if self.entry_points is not None:
            from importlib.metadata import entry_points

            for ep in entry_points(group=self.entry_points):
                if ep.name not in self._entries:
                    self.add(ep.name, ep.load())
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def lookup(self, name: str) -> Callable[..., T]:
        names = self.names()
        if name not in self._entries:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(names)}")
        return self._entries[name]

    def params(self, name: str, skip: int = 0) -> list[str] | None:
        """The keyword options entry `name` accepts, after its first `skip` positional parameters (a
        function's subject, a workload's path); None when it takes any (`**kwargs`)."""
        found = inspect.signature(self.lookup(name)).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in found):
            return None
        return [p.name for p in list(found)[skip:] if p.kind is not inspect.Parameter.VAR_POSITIONAL]

    def check(self, name: str, options: Iterable[str], skip: int = 0, reserved: Iterable[str] = ()) -> None:
        """Reject options entry `name` does not take, listing those it does. `reserved` options are
        passed by the caller, never by the user (e.g. an exporter's `layers`): they are not offered."""
        params, reserved = self.params(name, skip), set(reserved)
        if params is None:
            return
        unknown = sorted(set(options) - set(params) | (set(options) & reserved))
        if unknown:
            valid = [p for p in params if p not in reserved]
            raise UnknownNameError(
                f"{self.kind} {name!r} has no option {', '.join(map(repr, unknown))}; "
                f"valid options: {', '.join(valid) or 'none'}"
            )

    def create(self, name: str, *args: Any, **options: Any) -> T:
        """Entry `name` called with `args` and the checked `options`."""
        self.check(name, options, skip=len(args))
        return self.lookup(name)(*args, **options)
