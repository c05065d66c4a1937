"""The one-way dependency rule between bitsearch's packages, kept by a test.

Data flows left to right (quant -> workloads -> sensitivity -> solvers -> search); a package may import
only the packages listed for it here. `storage` and `quant` depend on nothing of ours. This table is the
rule's only written form: docs/DESIGN and the README point here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ALLOWED: dict[str, frozenset[str]] = {
    "storage": frozenset(),
    "quant": frozenset(),
    "workloads": frozenset({"quant"}),
    "sensitivity": frozenset({"quant", "workloads"}),
    "solvers": frozenset({"quant"}),
    "search": frozenset({"quant", "workloads", "sensitivity", "solvers", "storage"}),
}


def imported_packages(source: str, module: str) -> set[tuple[int, str]]:
    """(line, top-level package) of every import of one of our packages in `source`, including imports
    inside functions and under TYPE_CHECKING. `module` is the dotted name of the file, for relative imports."""
    found: set[tuple[int, str]] = set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = module.split(".")[: -node.level]
                names = [".".join([*base, node.module] if node.module else base)]
            elif node.module:
                names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top in ALLOWED:
                found.add((node.lineno, top))
    return found


def violations(root: Path = ROOT) -> list[str]:
    out = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            for line, top in sorted(imported_packages(path.read_text(), module)):
                if top != package and top not in allowed:
                    out.append(f"{path.relative_to(root)}:{line}: {package} must not import {top}")
    return out


def test_no_import_points_the_wrong_way() -> None:
    assert violations() == []


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("import search.study", "quant.apply", {(1, "search")}),
        ("def f():\n    from solvers.ilp import IlpSolver", "workloads.base", {(2, "solvers")}),
        ("from ..search import cli", "quant.backends.int8", {(1, "quant")}),  # relative: quant.search
        ("from .. import study", "search.api.app", {(1, "search")}),
        ("import torch, numpy", "quant.apply", set()),
    ],
)
def test_imports_are_found_wherever_they_are(source: str, module: str, expected: set[tuple[int, str]]) -> None:
    assert imported_packages(source, module) == expected


def test_a_wrong_way_import_is_reported(tmp_path: Path) -> None:
    # a copy of the rule's subject with one bad import added to a quant module
    for package in ALLOWED:
        (tmp_path / package).mkdir()
    (tmp_path / "quant" / "apply.py").write_text("from search.study import Study\n")
    (tmp_path / "search" / "cli.py").write_text("import quant.apply\nimport storage\n")
    assert violations(tmp_path) == ["quant/apply.py:1: quant must not import search"]
