"""Who proposed a candidate: a registered solver (by its name) or one of the study's own sources.

Storage keeps the origin as free text and knows no names; this module is where they are checked, so
a solver registered in `solvers` is a valid origin at once, with no migration and no change here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any

from quant.config import ConfigError
from solvers.base import solver_names
from storage import Storage

IMPORT = "import"  # published configs queued by `bitsearch import` (search.exports.importing)
UNIFORM = "uniform"  # the uniform-bits baselines a study queues beside its solver's proposals
HEURISTIC = "heuristic"  # the hand-made baselines (search.baselines: float-ends, first-last-N)
SOURCES = (IMPORT, UNIFORM, HEURISTIC)


def origin_names() -> list[str]:
    """Every valid origin: the registered solvers' names and the study's own sources."""
    return sorted({*solver_names(), *SOURCES})


def check_origin(origin: str) -> str:
    """`origin` if it is valid, else ConfigError listing the valid ones."""
    names = origin_names()
    if origin not in names:
        raise ConfigError(f"unknown candidate origin {origin!r}; valid origins: {', '.join(names)}")
    return origin


def origin_enum() -> type[enum.Enum]:
    """The valid origins as a str enum, for the API's schema (built when called: a solver registered
    before the app is created is listed)."""
    return enum.Enum("Origin", {name: name for name in origin_names()}, type=str)  # type: ignore[return-value]


def add_candidates(storage: Storage, study: str, configs: Iterable[Mapping[str, Any]], origin: str,
                   **options: Any) -> list[tuple[int, bool]]:
    """`Storage.add_candidates` with the origin checked first (`options`: priority, fidelity, meta)."""
    return storage.add_candidates(study, configs, check_origin(origin), **options)
