"""Which of a run's parameters are hyperparameters, and which are the condition its numbers hold under.

The tables select over hyperparameters (per cell, the setting with the best validation score) and compare a
method's chosen setting with the baseline's. Every other parameter is the run's condition: its model, its
data and model parameters, how long it trains, its pre-training stage, and any key robustmtl does not
declare (a run of other code). Runs of one cell that differ in a condition are never selected over, and a
method's runs are paired only with baseline runs of the same condition. For readers:
docs/results.md#hyperparameters-and-conditions.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import pandas as pd

from robustmtl.aggregate.parse import METRICS
from robustmtl.aggregate.stats import PairedDifference, paired_difference
from robustmtl.config import TrainParams
from robustmtl.errors import UserError
from robustmtl.params import field_types, omittable_defaults
from robustmtl.registry import DATASETS, METHODS, MODELS

# The training settings a method is tuned over. The others (epochs, eval_every, the pre-training stage's) set
# the experiment's length and stages; a training field added later is a condition until it is named here, so
# the tables refuse to select over it rather than do so silently.
OPTIMISATION_KEYS = frozenset({"lr", "batch_size", "optimizer", "weight_decay", "momentum", "scheduler",
                               "warmup_frac", "grad_clip"})
MODEL_KEY = "model"  # a run's model is a column of its own, not one of its hparams, but a condition like them
SHOWN_VALUES = 4  # values of one key a message lists before "…"


@functools.cache
def hyperparameters(method: str) -> frozenset[str]:
    """What the settings of a `method` cell may differ in: the method's own parameters and the optimisation
    settings (a method robustmtl does not know has the optimisation settings only)."""
    plugin = METHODS.get(method)
    own = field_types(plugin.params) if plugin is not None else {}
    return OPTIMISATION_KEYS | frozenset(own)


@functools.cache
def _defaults_of_later_fields(method: str, dataset: str, model: str) -> Mapping[str, Any]:
    """The `added_later` fields of a run's parameter blocks and their defaults: a run recorded before such a
    field existed ran at its default (it has the same run id as one that records it)."""
    blocks: list[type] = [TrainParams]
    for table, name in ((METHODS, method), (DATASETS, dataset), (MODELS, model)):
        plugin: Any = table.get(name)
        if plugin is not None:
            blocks.append(plugin.params)
    return {key: value for block in blocks for key, value in omittable_defaults(block).items()}


def run_parameters(method: str, dataset: str, model: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """A run's parameters as the tables compare them: its hparams, the defaults of fields added after it ran,
    and its model."""
    return {**_defaults_of_later_fields(method, dataset, model), **hparams, MODEL_KEY: model}


def parameters_of(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """run_parameters of every row of a runs frame (columns method, dataset, model, hparams)."""
    return [run_parameters(m, d, mo, h) for m, d, mo, h in
            zip(runs["method"], runs["dataset"], runs["model"], runs["hparams"], strict=True)]


def _key(value: Any) -> Hashable:
    """A value as compared: scalars with their type (1 is not 1.0), lists and tables by their JSON (a tuple
    default equals the list a record holds)."""
    if value is None or isinstance(value, str | int | float | bool):
        return type(value).__name__, value
    return json.dumps(value, sort_keys=True)


def _differing(settings: Sequence[Mapping[str, Any]], tuned: frozenset[str]) -> dict[str, list[Any]]:
    """Each key outside `tuned` whose value is not the same in every setting, with its values."""
    keys = sorted({k for s in settings for k in s} - tuned)
    found = {}
    for key in keys:
        values = {_key(s.get(key)): s.get(key) for s in settings}
        if len(values) > 1:
            found[key] = sorted(values.values(), key=_order)
    return found


def _order(value: Any) -> tuple[int, float, str]:
    """Numbers by value, then everything else by its JSON (a missing value last)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value):
        return (0, float(value), "")
    return (2, 0.0, "") if value is None else (1, 0.0, json.dumps(value, sort_keys=True))


