"""Code snapshots (what jobs import), the dirty-tree warning, `grid resume --new-code`, and the SLURM
variables a submit from inside a SLURM job must not hand on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from robustmtl.grid import snapshot
from robustmtl.layout import GridDir
from robustmtl.provenance import git_source, package_files, package_hash, package_root
from tests.conftest import committed_package_copy, git, tiny_grid, write_spec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A git repo holding a committed copy of the robustmtl package; returns its package directory."""
    return committed_package_copy(tmp_path) / "robustmtl"


def test_git_source_clean_dirty_untracked_and_not_a_checkout(checkout, tmp_path):
    commit = git(checkout.parent, "rev-parse", "HEAD").strip()
    assert git_source(checkout) == {"commit": commit, "dirty": False, "diff": None, "untracked": []}
    (checkout / "errors.py").write_text((checkout / "errors.py").read_text() + "# edited\n")
    dirty = git_source(checkout)
    assert dirty["dirty"] and dirty["commit"] == commit and "+# edited" in dirty["diff"]
    git(checkout.parent, "checkout", "-q", "--", ".")
    (checkout / "new_module.py").write_text("X = 1\n")
    assert git_source(checkout)["dirty"] and git_source(checkout)["untracked"] == ["new_module.py"]
    copy = tmp_path / "plain" / "robustmtl"
    shutil.copytree(checkout, copy)
    assert git_source(copy)["commit"] is None


def test_freeze_copies_the_package_once_per_distinct_code(tmp_path):
    grid = GridDir(tmp_path / "grid")
    source = {"commit": "a" * 40, "dirty": True, "diff": "--- a\n+++ b\n", "untracked": []}
    snap = snapshot.freeze(grid, source)
    assert package_files(snap.root / "robustmtl") == package_files(package_root())
    assert package_hash(snap.root / "robustmtl") == snap.source["source_hash"] == package_hash(package_root())
    assert (snap.root / "diff.patch").read_text() == source["diff"]
    assert snap.source["commit"] == "a" * 40 and snap.version.startswith("aaaaaaaaaaaa+dirty.")
    assert snapshot.current(grid) == snap
    assert snapshot.freeze(grid, source) == snap and len(list((tmp_path / "grid" / "code").iterdir())) == 2
    clean = snapshot.freeze(grid, {**source, "dirty": False, "diff": None})
    assert clean != snap and snapshot.current(grid) == clean and clean.version == "a" * 12
    assert not (clean.root / "diff.patch").exists()


def test_setup_lines_make_python_import_the_snapshot_even_from_the_checkout(tmp_path):
    snap = snapshot.freeze(GridDir(tmp_path / "grid"), {"commit": None, "dirty": None, "diff": None, "untracked": []})
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    # the job's working directory is the checkout, which `python -m`/`-c` would put first on sys.path
    script = "\n".join([*snap.setup_lines(), f"cd {REPO}",
                        f"{sys.executable} -c 'import robustmtl; print(robustmtl.__file__)'"])
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert Path(out.strip()).resolve() == (snap.root / "robustmtl" / "__init__.py").resolve()


def test_submit_warns_on_a_dirty_tree_and_require_clean_refuses(tmp_path, cli, checkout, monkeypatch):
    (checkout / "errors.py").write_text((checkout / "errors.py").read_text() + "# edited\n")
    monkeypatch.setattr(snapshot, "source_state", lambda: git_source(checkout))
    spec = write_spec(tmp_path / "g.toml", tiny_grid("g", ["erm"], [0], defaults={"epochs": 1}))
    refused = cli("grid", "submit", spec, "--out", tmp_path / "g", "--require-clean", ok=False)
    assert refused.exit_code == 2 and "uncommitted changes" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and not (tmp_path / "g").exists()
    warned = cli("grid", "submit", spec, "--out", tmp_path / "g")
    assert "warning:" in warned.output and "uncommitted changes" in warned.output


