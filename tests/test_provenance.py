"""Per-attempt provenance (RUN/provenance.jsonl) and the `code` field of every metrics record."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

import robustmtl
from robustmtl import provenance
from robustmtl.grid import snapshot
from robustmtl.layout import GridDir, RunDir
from tests.conftest import read_records, tiny_grid, write_spec


def installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def test_every_run_records_its_provenance_and_code(tmp_path, cli):
    spec = write_spec(tmp_path / "g.toml", tiny_grid("g", ["erm"], [0], defaults={"epochs": 1}))
    cli("grid", "submit", spec, "--out", tmp_path / "g")
    grid = GridDir(tmp_path / "g")
    (run_id,) = grid.run_ids()
    rd = grid.run(run_id)
    (entry,) = provenance.read_provenance(rd)
    info = provenance.code_info()
    assert entry["attempt"] == 1 and entry["hostname"] == socket.gethostname()
    assert entry["python"] == platform.python_version() and entry["python_executable"] == sys.executable
    assert entry["versions"] == {"robustmtl": robustmtl.__version__, "torch": torch.__version__,
                                 "transformers": installed("transformers"), "timm": installed("timm")}
    assert entry["cuda"] == torch.version.cuda
    if not torch.cuda.is_available():
        assert entry["gpus"] == [] and entry["driver"] is None
    assert entry["slurm_job_id"] == os.environ.get("SLURM_JOB_ID") and entry["restart_count"] == 0
    assert entry["code"] == info["code"] and entry["commit"] == info["commit"]
    assert entry["source_hash"] == provenance.package_hash(provenance.package_root())
    assert entry["source_path"] == str(provenance.package_root())
    if info["dirty"]:  # a dirty checkout's diff is kept beside the run
        assert Path(entry["diff_file"]).read_text() == info["diff"]
    assert {r["code"] for r in read_records(rd.metrics)} == {entry["code"]}


def test_commit_and_dirty_flag_match_git(tmp_path):
    root = provenance.package_root()
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("robustmtl is not imported from a git checkout here")
    status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, check=True).stdout
    info = provenance.code_info()
    assert info["commit"] == head.stdout.strip()
    assert info["dirty"] == bool(status.strip() or info["untracked"])
    assert info["code"].startswith(head.stdout.strip()[:12]) and ("+dirty." in info["code"]) == info["dirty"]


def test_attempts_are_numbered(tmp_path):
    rd = RunDir(tmp_path)
    assert [provenance.record(rd, job)["attempt"] for job in ("5_0", "5_0", "9_0")] == [1, 2, 3]
    assert [e["job_id"] for e in provenance.read_provenance(rd)] == ["5_0", "5_0", "9_0"]


def test_a_job_running_a_snapshot_reports_the_source_taken_at_submit(tmp_path):
    source = {"commit": "c" * 40, "dirty": True, "diff": "diff --git a/x b/x\n", "untracked": []}
    snap = snapshot.freeze(GridDir(tmp_path / "grid"), source)
    env = {**os.environ, "PYTHONPATH": str(snap.root), "PYTHONSAFEPATH": "1"}
    probe = "import json; from robustmtl import provenance as p; print(json.dumps(p.code_info()))"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    info = json.loads(out)
    assert info["commit"] == "c" * 40 and info["dirty"] is True and info["snapshot"] == snap.root.name
    assert info["code"] == snap.version and Path(info["diff_file"]).read_text() == source["diff"]
    assert Path(info["source_path"]) == (snap.root / "robustmtl").resolve()


def test_a_job_told_to_run_a_snapshot_refuses_another_copy(tmp_path, monkeypatch):
    monkeypatch.setenv(provenance.CODE_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match="should run the code snapshot"):
        provenance.record(RunDir(tmp_path), None)
    assert provenance.read_provenance(RunDir(tmp_path))[0]["source_path"] == str(provenance.package_root())
    monkeypatch.setenv(provenance.CODE_ENV, str(provenance.package_root().parent))
    provenance.check_snapshot()


def test_version_strings():
    assert provenance.version_string("0123456789abcdef", False, "f" * 64) == "0123456789ab"
    assert provenance.version_string("0123456789abcdef", True, "e" * 64) == "0123456789ab+dirty.eeeeeeee"
    assert provenance.version_string(None, None, "d" * 64) == "source:dddddddddddd"


def first_cpuinfo_model() -> str | None:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), None)


@pytest.mark.parametrize("threads", [1, 0])
def test_each_attempt_records_the_cpu_and_the_thread_count_it_trains_with(tmp_path, cli, threads):
    """CPU numbers are bitwise reproducible only at a fixed thread count, so the count is part of provenance:
    the grid's `threads` when set, else torch's default in the process that trains."""
    executor = {"threads": threads} if threads else {}
    spec = write_spec(tmp_path / "g.toml", tiny_grid("g", ["erm"], [0], defaults={"epochs": 1}, executor=executor))
    default = torch.get_num_threads()
    try:
        cli("grid", "submit", spec, "--out", tmp_path / "g")
    finally:
        torch.set_num_threads(default)  # the debug executor trains in this process
    grid = GridDir(tmp_path / "g")
    (entry,) = provenance.read_provenance(grid.run(grid.run_ids()[0]))
    assert entry["torch_threads"] == (threads or default)
    assert entry["torch_interop_threads"] == torch.get_num_interop_threads()
    assert entry["cpu_count"] == os.cpu_count() and 1 <= entry["cpus_usable"] <= os.cpu_count()
    model = first_cpuinfo_model()
    if model is not None:
        assert entry["cpu_model"] == model
