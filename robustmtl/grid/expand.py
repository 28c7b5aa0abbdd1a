"""GridSpec → the runs it asks for: datasets × methods × seeds × global sweep × the method's sweep.

Runs that are the same config (a sweep axis a method has no use for) collapse into one by run id.
Runs that others require (pre-training, JTT's stage 1; `robustmtl/requirements.py`) join the plan
ahead of the runs that need them, each once.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

from robustmtl.config import RunConfig, blocks_for, build_config, key_owner, owners_text, plugins_with
from robustmtl.errors import UserError
from robustmtl.grid.executor import ExecutorSettings
from robustmtl.grid.spec import GridSpec
from robustmtl.params import did_you_mean, field_types
from robustmtl.registry import method_plugin
from robustmtl.requirements import required_runs


@dataclass(slots=True)
class PlannedRun:
    config: RunConfig
    swept: dict[str, Any]
    requires: list[str] = field(default_factory=list)
    keep_encoder: bool = False  # a run that requires this one loads its final encoder (requirements.encoder_keepers)

    @property
    def run_id(self) -> str:
        return self.config.run_id


def _product(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(axes)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(axes[k] for k in keys))]


def _check_keys_known(spec: GridSpec) -> None:
    """A key in [defaults]/[sweep] must belong to at least one (method, dataset, model) of the grid."""
    combos = [blocks_for(m, d, spec.model_for(d)) for m in spec.methods for d in spec.datasets]
    known = {k for blocks in combos for block in blocks.values() for k in field_types(block)}
    for table, keys in (("defaults", spec.defaults), ("sweep", spec.sweep)):
        for key in keys:
            if key not in known:
                _unknown(spec, f"[{table}]", key, "any method, dataset or model in this grid", known)
    for m, method_table in spec.method_tables.items():
        method_known = {k for d in spec.datasets
                        for block in blocks_for(m, d, spec.model_for(d)).values()
                        for k in field_types(block)}
        for section, keys in (("defaults", method_table.defaults), ("sweep", method_table.sweep)):
            for key in keys:
                if key not in method_known:
                    _unknown(spec, f"[method.{m}.{section}]", key, f"method {m!r}", method_known)
    for d in spec.datasets:
        data_known = {k for m in spec.methods for block in blocks_for(m, d, spec.model_for(d)).values()
                      for k in field_types(block)}
        for key in spec.data_values(d):
            if key not in data_known:
                _unknown(spec, f"[dataset.{d}]", key, f"dataset {d!r}, its model {spec.model_for(d)!r} or its runs",
                         data_known | {"data_root", "model"})


def _unknown(spec: GridSpec, table: str, key: str, scope: str, known: set[str]) -> NoReturn:
    """Refuse a key of `table` that no run in `scope` has, saying where it belongs when it belongs somewhere:
    [executor] for how runs execute, another plug-in for its parameter."""
    where = f"{spec.path}: {table} {key!r}"
    if key in field_types(ExecutorSettings):
        raise UserError(f"{where} is an [executor] key (where and how runs execute, never part of a run): "
                        "move it to [executor]")
    if owners := plugins_with(key):
        raise UserError(f"{where} is a parameter of {owners_text(owners)}, not of {scope}")
    raise UserError(f"{where} is not a parameter of {scope}{did_you_mean(key, known)}")


def data_roots(spec: GridSpec) -> dict[str, str | None]:
    return {d: spec.data_root(d) for d in spec.datasets}


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cycle collector: expansion allocates ~10 objects per run and makes no cycles, so at
    100,000 runs the collector's repeated full passes cost a fifth of the time and free nothing."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def expand(spec: GridSpec) -> list[PlannedRun]:
    _check_keys_known(spec)
    with _no_cyclic_gc():
        return _expand(spec)


def _expand(spec: GridSpec) -> list[PlannedRun]:
    planned: dict[str, PlannedRun] = {}
    for dataset in spec.datasets:
        data_values = spec.data_values(dataset)
        model = spec.model_for(dataset)
        for method in spec.methods:
            table = spec.method_tables.get(method)
            method_axes = table.sweep if table else {}
            method_defaults = table.defaults if table else {}
            blocks = blocks_for(method, dataset, model)
            global_axes = {k: v for k, v in spec.sweep.items() if key_owner(k, blocks)}
            for point in _product(global_axes):
                for method_point in _product(method_axes):
                    values = {**spec.defaults, **data_values, **method_defaults, **point, **method_point}
                    where = f"{spec.path} ({method} on {dataset})"
                    relevant = {k: v for k, v in values.items() if key_owner(k, blocks)}
                    base = build_config(method, dataset, spec.seeds[0], model, relevant, where=where)
                    swept = {**point, **method_point}
                    for seed in spec.seeds:
                        cfg = base.with_seed(seed)
                        if cfg.run_id not in planned:
                            planned[cfg.run_id] = PlannedRun(cfg, swept)
    return _with_requirements(planned)


def _with_requirements(planned: dict[str, PlannedRun]) -> list[PlannedRun]:
    """Required runs first, transitively and deduplicated: one pre-training or stage-1 run serves every
    run that shares it, and every run comes after the runs it needs."""
    required: dict[str, PlannedRun] = {}

    def add_requirements(run: PlannedRun) -> None:
        reads = method_plugin(run.config.method).reads_encoders
        for role, cfg in required_runs(run.config).items():
            run.requires.append(cfg.run_id)
            if cfg.run_id not in planned and cfg.run_id not in required:
                needed = PlannedRun(cfg, {})
                add_requirements(needed)  # its own requirements enter `required` before it
                required[cfg.run_id] = needed
            if role in reads:
                (planned.get(cfg.run_id) or required[cfg.run_id]).keep_encoder = True

    for run in planned.values():
        add_requirements(run)
    return [*required.values(), *planned.values()]
