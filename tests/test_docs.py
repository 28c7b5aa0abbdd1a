"""The README and docs/ cannot drift from the code: the parameter reference matches the dataclasses, every
TOML snippet is real TOML, every test a claim names exists, and every link between pages resolves."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import math
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import pytest

import robustmtl
import robustmtl.data.params
import robustmtl.models.params
from robustmtl.config import Execution, TrainParams
from robustmtl.grid.executor import ExecutorSettings
from robustmtl.grid.spec import load_spec
from robustmtl.grid.status import CORE_STATES, EXTRA_STATES
from robustmtl.params import NoParams, field_types
from robustmtl.registry import DATASETS, METHODS, MODELS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
GRID_FILES_PAGE = ROOT / "docs" / "grid-files.md"
CLI_PAGE = ROOT / "docs" / "cli.md"
README_MAX_BYTES = 12 * 1024
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
TEST_REF = re.compile(r"(tests/[\w/]+\.py)::(\w+)")
TESTED = re.compile(r"\btested\b", re.IGNORECASE)
CLAIM_REACH = 300  # characters after "tested" within which the claim must name its test
LINK = re.compile(r"\]\(([^)\s]+)\)")


def parameter_blocks() -> dict[str, type]:
    """Every parameter dataclass a grid file can set: the registered plug-ins' blocks, every dataclass of the
    parameter modules (a block not registered yet is documented too), training, and [executor]."""
    blocks: set[type] = {TrainParams, ExecutorSettings, Execution}
    for table in (METHODS, DATASETS, MODELS):
        blocks |= {plugin.params for plugin in table.values() if plugin.params is not NoParams}
    method_modules = [importlib.import_module(f"robustmtl.methods.{p.stem}")
                      for p in sorted(Path(robustmtl.__file__).parent.joinpath("methods").glob("*.py"))]
    for module in (*method_modules, robustmtl.data.params, robustmtl.models.params):
        blocks |= {obj for obj in vars(module).values()
                   if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == module.__name__
                   and obj.__dataclass_params__.frozen}  # type: ignore[attr-defined]
    return {block.__name__: block for block in blocks}


def type_text(tp: Any) -> str:
    """A field's type as the reference spells it, in TOML's terms."""
    if isinstance(tp, types.UnionType):
        (inner,) = [t for t in tp.__args__ if t is not type(None)]
        return f"{type_text(inner)} or unset"
    if typing.get_origin(tp) is tuple:
        return f"list of {type_text(typing.get_args(tp)[0])}s"
    return {int: "integer", float: "float", str: "string", bool: "boolean"}[tp]


def values_text(meta: typing.Mapping[str, Any], tp: Any) -> str:
    """What a field accepts, from the same metadata `robustmtl.params.coerce` checks."""
    if tp is bool:
        return "—"
    if "choices" in meta:
        return "one of " + ", ".join(f"`{c}`" for c in meta["choices"])
    if "pattern" in meta:
        return meta["example"]
    parts = []
    if meta.get("positive"):
        parts.append("> 0")
    if "min" in meta and "max" in meta:
        parts.append(f"{meta['min']:g} to {meta['max']:g}")
    elif "min" in meta:
        parts.append(f"≥ {meta['min']:g}")
    elif "max" in meta:
        parts.append(f"≤ {meta['max']:g}")
    return ", ".join(parts) or "any"


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def documented_default(cell: str) -> Any:
    """The reference's default: `unset`, or the TOML value in the cell's first backticks (text may follow)."""
    if cell == "unset":
        return None
    match = re.match(r"`([^`]*)`", cell)
    assert match, f"default {cell!r} is neither `unset` nor a TOML value in backticks"
    return tomllib.loads(f"v = {match.group(1)}")["v"]


def same_default(documented: Any, actual: Any) -> bool:
    if isinstance(actual, float) and not isinstance(documented, bool) and isinstance(documented, int | float):
        return math.isclose(documented, actual, rel_tol=1e-4)  # written to four significant digits (e⁻¹)
    if isinstance(actual, tuple):
        return documented == list(actual)
    return type(documented) is type(actual) and documented == actual


def reference_tables(text: str, names: set[str]) -> tuple[dict[str, list[list[str]]], dict[str, str]]:
    """Block name → the rows of the table under the heading that names it in backticks, and that section's text."""
    tables: dict[str, list[list[str]]] = {}
    sections: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("#"):
            named = [n for n in re.findall(r"`([A-Za-z]\w*)`", line) if n in names]
            assert len(named) <= 1, f"heading names two parameter blocks: {line!r}"
            current = named[0] if named else None
            if current is not None:
                assert current not in tables, f"{current} is documented twice"
                tables[current], sections[current] = [], ""
        elif current is not None:
            sections[current] += line + "\n"
            if line.startswith("| `"):
                tables[current].append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return tables, sections


