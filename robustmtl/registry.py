"""Explicit name → plug-in tables for methods, datasets and models.

Each entry is a plug-in's declaration: where its implementation lives, its parameter block, and the
traits a grid needs before anything trains (a dataset's modality and default model, a model's
modalities, a method's required runs). Checking and expanding a 100,000-run grid reads the parameter
blocks and never imports torch: a method's block sits in its own module, which defers torch to its
first use (`robustmtl/lazy.py`); datasets' and models' blocks live in the torch-free `data/params.py`
and `models/params.py`, their implementations (which import torch) are imported only to train.
Everything is named by import path and resolved on first use, so `robustmtl --help` imports nothing
and a typo gets a "did you mean" instead of an import error.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from typing import Any, TypeVar

from robustmtl.errors import UserError
from robustmtl.params import did_you_mean

# what a method's requirement rule takes and returns: a RunConfig, left generic because config.py builds on
# these tables (it imports this module, never the reverse)
Config = TypeVar("Config")

NO_PARAMS = "robustmtl.params:NoParams"


@functools.cache
def _import(path: str) -> Any:
    module, attr = path.split(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Plugin:
    implementation_path: str
    params_path: str = NO_PARAMS
    display: str = field(default="", kw_only=True)  # the name tables and figures print (else the key); a grid
    # may override it ([display] in its file)

    @property
    def params(self) -> type:
        """The frozen dataclass of this plug-in's parameters (torch-free)."""
        return _import(self.params_path)

    def implementation(self) -> Any:
        """The class that trains (imports torch)."""
        return _import(self.implementation_path)


@dataclass(frozen=True)
class MethodPlugin(Plugin):
    requires_path: str | None = None
    # roles of required runs whose final encoder weights this method loads (DFR's base): those runs keep them
    reads_encoders: tuple[str, ...] = field(default=(), kw_only=True)
    trains_aux: bool = field(default=False, kw_only=True)  # trains the model's own pre-training objective
    # fits on validation data with every group label it has (DFR's balanced subsets, AFR's choice of gamma):
    # selection rules that ration validation group labels leave it out
    fits_on_val_groups: bool = field(default=False, kw_only=True)

    def requires(self, config: Config) -> dict[str, Config]:
        """Runs that must finish before `config` starts, by role name (JTT's stage 1)."""
        return _import(self.requires_path)(config) if self.requires_path else {}


@dataclass(frozen=True)
class DatasetPlugin(Plugin):
    modality: str = ""
    default_model: str = ""
    # attribute values per class, as its DataInfo says (g = n_attrs * y + a), declared here too so that aggregation
    # can tell a validation example's class from its group without importing the dataset (0: not declared)
    n_attrs: int = field(default=0, kw_only=True)


@dataclass(frozen=True)
class ModelPlugin(Plugin):
    modalities: tuple[str, ...] = ()
    has_aux: bool = field(default=True, kw_only=True)  # False: a model without a pre-training objective, which
    # the methods that train one refuse when the grid is planned (`aux_conflict`)


def _method(impl: str, params: str | None = None, requires: str | None = None, *, display: str,
            reads_encoders: tuple[str, ...] = (), trains_aux: bool = False,
            fits_on_val_groups: bool = False) -> MethodPlugin:
    """`impl` is "module:Class" under robustmtl.methods; `params` names its block in the same module."""
    module = impl.split(":")[0]
    return MethodPlugin(f"robustmtl.methods.{impl}",
                        f"robustmtl.methods.{module}:{params}" if params else NO_PARAMS,
                        f"robustmtl.requirements:{requires}" if requires else None, display=display,
                        reads_encoders=reads_encoders, trains_aux=trains_aux, fits_on_val_groups=fits_on_val_groups)


def _dataset(impl: str, params: str | None, modality: str, default_model: str, *, display: str,
             n_attrs: int = 2) -> DatasetPlugin:
    return DatasetPlugin(f"robustmtl.data.{impl}", f"robustmtl.data.params:{params}" if params else NO_PARAMS,
                         modality, default_model, display=display, n_attrs=n_attrs)


def _model(impl: str, params: str, *modalities: str, has_aux: bool = True) -> ModelPlugin:
    return ModelPlugin(f"robustmtl.models.{impl}", f"robustmtl.models.params:{params}", modalities, has_aux=has_aux)


