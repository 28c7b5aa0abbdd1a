"""The names tables and figures print for methods and datasets.

By default a plug-in's display name (declared beside it in robustmtl/registry.py: `mtl_l1` → "MTL+ℓ1"),
replaced by a grid's `[display.method]` / `[display.dataset]` table where it has one, or the raw keys
(`--raw-names`), which are what the command-line options and grid files take. Every table, figure and
caption prints these names; a CSV keeps the keys in `dataset` and `method` for scripts and adds the printed
names beside them (`with_display_columns`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from robustmtl.errors import UserError
from robustmtl.layout import GridDir
from robustmtl.registry import DATASETS, METHODS

KINDS = ("method", "dataset")  # the keys of a grid's [display] table


@dataclass(frozen=True)
class DisplayNames:
    """key → printed name; keys without an entry print as the plug-in's display name, else as themselves."""

    methods: Mapping[str, str] = field(default_factory=dict)
    datasets: Mapping[str, str] = field(default_factory=dict)
    raw: bool = False

    def method(self, key: str) -> str:
        if self.raw:
            return key
        plugin = METHODS.get(key)
        return self.methods.get(key) or (plugin.display if plugin else "") or key

    def dataset(self, key: str) -> str:
        if self.raw:
            return key
        plugin = DATASETS.get(key)
        return self.datasets.get(key) or (plugin.display if plugin else "") or key


REGISTRY_NAMES = DisplayNames()
RAW_NAMES = DisplayNames(raw=True)
DISPLAY_SUFFIX = "_display"  # `method` holds the key, `method_display` the name tables print


def with_display_columns(frame: pd.DataFrame, names: DisplayNames) -> pd.DataFrame:
    """A copy of `frame` with `dataset_display` / `method_display` after its `dataset` / `method` columns."""
    out = frame.copy()
    for kind, name_of in (("dataset", names.dataset), ("method", names.method)):
        if kind in out:
            out.insert(out.columns.get_loc(kind) + 1, kind + DISPLAY_SUFFIX, [name_of(str(k)) for k in out[kind]])
    return out


def display_names(grid_dirs: Sequence[Path], raw: bool = False) -> tuple[DisplayNames, list[str]]:
    """The names for tables of these grids: their saved specs' [display] tables merged in the order given
    (the first grid's name wins a conflict, with a warning), unless `raw`."""
    if raw:
        return RAW_NAMES, []
    from robustmtl.grid.spec import display_table, parse_toml

    chosen: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
    warnings = []
    for d in grid_dirs:
        spec = GridDir(d).spec
        if not spec.is_file():
            continue
        try:
            table = display_table(parse_toml(spec)[1].get("display"), str(spec))
        except UserError as exc:
            warnings.append(f"{exc}; its display names are not used")
            continue
        for kind, names in table.items():
            for key, name in names.items():
                earlier = chosen[kind].setdefault(key, name)
                if earlier != name:
                    warnings.append(f"{spec} names {kind} {key!r} {name!r}, an earlier grid {earlier!r}; "
                                    f"tables print {earlier!r}")
    return DisplayNames(chosen["method"], chosen["dataset"]), warnings
