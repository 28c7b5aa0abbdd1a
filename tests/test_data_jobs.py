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
