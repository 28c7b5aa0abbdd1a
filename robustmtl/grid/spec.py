"""Grid files: TOML → a validated GridSpec. Every error names the file and the key.

A grid file is TOML with one allowance: the top-level lists `methods = [...]` and `datasets = [...]`
may sit beside `[methods.<name>...]` / `[datasets.<name>...]` tables (strict TOML forbids a key and
a table of the same name; users write it this way, so it is read as meant).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustmtl.config import MAX_SEED
from robustmtl.errors import UserError
from robustmtl.grid.executor import executor_settings
from robustmtl.params import did_you_mean
from robustmtl.registry import DATASETS, METHODS, MODELS

TOP_KEYS = {"name", "datasets", "methods", "seeds", "model", "defaults", "sweep", "executor"}
METHOD_TABLE_KEYS = {"defaults", "sweep"}
DATA_ROOT_KEY = "data_root"
MODEL_KEY = "model"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
LIST_ALIASES = {"methods": "__methods_list__", "datasets": "__datasets_list__"}


@dataclass(frozen=True)
class MethodTable:
    defaults: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class GridSpec:
    path: Path
    text: str
    name: str
    datasets: list[str]
    methods: list[str]
    seeds: list[int]
    model: str | None
    defaults: dict[str, Any]
    sweep: dict[str, list[Any]]
    method_tables: dict[str, MethodTable]
    dataset_tables: dict[str, dict[str, Any]]
    executor: dict[str, Any]

    def model_for(self, dataset: str) -> str:
        """A dataset's model: its [datasets.<d>] model, else the grid's `model`, else the dataset's default."""
        chosen = self.dataset_tables.get(dataset, {}).get(MODEL_KEY) or self.model
        return chosen or DATASETS[dataset].default_model

    def data_values(self, dataset: str) -> dict[str, Any]:
        """A dataset's [datasets.<d>] parameters (everything but where its files are and which model)."""
        table = self.dataset_tables.get(dataset, {})
        return {k: v for k, v in table.items() if k not in (DATA_ROOT_KEY, MODEL_KEY)}

    def data_root(self, dataset: str) -> str | None:
        return self.dataset_tables.get(dataset, {}).get(DATA_ROOT_KEY)


