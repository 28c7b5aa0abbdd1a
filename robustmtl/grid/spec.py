"""Grid files: TOML → a validated GridSpec. Every error names the file and the key.

A grid file is plain TOML 1.0 (tomllib, taplo and editors read it as robustmtl does):

    name     = "demo"                       # the grid directory defaults to runs/<name>
    datasets = ["synthetic"]                # what runs: the cross product of these lists ...
    methods  = ["erm", "mtl_l1"]
    seeds    = [0, 1, 2]
    model    = "mlp"                        # optional; else each dataset's default model
    [defaults]                              # values for every run
    epochs = 20
    [sweep]                                 # ... and of these axes, for every method
    lr = [1e-3, 3e-4]
    [method.mtl_l1.defaults]                # values for one method's runs
    [method.mtl_l1.sweep]                   # axes for one method's runs
    alpha_aux = [0.368, 1.0]
    [dataset.synthetic]                     # one dataset's parameters, plus its `model` and `data_root`
    p_train = 0.95
    [display.method]                        # optional: names tables and figures print (else the registry's)
    mtl_l1 = "Ours"
    [executor]                              # where runs execute: kind = "auto" | "local" | "slurm" | "debug"

The plural lists say what the grid runs; a singular table `[method.<m>]` / `[dataset.<d>]` configures
the runs whose `method` / `dataset` is that name (as the run configs spell the fields); TOML forbids a
table named like a key, so the per-name tables cannot be `[methods.<m>]`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustmtl.config import MAX_SEED
from robustmtl.errors import UserError
from robustmtl.grid.executor import ExecutorSettings, executor_settings
from robustmtl.params import did_you_mean
from robustmtl.registry import DATASETS, METHODS, MODELS

TOP_KEYS = {"name", "datasets", "methods", "seeds", "model", "defaults", "sweep", "method", "dataset",
            "display", "executor"}
# [display.<kind>] <key> = "printed name"
DISPLAY_KINDS: dict[str, Mapping[str, object]] = {"method": METHODS, "dataset": DATASETS}
METHOD_TABLE_KEYS = {"defaults", "sweep"}
DATA_ROOT_KEY = "data_root"
MODEL_KEY = "model"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
PER_NAME_TABLES = {"methods": "method", "datasets": "dataset"}  # the list's key → its per-name table's key
PLURAL_TABLE = re.compile(r"^\s*\[\[?\s*(methods|datasets)\s*\.\s*\"?([\w.-]+?)\"?\s*[\].]", re.MULTILINE)
BYTE_ORDER_MARK = "\ufeff"  # some editors write it; TOML does not allow it


@dataclass(frozen=True)
class MethodTable:
    defaults: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class GridSpec:
    path: Path
    text: str
    raw: dict[str, Any]  # the parsed file (what a re-submit compares with the saved spec)
    name: str
    datasets: list[str]
    methods: list[str]
    seeds: list[int]
    model: str | None
    defaults: dict[str, Any]
    sweep: dict[str, list[Any]]
    method_tables: dict[str, MethodTable]
    dataset_tables: dict[str, dict[str, Any]]
    executor: ExecutorSettings  # validated once, here
    display: dict[str, dict[str, str]] = field(default_factory=dict)  # see display_table

    def model_for(self, dataset: str) -> str:
        """A dataset's model: its [dataset.<d>] model, else the grid's `model`, else the dataset's default."""
        chosen = self.dataset_tables.get(dataset, {}).get(MODEL_KEY) or self.model
        return chosen or DATASETS[dataset].default_model

    def data_values(self, dataset: str) -> dict[str, Any]:
        """A dataset's [dataset.<d>] parameters (everything but where its files are and which model)."""
        table = self.dataset_tables.get(dataset, {})
        return {k: v for k, v in table.items() if k not in (DATA_ROOT_KEY, MODEL_KEY)}

    def data_root(self, dataset: str) -> str | None:
        return self.dataset_tables.get(dataset, {}).get(DATA_ROOT_KEY)


def read_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise UserError(f"grid file not found: {path}") from None
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as exc:
        raise UserError(f"cannot read grid file {path}: {exc}") from None


def parse_toml(path: Path) -> tuple[str, dict[str, Any]]:
    """A grid file's text and its TOML."""
    text = read_text(path)
    try:
        raw = tomllib.loads(text.removeprefix(BYTE_ORDER_MARK))
    except tomllib.TOMLDecodeError as exc:
        # `methods = [...]` beside `[methods.erm]` is a TOML error; the user meant the singular table
        if match := PLURAL_TABLE.search(text):
            raise _plural_table(path, match.group(1), match.group(2)) from None
        raise UserError(f"{path}: malformed TOML: {exc}") from None
    for plural, singular in PER_NAME_TABLES.items():
        if isinstance(table := raw.get(plural), dict):
            raise _plural_table(path, plural, next(iter(table), "<name>"))
        if singular in raw and not isinstance(raw[singular], dict):
            raise UserError(f"{path}: `{singular}` is the table of per-{singular} settings ([{singular}.<name>]); "
                            f"list what the grid runs in `{plural} = [...]`")
    return text, raw


