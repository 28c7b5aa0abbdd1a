"""Every shipped grid file (jobs/*.toml, jobs/paper/*.toml) expands: names, keys and values all valid."""

from __future__ import annotations

from pathlib import Path

import pytest

JOBS = Path(__file__).resolve().parent.parent / "jobs"
SPECS = sorted([*JOBS.glob("*.toml"), *JOBS.glob("paper/*.toml")])


def test_the_paper_grids_are_shipped():
    assert {p.name for p in SPECS} >= {"text_spurious.toml", "mnist_spurious.toml", "waterbirds.toml", "celeba.toml",
                                       "multinli.toml", "civilcomments.toml"}


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: str(p.relative_to(JOBS)))
def test_grid_file_dry_runs(cli, spec):
    result = cli("grid", "submit", spec, "--dry-run")
    assert "(dry run: nothing written)" in result.output


def test_the_text_alpha_grid_differs_from_the_text_grid_in_alpha_reg_alone():
    """Its runs are read together with text_spurious.toml's: each must be one of those at another alpha_reg."""
    from robustmtl.grid.expand import expand
    from robustmtl.grid.spec import load_spec

    grid = expand(load_spec(JOBS / "text_spurious.toml"))
    main = {run.run_id for run in grid}
    main_alpha = {run.config.hparams()["alpha_reg"] for run in grid if run.config.method in ("l1", "mtl_l1")}
    sweep = expand(load_spec(JOBS / "text_spurious_alpha.toml"))
    assert sweep
    for run in sweep:
        assert run.config.hparams()["alpha_reg"] not in main_alpha
        assert {run.config.replace(alpha_reg=alpha).run_id for alpha in main_alpha} & main, run.config.to_dict()