def _rename_top_level_lists(text: str) -> str:
    """Rename `methods =` / `datasets =` before the first table header, so tables of the same name parse."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.lstrip().startswith("["):
            break
        for key, alias in LIST_ALIASES.items():
            lines[i] = re.sub(rf"^(\s*){key}(\s*=)", rf"\g<1>{alias}\g<2>", lines[i])
    return "".join(lines)


def parse_toml(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"grid file not found: {path}") from None
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as exc:
        raise UserError(f"cannot read grid file {path}: {exc}") from None
    try:
        raw = tomllib.loads(_rename_top_level_lists(text.removeprefix("\ufeff")))  # editors' byte-order mark
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: malformed TOML: {exc}") from None
    for key, alias in LIST_ALIASES.items():
        if alias in raw:
            table = raw.get(key, {})
            raw[key] = raw.pop(alias)
            raw[f"{key}_tables"] = table
        elif isinstance(raw.get(key), dict):
            raise UserError(f"{path}: `{key}` must be a list of names before any table, e.g. {key} = [\"...\"]")
    return text, raw


def _names(raw: dict[str, Any], key: str, known: dict[str, str], where: str) -> list[str]:
    value = raw.get(key)
    if value is None:
        raise UserError(f"{where}: missing `{key}` (a list of names, e.g. {key} = [\"{next(iter(known))}\"])")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{where}: `{key}` must be a list of names, got {value!r}")
    if not value:
        raise UserError(f"{where}: `{key}` is empty")
    for v in value:
        if v not in known:
            raise UserError(f"{where}: unknown {key[:-1]} {v!r} in `{key}`{did_you_mean(v, known)}; "
                            f"known: {', '.join(sorted(known))}")
    if len(set(value)) != len(value):
        raise UserError(f"{where}: `{key}` lists a name twice: {value!r}")
    return value


def _table(raw: Any, where: str, key: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: `{key}` must be a table ([{key}]), got {raw!r}")
    return raw


def _scalars(table: dict[str, Any], where: str, key: str) -> dict[str, Any]:
    for k, v in table.items():
        if isinstance(v, dict):
            raise UserError(f"{where}: [{key}] {k} must be a value, not a table")
    return table


def _axes(table: dict[str, Any], where: str, key: str) -> dict[str, list[Any]]:
    for k, v in table.items():
        if not isinstance(v, list):
            raise UserError(f"{where}: [{key}] {k} must be a list of values to sweep, got {v!r}")
        if not v:
            raise UserError(f"{where}: [{key}] {k} is an empty sweep axis (give at least one value)")
    return table


def _model(value: Any, where: str, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise UserError(f"{where}: {key} must be one model name, got {value!r}; known: {', '.join(sorted(MODELS))}")
    if value not in MODELS:
        raise UserError(f"{where}: unknown model {value!r} in {key}{did_you_mean(value, MODELS)}; "
                        f"known: {', '.join(sorted(MODELS))}")
    return value


def _dataset_table(table: dict[str, Any], where: str, dataset: str) -> dict[str, Any]:
    """[datasets.<d>]: single values (a sweep belongs in [sweep]); `data_root` a path, `model` a model name."""
    for k, v in table.items():
        if isinstance(v, dict | list):
            raise UserError(f"{where}: [datasets.{dataset}] {k} must be a single value, got {v!r} "
                            f"(sweep values in [sweep] or [methods.<m>.sweep])")
    root = table.get(DATA_ROOT_KEY)
    if root is not None and (not isinstance(root, str) or not root.strip()):
        raise UserError(f"{where}: [datasets.{dataset}] data_root must be a folder path as a string, got {root!r}")
    _model(table.get(MODEL_KEY), where, f"[datasets.{dataset}] model")
    return table


def load_spec(path: Path) -> GridSpec:
    path = Path(path)
    where = str(path)
    text, raw = parse_toml(path)
    known_top = TOP_KEYS | {"methods_tables", "datasets_tables"}
    for key in raw:
        if key not in known_top:
            raise UserError(f"{where}: unknown top-level key `{key}`{did_you_mean(key, TOP_KEYS)}; "
                            f"valid: {', '.join(sorted(TOP_KEYS))}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise UserError(f"{where}: `name` must be a simple name (letters, digits, _ . -), got {name!r}")
    datasets = _names(raw, "datasets", DATASETS, where)
    methods = _names(raw, "methods", METHODS, where)
    seeds = raw.get("seeds")
    if not isinstance(seeds, list) or not seeds:
        raise UserError(f"{where}: `seeds` must be a non-empty list of integers, got {seeds!r}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED:
            raise UserError(f"{where}: `seeds` must hold integers from 0 to 2**32 - 1, got {s!r}")
    model = _model(raw.get("model"), where, "`model`")
    method_tables = {}
    for m, table in _table(raw.get("methods_tables"), where, "methods").items():
        if m not in methods:
            raise UserError(f"{where}: [methods.{m}] is for a method not listed in `methods`{did_you_mean(m, methods)}")
        table = _table(table, where, f"methods.{m}")
        for k in table:
            if k not in METHOD_TABLE_KEYS:
                raise UserError(f"{where}: unknown key `{k}` in [methods.{m}]; valid: defaults, sweep")
        method_tables[m] = MethodTable(
            defaults=_scalars(_table(table.get("defaults"), where, f"methods.{m}.defaults"), where,
                              f"methods.{m}.defaults"),
            sweep=_axes(_table(table.get("sweep"), where, f"methods.{m}.sweep"), where, f"methods.{m}.sweep"))
    dataset_tables = {}
    for d, table in _table(raw.get("datasets_tables"), where, "datasets").items():
        if d not in datasets:
            raise UserError(f"{where}: [datasets.{d}] is for a dataset not listed in `datasets`"
                            f"{did_you_mean(d, datasets)}")
        dataset_tables[d] = _dataset_table(_table(table, where, f"datasets.{d}"), where, d)
    executor = _table(raw.get("executor"), where, "executor")
    executor_settings(executor, where)
    return GridSpec(path=path, text=text, name=name, datasets=datasets, methods=methods, seeds=seeds, model=model,
                    defaults=_scalars(_table(raw.get("defaults"), where, "defaults"), where, "defaults"),
                    sweep=_axes(_table(raw.get("sweep"), where, "sweep"), where, "sweep"),
                    method_tables=method_tables, dataset_tables=dataset_tables, executor=executor)
