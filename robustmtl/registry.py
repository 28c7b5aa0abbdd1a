"""Explicit name → plug-in tables for methods, datasets and models.

Entries are import paths resolved on first use, so `robustmtl --help` and the grid validator's
name checks never import torch; a typo gets a "did you mean" instead of an import error.
"""

from __future__ import annotations

import importlib
from typing import Any

from robustmtl.errors import UserError
from robustmtl.params import did_you_mean

METHODS: dict[str, str] = {
    "erm": "robustmtl.methods.erm:ERM",
    "mtl": "robustmtl.methods.mtl:MTL",
    "mtl_l1": "robustmtl.methods.mtl:MTLL1",
    "l1": "robustmtl.methods.mtl:L1",
    "jtt": "robustmtl.methods.jtt:JTT",
    "jtt_stage1": "robustmtl.methods.jtt:JTTStage1",
    "gdro": "robustmtl.methods.gdro:GroupDRO",
    "subg": "robustmtl.methods.balancing:SubG",
    "suby": "robustmtl.methods.balancing:SubY",
    "rwg": "robustmtl.methods.balancing:RwG",
    "rwy": "robustmtl.methods.balancing:RwY",
    "ldro": "robustmtl.methods.ldro:LookaheadDRO",
}

DATASETS: dict[str, str] = {
    "synthetic": "robustmtl.data.synthetic:Synthetic",
}

MODELS: dict[str, str] = {
    "mlp": "robustmtl.models.mlp:MLP",
}


def _load(table: dict[str, str], kind: str, name: str) -> Any:
    if not isinstance(name, str) or name not in table:
        raise UserError(f"unknown {kind} {name!r}{did_you_mean(str(name), table)}; "
                        f"known {kind}s: {', '.join(sorted(table))}")
    module, attr = table[name].split(":")
    return getattr(importlib.import_module(module), attr)


def method_entry(name: str) -> Any:
    return _load(METHODS, "method", name)


def dataset_entry(name: str) -> Any:
    return _load(DATASETS, "dataset", name)


def model_entry(name: str) -> Any:
    return _load(MODELS, "model", name)