# In the order tables list them (the baseline first, then the paper's order).
METHODS: dict[str, MethodPlugin] = {
    "erm": _method("erm:ERM", display="ERM"),
    "jtt": _method("jtt:JTT", "JTTParams", requires="jtt_stage1", display="JTT"),
    "jtt_stage1": _method("jtt:JTTStage1", display="JTT stage 1"),
    "gdro": _method("gdro:GroupDRO", "GDROParams", display="Group DRO"),
    "subg": _method("balancing:SubG", display="SUBG"),
    "suby": _method("balancing:SubY", display="SUBY"),
    "rwg": _method("balancing:RwG", display="RWG"),
    "rwy": _method("balancing:RwY", display="RWY"),
    "l1": _method("mtl:L1", "L1Params", display="ℓ1"),
    "mtl": _method("mtl:MTL", "MTLParams", display="MTL", trains_aux=True),
    "mtl_l1": _method("mtl:MTLL1", "MTLL1Params", display="MTL+ℓ1", trains_aux=True),
    "ldro": _method("ldro:LookaheadDRO", "LDROParams", display="L-DRO"),
    "dfr": _method("dfr:DFR", "DFRParams", requires="retrained_base", display="DFR", reads_encoders=("base",),
                   fits_on_val_groups=True),
    "afr": _method("afr:AFR", "AFRParams", requires="retrained_base", display="AFR", reads_encoders=("base",),
                   fits_on_val_groups=True),
    "pretrain": _method("pretrain:Pretrain", display="Pre-training", trains_aux=True),
}

DATASETS: dict[str, DatasetPlugin] = {
    "synthetic": _dataset("synthetic:Synthetic", "SyntheticParams", "vector", "mlp", display="Synthetic"),
    "text_spurious": _dataset("injected:TextSpurious", "TextSpuriousParams", "text", "bert",
                              display="Rotten Tomatoes (spoiler)"),
    "mnist_spurious": _dataset("injected:MNISTSpurious", "MNISTSpuriousParams", "image", "vit",
                               display="Colored MNIST"),
    "waterbirds": _dataset("waterbirds:Waterbirds", None, "image", "vit", display="Waterbirds"),
    "celeba": _dataset("celeba:CelebA", "CelebAParams", "image", "vit", display="CelebA"),
    "multinli": _dataset("multinli:MultiNLI", None, "text", "bert", display="MultiNLI"),
    "civilcomments": _dataset("civilcomments:CivilComments", None, "text", "bert", display="CivilComments"),
    # n_attrs 8: what aggregation reads is validation membership, label x identity in both granularities (the
    # coarse training groups have 2 attributes per class, the fine ones 8)
    "civilcomments_small": _dataset("civilcomments_small:CivilCommentsSmall", "CivilCommentsSmallParams", "text",
                                    "bert", display="CivilComments (small)", n_attrs=8),
}

MODELS: dict[str, ModelPlugin] = {
    "mlp": _model("mlp:MLP", "MLPParams", "vector"),
    "bert": _model("bert:Bert", "BertParams", "text"),
    "vit": _model("vit:ViT", "ViTParams", "image"),
    "timm_vit": _model("timm_vit:TimmViT", "TimmViTParams", "image"),
    "resnet": _model("resnet:ResNet", "ResNetParams", "image", has_aux=False),
}


def _lookup(table: dict[str, Any], kind: str, name: str) -> Any:
    if not isinstance(name, str) or name not in table:
        raise UserError(f"unknown {kind} {name!r}{did_you_mean(str(name), table)}; "
                        f"known {kind}s: {', '.join(sorted(table))}")
    return table[name]


def method_plugin(name: str) -> MethodPlugin:
    return _lookup(METHODS, "method", name)


def dataset_plugin(name: str) -> DatasetPlugin:
    return _lookup(DATASETS, "dataset", name)


def model_plugin(name: str) -> ModelPlugin:
    return _lookup(MODELS, "model", name)


def aux_conflict(method: str, model: str) -> str | None:
    """Why `method` cannot run with `model` (it trains the model's pre-training objective, which `model` lacks)."""
    if not method_plugin(method).trains_aux or model_plugin(model).has_aux:
        return None
    modalities = set(MODELS[model].modalities)
    aux = [name for name, plugin in METHODS.items() if plugin.trains_aux]
    baselines = [name for name, plugin in METHODS.items() if not plugin.trains_aux]
    models = [name for name, plugin in MODELS.items() if plugin.has_aux and modalities & set(plugin.modalities)]
    return (f"model {model!r} has no pre-training objective for method {method!r} to train: it is offered for the "
            f"baselines, the methods without an auxiliary task ({', '.join(baselines)}); for {', '.join(aux)} "
            f"(and pretrain_epochs > 0) use model {' or '.join(map(repr, models))}")


def method_entry(name: str) -> Any:
    """The method's implementation class (imports torch)."""
    return method_plugin(name).implementation()


def dataset_entry(name: str) -> Any:
    """The dataset's implementation class (imports torch)."""
    return dataset_plugin(name).implementation()


def model_entry(name: str) -> Any:
    """The model's implementation class (imports torch)."""
    return model_plugin(name).implementation()
