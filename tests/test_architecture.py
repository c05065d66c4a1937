"""The one-way dependency rule between bitsearch's packages, kept by a test.

Data flows left to right (quant -> workloads -> sensitivity -> solvers -> search); a package may import
only the packages listed for it here. `storage` and `quant` depend on nothing of ours, with one precise
exception: `storage` may import the leaf module `quant.errors` (imports nothing of ours) so that every
error shares one base class. An entry is a package or a dotted module. This table is the rule's only
written form: docs/DESIGN and the README point here.

`quant` also knows no model family: it takes any `nn.Module` and example inputs, and never imports a
model library (`MODEL_LIBRARIES`). Loading diffusers denoisers, their built-in configs and example
inputs live in `workloads.denoisers`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ALLOWED: dict[str, frozenset[str]] = {
    "storage": frozenset({"quant.errors"}),
    "quant": frozenset(),
    "workloads": frozenset({"quant"}),
    "sensitivity": frozenset({"quant", "workloads"}),
    "solvers": frozenset({"quant"}),
    "search": frozenset({"quant", "workloads", "sensitivity", "solvers", "storage"}),
}

# Libraries that define model families; `quant` must import none of them, wherever the import is.
MODEL_LIBRARIES = frozenset({"diffusers", "transformers"})


def imported_modules(source: str, module: str) -> set[tuple[int, str]]:
    """(line, dotted name) of every import of one of our packages in `source`, including imports inside
    functions and under TYPE_CHECKING. `module` is the dotted name of the file, for relative imports.
    `from a.b import c` gives `a.b.c` (c may be a module or a name in a.b): precise enough to allow one
    module without allowing its package."""
    found: set[tuple[int, str]] = set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = module.split(".")[: -node.level]
                parent = ".".join([*base, node.module] if node.module else base)
            else:
                parent = node.module or ""
            names = [f"{parent}.{a.name}" for a in node.names]
        found |= {(node.lineno, name) for name in names if name.split(".")[0] in ALLOWED}
    return found


def imported_packages(source: str, module: str) -> set[tuple[int, str]]:
    """(line, top-level package) of every import of one of our packages in `source`."""
    return {(line, name.split(".")[0]) for line, name in imported_modules(source, module)}


def _allowed(name: str, package: str) -> bool:
    return name.split(".")[0] == package or any(
        name == a or name.startswith(a + ".") for a in ALLOWED[package]
    )


def violations(root: Path = ROOT) -> list[str]:
    out = []
    for package in ALLOWED:
        for path in sorted((root / package).rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            for line, name in sorted(imported_modules(path.read_text(), module)):
                if not _allowed(name, package):
                    out.append(f"{path.relative_to(root)}:{line}: {package} must not import {name.split('.')[0]}")
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


@pytest.mark.parametrize(
    ("source", "ok"),
    [
        ("from quant.errors import BitsearchError", True),
        ("from quant import errors", True),
        ("import quant.errors", True),
        ("from quant.config import ConfigError", False),  # the exception is one module, not quant
        ("import quant", False),
        ("from quant.errorsx import X", False),
    ],
)
def test_storage_may_import_only_the_errors_leaf_of_quant(tmp_path: Path, source: str, ok: bool) -> None:
    for package in ALLOWED:
        (tmp_path / package).mkdir()
    (tmp_path / "storage" / "errors.py").write_text(source + "\n")
    assert violations(tmp_path) == ([] if ok else ["storage/errors.py:1: storage must not import quant"])


def test_the_errors_leaf_imports_nothing_of_ours() -> None:
    # what makes the storage exception safe: quant.errors pulls no other module of ours along
    assert imported_modules((ROOT / "quant" / "errors.py").read_text(), "quant.errors") == set()


def model_library_imports(root: Path = ROOT) -> list[str]:
    """`path:line: name` of every import of a MODEL_LIBRARIES package under quant/, including imports
    inside functions and under TYPE_CHECKING."""
    out = []
    for path in sorted((root / "quant").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            out += [f"{path.relative_to(root)}:{node.lineno}: {name}"
                    for name in names if name.split(".")[0] in MODEL_LIBRARIES]
    return out


def test_quant_knows_no_model_family() -> None:
    assert model_library_imports() == []


def test_a_model_library_import_in_quant_is_reported(tmp_path: Path) -> None:
    (tmp_path / "quant" / "backends").mkdir(parents=True)
    (tmp_path / "quant" / "layers.py").write_text("def f():\n    from diffusers import UNet2DModel\n")
    (tmp_path / "quant" / "backends" / "x.py").write_text("import torch\nimport transformers.models\n")
    assert model_library_imports(tmp_path) == [
        "quant/backends/x.py:2: transformers.models",
        "quant/layers.py:2: diffusers",
    ]