def _plural_table(path: Path, plural: str, name: str) -> UserError:
    singular = PER_NAME_TABLES[plural]
    return UserError(f"{path}: `{plural}` must be a list of names (what the grid runs); one {singular}'s settings go "
                     f"in a [{singular}.<name>] table: write [{singular}.{name}], not [{plural}.{name}]")


def _names(raw: dict[str, Any], key: str, known: Mapping[str, object], where: str) -> list[str]:
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
            raise UserError(f"{where}: [{key}] {k} must be a value, not a table{_per_name_hint(key, k)}")
    return table


def _axes(table: dict[str, Any], where: str, key: str) -> dict[str, list[Any]]:
    for k, v in table.items():
        if not isinstance(v, list):
            hint = _per_name_hint(key, k) if isinstance(v, dict) else ""
            raise UserError(f"{where}: [{key}] {k} must be a list of values to sweep, got {v!r}{hint}")
        if not v:
            raise UserError(f"{where}: [{key}] {k} is an empty sweep axis (give at least one value)")
    return table


def _per_name_hint(table: str, name: str) -> str:
    """`[sweep.mtl]` means one method's axes: ' (one method's: [method.mtl.sweep])'; '' for other names."""
    if table in METHOD_TABLE_KEYS and name in METHODS:
        return f" (one method's {table}: [method.{name}.{table}])"
    if table in METHOD_TABLE_KEYS and name in DATASETS:
        return f" (one dataset's values: [dataset.{name}])"
    return ""


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
    """[dataset.<d>]: single values (a sweep belongs in [sweep]); `data_root` a path, `model` a model name."""
    for k, v in table.items():
        if isinstance(v, dict | list):
            raise UserError(f"{where}: [dataset.{dataset}] {k} must be a single value, got {v!r} "
                            f"(sweep values in [sweep] or [method.<m>.sweep])")
    root = table.get(DATA_ROOT_KEY)
    if root is not None and (not isinstance(root, str) or not root.strip()):
        raise UserError(f"{where}: [dataset.{dataset}] data_root must be a folder path as a string, got {root!r}")
    _model(table.get(MODEL_KEY), where, f"[dataset.{dataset}] model")
    return table


def display_table(raw: Any, where: str) -> dict[str, dict[str, str]]:
    """[display]: `[display.method]` / `[display.dataset]` tables of known key → the name tables print."""
    names: dict[str, dict[str, str]] = {}
    for kind, table in _table(raw, where, "display").items():
        known = DISPLAY_KINDS.get(kind)
        if known is None:
            raise UserError(f"{where}: unknown key `{kind}` in [display]{did_you_mean(kind, DISPLAY_KINDS)}; "
                            f"valid: {', '.join(DISPLAY_KINDS)}")
        for key, name in _table(table, where, f"display.{kind}").items():
            if key not in known:
                raise UserError(f"{where}: [display.{kind}] {key!r} is not a {kind}{did_you_mean(key, known)}; "
                                f"known: {', '.join(sorted(known))}")
            if not isinstance(name, str) or not name.strip():
                raise UserError(f"{where}: [display.{kind}] {key} must be a name to print, got {name!r}")
        names[kind] = dict(table)
    return names


def load_spec(path: Path) -> GridSpec:
    path = Path(path)
    where = str(path)
    text, raw = parse_toml(path)
    for key in raw:
        if key not in TOP_KEYS:
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
    for m, table in _table(raw.get("method"), where, "method").items():
        if m not in methods:
            raise UserError(f"{where}: [method.{m}] is for a method not listed in `methods`{did_you_mean(m, methods)}")
        table = _table(table, where, f"method.{m}")
        for k in table:
            if k not in METHOD_TABLE_KEYS:
                raise UserError(f"{where}: unknown key `{k}` in [method.{m}]{did_you_mean(k, METHOD_TABLE_KEYS)}; "
                                "valid: defaults, sweep")
        method_tables[m] = MethodTable(
            defaults=_scalars(_table(table.get("defaults"), where, f"method.{m}.defaults"), where,
                              f"method.{m}.defaults"),
            sweep=_axes(_table(table.get("sweep"), where, f"method.{m}.sweep"), where, f"method.{m}.sweep"))
    dataset_tables = {}
    for d, table in _table(raw.get("dataset"), where, "dataset").items():
        if d not in datasets:
            raise UserError(f"{where}: [dataset.{d}] is for a dataset not listed in `datasets`"
                            f"{did_you_mean(d, datasets)}")
        dataset_tables[d] = _dataset_table(_table(table, where, f"dataset.{d}"), where, d)
    executor = executor_settings(_table(raw.get("executor"), where, "executor"), where)
    return GridSpec(path=path, text=text, raw=raw, name=name, datasets=datasets, methods=methods, seeds=seeds,
                    model=model,
                    defaults=_scalars(_table(raw.get("defaults"), where, "defaults"), where, "defaults"),
                    sweep=_axes(_table(raw.get("sweep"), where, "sweep"), where, "sweep"),
                    method_tables=method_tables, dataset_tables=dataset_tables, executor=executor,
                    display=display_table(raw.get("display"), where))
