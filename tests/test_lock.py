"""The committed lock (constraints.txt) pins every dependency pyproject.toml declares, at a version
pyproject admits, and is what is installed: a fresh machine gets the versions CI tested."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _lock() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: {line!r} is not an exact pin (name==version)"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def test_lock_pins_every_declared_dependency_within_its_range() -> None:
    pins = _lock()
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is declared in pyproject.toml but not pinned: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}: run `make lock`")


@pytest.mark.skipif(os.environ.get("BITSEARCH_UNPINNED") == "1", reason="make test-unpinned: newest releases")
def test_installed_versions_are_the_locked_ones() -> None:
    # what `make install` put in this environment is exactly the lock (local labels such as +cpu aside)
    pins = _lock()
    for req in _declared():
        name = canonicalize_name(req.name)
        installed = Version(Version(metadata.version(req.name)).public)
        assert installed == pins[name], f"{req.name}: installed {installed}, locked {pins[name]}"
