"""The plug-in declarations: torch-free for the grid, consistent with the implementations that train."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from robustmtl.registry import DATASETS, METHODS, MODELS, dataset_entry, model_plugin
from tests.conftest import dry_run_in_fresh_process

GENERATED = {"synthetic": {"n_train": 40, "n_val": 20, "n_test": 20},
             "text_spurious": {"text_n_train": 40, "text_n_val": 20, "text_n_test": 20},
             "mnist_spurious": {"mnist_n_train": 40, "mnist_n_val": 20, "mnist_n_test": 20}}


def test_dry_run_of_a_grid_with_every_plugin_never_imports_torch(tmp_path: Path) -> None:
    """The 100,000-run dry-run budget has no room for torch's ~1 s import: check and expand without it."""
    spec = tmp_path / "all.toml"
    spec.write_text("\n".join([
        'name = "all"', f"datasets = {json.dumps(sorted(DATASETS))}", f"methods = {json.dumps(sorted(METHODS))}",
        "seeds = [0, 1]", "[sweep]", "lr = [0.001, 0.0001]", "[method.jtt.sweep]", "jtt_upweight = [2, 5]",
        "[executor]", 'kind = "debug"']))
    output, heavy = dry_run_in_fresh_process(spec, tmp_path)
    assert "runs" in output and heavy == []


@pytest.mark.parametrize("table", [METHODS, DATASETS, MODELS], ids=["methods", "datasets", "models"])
def test_every_declaration_resolves_to_a_params_dataclass_and_an_implementation(table: dict) -> None:
    for name, plugin in table.items():
        assert dataclasses.is_dataclass(plugin.params), name
        assert plugin.params.__dataclass_params__.frozen, name
        assert isinstance(plugin.implementation(), type), name


@pytest.mark.parametrize("dataset", sorted(GENERATED))
def test_declared_modality_and_attributes_are_what_the_dataset_builds(dataset: str) -> None:
    params = DATASETS[dataset].params(**GENERATED[dataset])
    built = dataset_entry(dataset).build(params, None)
    assert built.info.modality == DATASETS[dataset].modality
    assert built.info.n_attrs == DATASETS[dataset].n_attrs
    assert built.info.modality in model_plugin(DATASETS[dataset].default_model).modalities


def test_every_dataset_has_a_default_model_that_takes_its_modality() -> None:
    for name, plugin in DATASETS.items():
        assert plugin.modality in MODELS[plugin.default_model].modalities, name


def test_each_parameter_key_is_defined_in_one_block() -> None:
    """Keys are flat across blocks: one definition each (shared keys come from a common base block)."""
    from robustmtl.config import TrainParams

    blocks = {TrainParams, *(p.params for table in (METHODS, DATASETS, MODELS) for p in table.values())}
    owners: dict[str, list[str]] = {}
    for block in blocks:
        for key in vars(block).get("__annotations__", {}):
            owners.setdefault(key, []).append(block.__name__)
    assert {k: v for k, v in owners.items() if len(v) > 1} == {}
    assert len(owners) > 40  # the blocks were read: every training, method, data and model key


def test_shared_keys_keep_their_defaults_and_run_ids() -> None:
    """Composed blocks (MTL+L1 from MTL and L1, the ViTs' SimMIM masking) keep keys, defaults and run ids."""
    from robustmtl.config import build_config
    from robustmtl.methods.mtl import L1Params, MTLL1Params, MTLParams

    names = [f.name for f in dataclasses.fields(MTLL1Params)]
    assert sorted(names) == ["alpha_aux", "alpha_reg", "reg_target"]
    assert MTLL1Params() == MTLL1Params(alpha_aux=MTLParams().alpha_aux, alpha_reg=L1Params().alpha_reg,
                                        reg_target=L1Params().reg_target)
    # golden ids from before the blocks were composed
    assert build_config("mtl_l1", "synthetic", 0, None, {"reg_target": "cls"}, where="test").run_id == "50c89e890f37"
    # the default L1 target is "tokens": a config that leaves it out is a different run from a "cls" one
    assert build_config("mtl_l1", "synthetic", 0, None, {}, where="test").run_id == "f33961b6d44d"
    assert build_config("mtl", "mnist_spurious", 0, None, {}, where="test").run_id == "158e3aae3b0e"
    assert build_config("mtl", "mnist_spurious", 0, "timm_vit", {}, where="test").run_id == "c0f56d6f8737"