def test_resume_keeps_the_snapshot_unless_new_code(tmp_path, cli, monkeypatch):
    spec = write_spec(tmp_path / "g.toml", tiny_grid("g", ["erm"], [0], defaults={"epochs": 1}))
    cli("grid", "submit", spec, "--out", tmp_path / "g")
    grid = GridDir(tmp_path / "g")
    first = snapshot.freeze(grid, {"commit": "a" * 40, "dirty": False, "diff": None, "untracked": []})
    monkeypatch.setattr(snapshot, "source_state",
                        lambda: {"commit": "b" * 40, "dirty": False, "diff": None, "untracked": []})
    assert snapshot.for_jobs(grid, new_code=False) == first
    cli("grid", "resume", grid.root, "--executor", "debug")
    assert snapshot.current(grid) == first
    result = cli("grid", "resume", grid.root, "--executor", "debug", "--new-code")
    assert snapshot.current(grid).source["commit"] == "b" * 40 and "bbbbbbbbbbbb" in result.output


@pytest.mark.parametrize("pointer", [b"0123456789abcdef\n", b"\xff\xfe\x00", b"", b"../../elsewhere\n"])
def test_a_corrupt_current_pointer_is_one_line_not_a_new_snapshot(tmp_path, cli, pointer):
    spec = write_spec(tmp_path / "g.toml", tiny_grid("g", ["erm"], [0], defaults={"epochs": 1}))
    cli("grid", "submit", spec, "--out", tmp_path / "g")
    grid = GridDir(tmp_path / "g")
    for run in (grid.root / "runs").iterdir():
        (run / "DONE").unlink()
    taken = snapshot.freeze(grid, {"commit": "a" * 40, "dirty": False, "diff": None, "untracked": []})
    (snapshot.code_dir(grid) / snapshot.CURRENT).write_bytes(pointer)
    result = cli("grid", "resume", grid.root, "--executor", "local", ok=False)
    assert result.exit_code == 2 and "CURRENT" in result.output and taken.root.name in result.output
    assert "--new-code" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in snapshot.code_dir(grid).iterdir()) == sorted([taken.root.name, snapshot.CURRENT])
    assert snapshot.for_jobs(grid, new_code=True) == snapshot.current(grid)


def test_resume_new_code_on_a_directory_that_is_no_grid_is_one_line(tmp_path, cli):
    result = cli("grid", "resume", tmp_path, "--new-code", ok=False)
    assert result.exit_code == 2 and "not a grid directory" in result.output
    assert not (tmp_path / "code").exists()


def test_slurm_job_variables_are_hidden_while_submitting(monkeypatch):
    inside = {"SLURM_JOB_ID": "7", "SLURM_MEM_PER_NODE": "500", "SRUN_CPUS_PER_TASK": "2",
              "SLURM_CONF": "/etc/slurm/slurm.conf", "SBATCH_ACCOUNT": "lab"}
    for key, value in inside.items():
        monkeypatch.setenv(key, value)
    with snapshot.without_slurm_environment():
        seen = {k: os.environ.get(k) for k in inside}
    assert seen == {"SLURM_JOB_ID": None, "SLURM_MEM_PER_NODE": None, "SRUN_CPUS_PER_TASK": None,
                    "SLURM_CONF": "/etc/slurm/slurm.conf", "SBATCH_ACCOUNT": "lab"}
    assert {k: os.environ.get(k) for k in inside} == inside


@pytest.mark.slow  # several seconds: left out of make test-fast
def test_local_executor_jobs_run_the_snapshot(tmp_path, cli):
    spec = write_spec(tmp_path / "g.toml", tiny_grid("g", ["erm"], [0], defaults={"epochs": 1},
                                                     executor={"kind": "local", "threads": 1}))
    cli("grid", "submit", spec, "--out", tmp_path / "g")
    grid = GridDir(tmp_path / "g")
    (run_id,) = grid.run_ids()
    entry = json.loads((grid.run(run_id).root / "provenance.jsonl").read_text())
    assert Path(entry["source_path"]) == (snapshot.current(grid).root / "robustmtl").resolve()
    assert entry["snapshot"] == snapshot.current(grid).root.name
