"""Explicit name → plug-in tables for methods, datasets and models.

Entries are import paths resolved on first use, so `robustmtl --help` and the grid validator's
name checks never import torch; a typo gets a "did you mean" instead of an import error.
"""

from __future__ import annotations

import functools
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
    "text_spurious": "robustmtl.data.injected:TextSpurious",
    "mnist_spurious": "robustmtl.data.injected:MNISTSpurious",
    "waterbirds": "robustmtl.data.waterbirds:Waterbirds",
    "celeba": "robustmtl.data.celeba:CelebA",
    "multinli": "robustmtl.data.multinli:MultiNLI",
    "civilcomments": "robustmtl.data.civilcomments:CivilComments",
}

MODELS: dict[str, str] = {
    "mlp": "robustmtl.models.mlp:MLP",
    "bert": "robustmtl.models.bert:Bert",
    "vit": "robustmtl.models.vit:ViT",
    "timm_vit": "robustmtl.models.timm_vit:TimmViT",
}


@functools.cache
def _import(path: str) -> Any:
    module, attr = path.split(":")
    return getattr(importlib.import_module(module), attr)


def _load(table: dict[str, str], kind: str, name: str) -> Any:
    if not isinstance(name, str) or name not in table:
        raise UserError(f"unknown {kind} {name!r}{did_you_mean(str(name), table)}; "
                        f"known {kind}s: {', '.join(sorted(table))}")
    return _import(table[name])


def method_entry(name: str) -> Any:
    return _load(METHODS, "method", name)


def dataset_entry(name: str) -> Any:
    return _load(DATASETS, "dataset", name)


def model_entry(name: str) -> Any:
    return _load(MODELS, "model", name)
