"""The paper grids (jobs/paper/) set the reference's schedule, precision and image views where a switch exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustmtl.grid.expand import expand
from robustmtl.grid.spec import load_spec

PAPER = Path(__file__).resolve().parent.parent / "jobs" / "paper"
VISION, TEXT = ("waterbirds", "celeba"), ("multinli", "civilcomments")
MULTITASK = ("mtl", "mtl_l1")  # the reference's multitask methods; its ERM family is erm, jtt, dro and erm_l1


@pytest.mark.parametrize("name", [*VISION, *TEXT])
def test_every_paper_grid_trains_in_fp32_like_the_reference(name):
    spec = load_spec(PAPER / f"{name}.toml")
    assert spec.executor.run_options(None, "slurm").precision == "fp32"


@pytest.mark.parametrize("name", VISION)
def test_vision_paper_grids_warm_up_500_steps_and_use_the_reference_views(name):
    runs = expand(load_spec(PAPER / f"{name}.toml"))
    assert {run.config.method for run in runs} >= {"erm", "jtt_stage1", "jtt", "gdro", "mtl", "l1", "mtl_l1"}
    for run in runs:
        t, m = run.config.train, run.config.model_params
        assert (t.scheduler, t.warmup_steps, t.warmup_frac) == ("cosine", 500, 0.0), run.config.method
        assert (m.image_resize, m.image_train_crop, m.image_crop_scale_min) == ("squash", "random_resized", 0.05)
        assert m.head_init == "trunc_normal"


@pytest.mark.parametrize("name", TEXT)
def test_text_paper_grids_warm_up_the_multitask_methods_only(name):
    for run in expand(load_spec(PAPER / f"{name}.toml")):
        t = run.config.train
        expected = 0.06 if run.config.method in MULTITASK else 0.0
        assert (t.scheduler, t.warmup_frac, t.warmup_steps) == ("linear", expected, 0), run.config.method


@pytest.mark.parametrize("name", TEXT)
def test_text_paper_grids_classify_the_pooler_output_like_the_reference(name):
    for run in expand(load_spec(PAPER / f"{name}.toml")):
        assert run.config.model_params.bert_pool == "pooler", run.config.method