def _show(value: Any) -> str:
    return "absent" if value is None else value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _values(values: list[Any]) -> str:
    shown = [_show(v) for v in values[:SHOWN_VALUES]]
    return ", ".join(shown + (["…"] if len(values) > SHOWN_VALUES else []))


def check_no_condition_varies(runs: pd.DataFrame) -> None:
    """Refuse to select over runs of one (dataset, method) cell that differ in a condition: the table would
    report the condition that scored best as if it were a tuned setting. One line naming the keys and the
    `--by` that makes each value a row group of its own."""
    settings = runs.drop_duplicates("setting_id")
    found: dict[tuple[str, str], dict[str, list[Any]]] = {}
    for (dataset, method), cell in settings.groupby(["dataset", "method"], sort=True):
        if len(cell) > 1 and (differ := _differing(parameters_of(cell), hyperparameters(str(method)))):
            found[(str(dataset), str(method))] = differ
    if not found:
        return
    (dataset, method), differ = next(iter(found.items()))
    keys = list(dict.fromkeys(k for d in found.values() for k in d))
    shown = "; ".join(f"{k} ({_values(v)})" for k, v in differ.items())
    others = f" (and of {len(found) - 1} more cell(s))" if len(found) > 1 else ""
    noun = "it is not a hyperparameter" if len(differ) == 1 else "they are not hyperparameters"
    split = " ".join(f"--by {k}" for k in keys)
    raise UserError(f"runs of {method} on {dataset}{others} differ in {shown}: {noun} of {method} but a "
                    f"condition, and a table never selects over a condition; give {split} for a row group per value")


def condition_mismatch(method: str, parameters: Mapping[str, Any], baseline: str,
                       baseline_parameters: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Where a method's runs and the baseline's are not of one condition ({} when they may be paired): every
    parameter but the hyperparameters of either method (each may have chosen its own)."""
    tuned = hyperparameters(method) | hyperparameters(baseline)
    keys = sorted((set(parameters) | set(baseline_parameters)) - tuned)
    return {k: (parameters.get(k), baseline_parameters.get(k)) for k in keys
            if _key(parameters.get(k)) != _key(baseline_parameters.get(k))}


def paired_differences(subject: str, method: str, parameters: Mapping[str, Any], cell: pd.DataFrame,
                       baseline: str, baseline_parameters: Mapping[str, Any] | None, base: pd.DataFrame,
                       where: str, scale: float = 1.0, metrics: Sequence[str] = METRICS,
                       ) -> tuple[dict[str, PairedDifference], str]:
    """Per metric, the difference of `cell`'s runs (columns seed and `metrics`, times `scale`) to `base`'s,
    paired by seed; or none and why, in one line, when the runs are not of one condition or share no seed.

    `subject` names the method where it is (a dataset, a condition); `baseline_parameters` is None where the
    baseline has no run, `where` says where that is."""
    if baseline_parameters is None:
        return {}, _missing_baseline(subject, baseline, where)
    mismatch = condition_mismatch(method, parameters, baseline, baseline_parameters)
    if mismatch:
        return {}, _not_paired(subject, baseline, mismatch)
    diffs = {metric: paired_difference(dict(zip(cell["seed"], scale * cell[metric], strict=True)),
                                       dict(zip(base["seed"], scale * base[metric], strict=True)))
             for metric in metrics}
    if all(d.n == 0 for d in diffs.values()):
        return {}, _missing_baseline(subject, baseline, "with the same seeds")
    return diffs, ""


def _not_paired(subject: str, baseline: str, mismatch: Mapping[str, tuple[Any, Any]]) -> str:
    shown = ", ".join(f"{k} {_show(a)} vs {_show(b)}" for k, (a, b) in mismatch.items())
    what = "a condition, not a hyperparameter" if len(mismatch) == 1 else "conditions, not hyperparameters"
    return f"{subject} not paired with {baseline}: the runs differ in {shown} ({what})"


def _missing_baseline(subject: str, baseline: str, where: str) -> str:
    return f"{subject} not paired with {baseline}: no {baseline} run {where}"