BLOCKS = parameter_blocks()


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_parameter_reference_matches_the_dataclasses(name):
    block = BLOCKS[name]
    tables, sections = reference_tables(GRID_FILES_PAGE.read_text(), set(BLOCKS))
    assert name in tables, f"docs/grid-files.md has no table under a heading naming `{name}`"
    rows = {row[0].strip("`"): row for row in tables[name]}
    # Each key is documented once, under the block that defines it; a composed block names its bases.
    own = set(vars(block).get("__annotations__", {}))
    for base in block.__mro__[1:]:
        if base.__name__ in BLOCKS:
            assert f"`{base.__name__}`" in sections[name], f"{name}: its section does not name its base {base.__name__}"
    fields = {f.name: f for f in dataclasses.fields(block) if f.name in own}
    assert set(rows) == set(fields), (f"{name}: undocumented {sorted(set(fields) - set(rows))}, "
                                      f"documented but not fields {sorted(set(rows) - set(fields))}")
    hints = field_types(block)
    for key, f in fields.items():
        row = rows[key]
        assert len(row) == 5, f"{name}.{key}: expected | key | type | default | values | meaning |, got {row}"
        _, type_cell, default_cell, values_cell, meaning = row
        expected_type = type_text(hints[key])
        assert type_cell == expected_type, f"{name}.{key}: type {type_cell!r}, expected {expected_type!r}"
        assert same_default(documented_default(default_cell), default_of(f)), \
            f"{name}.{key}: documented default {default_cell!r}, the dataclass has {default_of(f)!r}"
        expected_values = values_text(f.metadata, hints[key])
        assert values_cell == expected_values, f"{name}.{key}: values {values_cell!r}, expected {expected_values!r}"
        assert meaning, f"{name}.{key}: no meaning given"


def test_every_run_state_grid_status_shows_is_documented():
    text = CLI_PAGE.read_text()
    table = text[text.index("| state | meaning |"):]
    documented = re.findall(r"^\| `([a-z ]+)` \|", table[:table.index("\n\n")], re.MULTILINE)
    assert documented == [*CORE_STATES, *EXTRA_STATES], "docs/cli.md's state table differs from grid/status.py"


def toml_snippets() -> list[tuple[str, str]]:
    return [(f"{page.relative_to(ROOT)}:{page.read_text()[:m.start()].count(chr(10)) + 1}", m.group(2))
            for page in PAGES for m in FENCE.finditer(page.read_text()) if m.group(1) == "toml"]


def test_there_are_grid_snippets_to_check():
    assert any("[executor]" in body for _, body in toml_snippets())


@pytest.mark.parametrize("where, body", toml_snippets(), ids=[w for w, _ in toml_snippets()])
def test_toml_snippets_parse_with_tomllib_alone_and_whole_grids_are_accepted(where, body, tmp_path):
    parsed = tomllib.loads(body)
    if {"name", "datasets", "methods", "seeds"} <= set(parsed):  # a whole grid file: robustmtl takes it as it is
        spec = tmp_path / "grid.toml"
        spec.write_text(body)
        load_spec(spec)


def test_grid_snippets_are_marked_as_toml():
    """A code block holding a grid file's table header must be a ```toml block, so the test above checks it."""
    for page in PAGES:
        for m in FENCE.finditer(page.read_text()):
            if m.group(1) != "toml":
                assert not re.search(r"^\[(executor|defaults|sweep|method\.|dataset\.)", m.group(2), re.MULTILINE), \
                    f"{page.relative_to(ROOT)}: a grid snippet in a ```{m.group(1)} block"


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_test_named_in_the_docs_exists():
    named = {(m.group(1), m.group(2)) for page in PAGES for m in TEST_REF.finditer(page.read_text())}
    assert named, "the docs name no tests"
    missing = [f"{file}::{test}" for file, test in sorted(named)
               if not (ROOT / file).is_file() or test not in defined_tests(ROOT / file)]
    assert not missing, f"the docs name tests that do not exist: {missing}"
    bare = [f"{page.relative_to(ROOT)}: {m.group(0)}" for page in PAGES
             for m in re.finditer(r"(?<![\w/.])::\w+", page.read_text())]
    assert not bare, f"name a test with its file (tests/test_x.py::test_name), so it can be checked: {bare}"


def test_every_tested_claim_names_its_test():
    unbacked = []
    for page in PAGES:
        text = page.read_text()
        for m in TESTED.finditer(text):
            if not TEST_REF.search(text[m.end():m.end() + CLAIM_REACH]):
                line = text[:m.start()].count("\n") + 1
                unbacked.append(f"{page.relative_to(ROOT)}:{line}: {text[max(0, m.start() - 60):m.end() + 40]!r}")
    assert not unbacked, "claims of a test that name none:\n" + "\n".join(unbacked)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def test_links_between_pages_resolve():
    broken = []
    for page in PAGES:
        for target in LINK.findall(FENCE.sub("", page.read_text())):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, f"links that lead nowhere: {broken}"


def test_readme_reads_in_five_minutes():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail into docs/ (at most {README_MAX_BYTES})"


def test_the_units_section_states_the_unit_table():
    """docs/results.md#units lists each quantity of aggregate/units.py with its unit and CSV suffix, once."""
    from robustmtl.aggregate.units import UNITS

    text = (ROOT / "docs" / "results.md").read_text()
    section = text.split("\n## Units\n", 1)[1].split("\n## ", 1)[0]
    rows = {cells[0]: cells[1:3] for line in section.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]}
    for unit in UNITS:
        assert unit.quantity in rows, unit.quantity
        name, suffix = rows[unit.quantity]
        assert name.startswith(unit.name) and suffix == f"`_{unit.suffix}`", (unit, rows[unit.quantity])
    others = [page for page in PAGES if page.name != "results.md" and "\n## Units" in page.read_text()]
    assert not others, f"units are stated once, in docs/results.md#units: {others}"
