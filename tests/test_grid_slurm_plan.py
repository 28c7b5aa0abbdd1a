"""SLURM submission planning without a cluster: levels, dependencies, MaxArraySize chunks, sbatch scripts."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from robustmtl.errors import UserError
from robustmtl.grid import slurm
from robustmtl.grid.executor import ExecutorSettings
from robustmtl.grid.manifest import latest_entries
from robustmtl.grid.scheduler import sbatch_message
from robustmtl.layout import GridDir


def run(run_id: str, *requires: str) -> SimpleNamespace:
    return SimpleNamespace(run_id=run_id, requires=list(requires))


def rid(n: int) -> str:
    return f"{n:012x}"


def test_chunks_respect_max_array_size():
    runs = [run(rid(i)) for i in range(2500)]
    sizes = [len(c) for c in slurm.chunked(runs, 1001)]
    assert sizes == [1001, 1001, 498]
    assert [r.run_id for c in slurm.chunked(runs, 1001) for r in c] == [r.run_id for r in runs]


def test_levels_put_requirements_first_and_ignore_done_ones():
    s1, s2 = run(rid(1)), run(rid(2))
    a, b = run(rid(3), rid(1)), run(rid(4), rid(1), rid(2))
    free = run(rid(5), rid(99))  # its requirement is done (not in the plan)
    assert [[r.run_id for r in level] for level in slurm.levels([a, s1, b, free, s2])] == [
        [rid(1), rid(5), rid(2)], [rid(3), rid(4)]]
    with pytest.raises(UserError, match="circular"):
        slurm.levels([run(rid(1), rid(2)), run(rid(2), rid(1))])


def test_dependencies_only_on_jobs_not_done():
    runs = [run(rid(3), rid(1)), run(rid(4), rid(2))]
    assert slurm.dependencies(runs, {rid(1): "7_0", rid(2): "8"}) == ["7_0", "8"]
    assert slurm.dependencies(runs, {rid(1): "7_0"}) == ["7_0"]
    assert slurm.dependencies(runs, {}) == []


def test_with_requirements_adds_unfinished_requirements_once():
    s1, a, b = run(rid(1)), run(rid(2), rid(1)), run(rid(3), rid(1))
    assert [r.run_id for r in slurm.with_requirements([a, b], [s1, a, b], skip=set())] == [rid(1), rid(2), rid(3)]
    assert [r.run_id for r in slurm.with_requirements([a], [s1, a, b], skip={rid(1)})] == [rid(2)]


@pytest.fixture
def fake_sbatch(monkeypatch):
    """Replace the sbatch call: record (run ids, dependencies) and hand out array job ids."""
    calls: list[tuple[list[str], list[str]]] = []
    fail_on: set[int] = set()

    def sbatch_array(grid, runs, settings, deps, max_size):
        calls.append(([r.run_id for r in runs], deps))
        if len(calls) in fail_on:
            raise UserError("sbatch rejected the job: Invalid partition name specified")
        job = 100 + len(calls)
        return [f"{job}_{i}" for i in range(len(runs))] if len(runs) > 1 else [str(job)]

    monkeypatch.setattr(slurm, "sbatch_array", sbatch_array)
    monkeypatch.setattr(slurm, "max_array_size", lambda: 2)
    return SimpleNamespace(calls=calls, fail_on=fail_on)


def test_one_array_per_level_chunked_with_afterok(tmp_path, fake_sbatch):
    grid = GridDir(tmp_path)
    stage1 = [run(rid(1)), run(rid(2))]
    stage2 = [run(rid(10 + i), rid(1 + i % 2)) for i in range(3)]
    queued_req = run(rid(20), rid(30))  # requirement already queued as job 99_4
    n = slurm.submit_arrays(grid, [*stage2, *stage1, queued_req], ExecutorSettings(), Console(quiet=True),
                            queued={rid(30): "99_4"})
    assert n == 6
    assert fake_sbatch.calls == [
        ([rid(1), rid(2)], []),
        ([rid(20)], ["99_4"]),
        ([rid(10), rid(11)], ["101_0", "101_1"]),
        ([rid(12)], ["101_0"]),
    ]
    entries = latest_entries(tmp_path)
    assert entries[rid(1)]["job_id"] == "101_0" and entries[rid(12)]["job_id"] == "104"
    assert all(isinstance(e["submitted_at"], float) for e in entries.values())


def test_rejected_sbatch_leaves_no_entries_for_runs_not_queued(tmp_path, fake_sbatch):
    fake_sbatch.fail_on.add(2)
    runs = [run(rid(i)) for i in range(4)]
    with pytest.raises(UserError, match=r"Invalid partition.*2 runs were queued before"):
        slurm.submit_arrays(GridDir(tmp_path), runs, ExecutorSettings(), Console(quiet=True))
    assert sorted(latest_entries(tmp_path)) == [rid(0), rid(1)]


def test_parameters_from_settings():
    settings = ExecutorSettings(partition="gpu", account="lab", qos="high", gpus=2, cpus=4, mem_gb=8, timeout_min=1,
                                constraint="a100", extra=("--begin=now+60", "--exclusive"))
    params = slurm.slurm_parameters(settings, "robustmtl-x")
    assert params["slurm_partition"] == "gpu" and params["slurm_account"] == "lab" and params["slurm_qos"] == "high"
    assert params["slurm_gpus_per_task"] == 2 and params["cpus_per_task"] == 4 and params["mem_gb"] == 8
    assert params["slurm_signal_delay_s"] == 30 and params["slurm_setup"] == ["export OMP_NUM_THREADS=4"]
    assert params["slurm_additional_parameters"] == {"begin": "now+60", "exclusive": True}
    assert slurm.slurm_parameters(ExecutorSettings(), "x")["slurm_signal_delay_s"] == 90
    with pytest.raises(UserError, match="--name=value"):
        slurm.slurm_parameters(ExecutorSettings(extra=("begin",)), "x")


def test_sbatch_message_keeps_what_went_wrong():
    stderr = ("sbatch: error: invalid partition specified: nosuch\n"
              "sbatch: error: Batch job submission failed: Invalid partition name specified\n")
    assert sbatch_message(stderr) == ("invalid partition specified: nosuch; "
                                      "Batch job submission failed: Invalid partition name specified")


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_sbatch_script_has_array_throttle_dependency_and_flags(tmp_path, monkeypatch):
    """Through submitit with a fake `sbatch` that keeps the script: the flags the cluster would see."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    _executable(bin_dir / "sbatch", f'#!/bin/sh\ncp "$1" {scripts}/$$.sh\necho "Submitted batch job 4242"\n')
    _executable(bin_dir / "srun", "#!/bin/sh\nexit 0\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    grid = GridDir(tmp_path / "grid")
    runs = [run(rid(i)) for i in range(3)]
    settings = ExecutorSettings(partition="debug", array_parallelism=2, max_requeues=5, extra=("--begin=now+60",))
    ids = slurm.sbatch_array(grid, runs, settings, ["7_1", "8"], 1001)
    assert ids == ["4242_0", "4242_1", "4242_2"]
    text = next(scripts.iterdir()).read_text()
    for flag in ("--array=0-2%2", "--dependency=afterok:7_1:8", "--kill-on-invalid-dep=yes", "--partition=debug",
                 "--begin=now+60", "--job-name=robustmtl-grid", "--signal=USR2@90"):
        assert f"#SBATCH {flag}\n" in text, text
    pickles = sorted(p.name for p in (grid.submitit / "4242_1").iterdir())
    assert "4242_1_submitted.pkl" in pickles


def test_rejected_sbatch_through_submitit_is_one_user_error(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "sbatch", "#!/bin/sh\necho 'sbatch: error: Batch job submission failed: "
                                    "Invalid account or account/partition combination specified' >&2\nexit 1\n")
    _executable(bin_dir / "srun", "#!/bin/sh\nexit 0\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    grid = GridDir(tmp_path / "grid")
    with pytest.raises(UserError, match=r"^sbatch rejected the job: Batch job submission failed: Invalid account"):
        slurm.sbatch_array(grid, [run(rid(0)), run(rid(1))], ExecutorSettings(account="nosuch"), [], 1001)
    assert list(grid.submitit.iterdir()) == []  # no leftover pickles or scripts
    assert latest_entries(grid.root) == {}
