"""Which layer may import which, read from the source with `ast` (every import: module level, inside functions,
type-only): the data layer never imports the tables layer, and the format-level renderers import neither."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import robustmtl

PACKAGE = Path(robustmtl.__file__).parent
# layer (a folder of the package) -> packages it must never import
FORBIDDEN = {"data": ("robustmtl.aggregate",), "render": ("robustmtl.aggregate", "robustmtl.data")}


def imported(path: Path) -> set[str]:
    """Every module an import statement in `path` names (for `from a import b`, both `a` and `a.b`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return names


def violations(layer: str) -> list[str]:
    return sorted(f"{path.relative_to(PACKAGE.parent)} imports {name}"
                  for path in (PACKAGE / layer).rglob("*.py") for name in imported(path)
                  if any(name == p or name.startswith(p + ".") for p in FORBIDDEN[layer]))


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_lower_layer_never_imports_a_higher_one(layer: str) -> None:
    assert (PACKAGE / layer).is_dir() and violations(layer) == []


def test_an_import_of_the_tables_layer_from_the_data_layer_is_found(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from robustmtl.aggregate.export import percent_text\nimport robustmtl.aggregate\n"
                      "from robustmtl import aggregate\n")
    assert {"robustmtl.aggregate.export", "robustmtl.aggregate"} <= imported(module)
