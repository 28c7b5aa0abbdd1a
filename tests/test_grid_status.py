"""`grid status` without a cluster: markers first, then one squeue and at most one sacct call (faked here)."""

from __future__ import annotations

import fcntl
import json
from types import SimpleNamespace

import pytest

from robustmtl import cli_grid
from robustmtl.errors import UserError
from robustmtl.grid import scheduler
from robustmtl.grid import status as status_module
from robustmtl.grid.coverage import coverage, write_plan
from robustmtl.grid.expand import expand
from robustmtl.grid.manifest import append_entries
from robustmtl.grid.scheduler import JobEnd
from robustmtl.grid.spec import load_spec
from robustmtl.grid.status import grid_status, queued_runs
from robustmtl.layout import GridDir, failure_line
from robustmtl.train.attempt_log import record_attempt
from tests.conftest import tiny_grid, write_spec


def rid(n: int) -> str:
    return f"{n:012x}"


@pytest.fixture
def grid(tmp_path):
    """Ten runs in every situation a grid can be in (see the comments)."""
    g = GridDir(tmp_path / "grid")
    for n in range(10):
        g.run(rid(n)).root.mkdir(parents=True)
    g.spec.write_text('name = "x"\n')
    g.run(rid(0)).done.write_text("{}")                                    # done
    for n in (4, 9):                                                       # failed attempt
        g.run(rid(n)).failed.write_text(json.dumps({"error": "Traceback\nValueError: boom"}))
    g.run(rid(5)).metrics.write_text("{}\n")                               # started by its job
    for n, job in ((3, "5_2"), (5, "5_4")):
        (g.run(rid(n)).root / "attempts.jsonl").write_text(json.dumps({"event": "start", "job_id": job}) + "\n")
    jobs = {0: "4_0", 1: "5_0", 2: "5_1", 3: "5_2", 4: "5_3", 5: "5_4", 6: "5_5", 8: "5_6", 9: "6"}
    append_entries(g.root, [{"run_id": rid(n), "job_id": j} for n, j in jobs.items()])
    return g


@pytest.fixture
def slurm_calls(monkeypatch):
    calls: dict[str, list] = {"squeue": [], "sacct": []}
    answers = {"squeue": {"5_0": "RUNNING", "5_1": "PENDING", "5_2": "PENDING", "6": "COMPLETING"},
               "sacct": {"5_3": JobEnd("FAILED"), "5_4": JobEnd("CANCELLED", by_uid=0),
                         "5_5": JobEnd("CANCELLED", by_uid=0), "5_6": JobEnd("FAILED")}}

    def squeue(job_ids):
        calls["squeue"].append(set(job_ids))
        return answers["squeue"]

    def sacct(job_ids, since):
        calls["sacct"].append(set(job_ids))
        return answers["sacct"]

    monkeypatch.setattr(scheduler, "queue_states", squeue)
    monkeypatch.setattr(scheduler, "accounting_states", sacct)
    return calls, answers


def test_states_from_markers_one_squeue_and_one_sacct(grid, slurm_calls):
    calls, _ = slurm_calls
    status = grid_status(grid)
    states = {r: s.state for r, s in status.runs.items()}
    assert states == {rid(0): "done", rid(1): "running", rid(2): "pending", rid(3): "requeued", rid(4): "failed",
                      rid(5): "interrupted", rid(6): "cancelled", rid(7): "not submitted", rid(8): "failed",
                      rid(9): "running"}
    assert calls["squeue"] == [{"5_0", "5_1", "5_2", "5_3", "5_4", "5_5", "5_6", "6"}]  # not the done run's job
    assert calls["sacct"] == [{"5_3", "5_4", "5_5", "5_6"}]  # only jobs that left the queue
    failed = dict(status.failed)
    assert failed[rid(4)] == "ValueError: boom" and "failed before training started" in failed[rid(8)]
    assert status.active == {rid(1): "5_0", rid(2): "5_1", rid(3): "5_2", rid(9): "6"}
    assert status.runs[rid(5)].note == "job 5_4 cancelled by root"
    assert status.runs[rid(6)].note == "job 5_5 cancelled by root before it started"


def test_markers_alone_without_slurm(grid, slurm_calls):
    calls, answers = slurm_calls
    answers["squeue"] = None
    status = grid_status(grid)
    assert not status.queue_known and calls["sacct"] == []
    assert status.counts == {"done": 1, "failed": 2, "started": 1, "submitted": 5, "not submitted": 1}
    with pytest.raises(UserError, match="squeue did not answer"):
        queued_runs(grid)


def test_without_accounting_started_runs_are_interrupted(grid, slurm_calls):
    _, answers = slurm_calls
    answers["sacct"] = None
    status = grid_status(grid)
    assert not status.accounting_known
    assert status.runs[rid(5)].state == "interrupted" and status.runs[rid(6)].state == "unknown"


def test_cli_table_and_failed_lines(grid, slurm_calls, cli):
    out = cli("grid", "status", grid.root).output
    for fragment in ("running", "requeued", "not submitted", "cancelled", f"{rid(4)}: ValueError: boom"):
        assert fragment in out, out
    flat = " ".join(out.split())
    for state in status_module.CORE_STATES:  # every row says what its state means, also with no run in it
        assert " ".join(status_module.STATE_HELP[state].split()[:3]) in flat, state
    assert f"cancelled {rid(6)}: job 5_5 cancelled by root before it started" in flat


def test_watch_refreshes_until_nothing_is_queued(grid, slurm_calls, cli, monkeypatch):
    _, answers = slurm_calls
    seen = []
    real = status_module.grid_status

    def counting(g, accounting=True):
        seen.append(1)
        if len(seen) == 2:
            answers["squeue"] = {}  # everything left the queue
        return real(g, accounting)

    monkeypatch.setattr(status_module, "grid_status", counting)
    slept: list[float] = []
    monkeypatch.setattr(cli_grid._time, "sleep", slept.append)
    result = cli("grid", "status", grid.root, "--watch")
    assert len(seen) == 2 and "requeued" in result.output and slept == [10.0]
    too_often = cli("grid", "status", grid.root, "--watch", "--interval", "2", ok=False)
    assert too_often.exit_code == 2 and len(seen) == 2  # refused before asking the scheduler


def test_counts_per_run_pack_mates_and_held_back_runs(grid, slurm_calls, cli):
    _, answers = slurm_calls
    attempts = [{"event": e, "job_id": "5_0"} for e in ("start", "preempted", "start", "crashed", "start")]
    (grid.run(rid(1)).root / "attempts.jsonl").write_text("".join(json.dumps(e) + "\n" for e in attempts))
    append_entries(grid.root, [{"run_id": rid(n), "job_id": "9_0", "pack": [rid(2), rid(6)]} for n in (2, 6)])
    (grid.run(rid(2)).root / "attempts.jsonl").write_text(json.dumps({"event": "start", "job_id": "9_0"}) + "\n")
    append_entries(grid.root, [{"run_id": rid(7), "job_id": None, "not_submitted": "MaxSubmitJobs = 5"}])
    answers["squeue"] = {**answers["squeue"], "9_0": "RUNNING"}
    status = grid_status(grid)
    assert status.runs[rid(1)].stops() == "1 preempted, 1 crashed"
    assert status.runs[rid(2)].state == "running"  # the pack member in training
    assert status.runs[rid(6)].state == "pending" and "pack mates" in status.runs[rid(6)].note  # its turn comes
    assert status.runs[rid(7)].state == "not submitted" and "MaxSubmitJobs = 5" in status.runs[rid(7)].note
    out = cli("grid", "status", grid.root).output
    assert f"{rid(1)} (running): 1 preempted, 1 crashed" in out and "1 crashed" in out.split("attempts:")[1]
    assert "held back: MaxSubmitJobs = 5" in out


def test_failed_run_shows_why_it_was_not_retried(grid, slurm_calls):
    grid.run(rid(4)).failed.write_text(json.dumps({"error": "ValueError: boom", "reason": "crashed again at step 7"}))
    assert dict(grid_status(grid).failed)[rid(4)] == "ValueError: boom (crashed again at step 7)"


def test_coverage_lists_missing_seeds_and_settings_per_cell(tmp_path, slurm_calls, cli):
    spec = write_spec(tmp_path / "cov.toml", tiny_grid("cov", ["erm", "l1"], [0, 1],
                                                       sweeps={"l1": {"alpha_reg": [0.1, 0.2]}}))
    runs = expand(load_spec(spec))
    g = GridDir(tmp_path / "cov")
    g.root.mkdir()
    g.spec.write_text(spec.read_text())
    write_plan(g, runs)  # what grid submit saves: the one record coverage reads
    for r in runs:
        g.run(r.run_id).root.mkdir(parents=True)
        done = r.config.method == "erm" or (r.swept.get("alpha_reg") == 0.1 and r.config.seed == 0)
        if done:
            g.run(r.run_id).done.write_text("{}")
    status = grid_status(g)
    gaps = coverage(g, {run_id for run_id, r in status.runs.items() if r.state == "done"})
    assert [(x.dataset, x.method, x.expected, x.done, x.missing) for x in gaps] == [
        ("synthetic", "l1", 4, 1, [("alpha_reg=0.1", [1]), ("alpha_reg=0.2", [0, 1])])]
    out = cli("grid", "status", g.root).output
    assert "synthetic/l1 (1/4 done): alpha_reg=0.1: seed 1; alpha_reg=0.2: seeds 0, 1" in out
    g.spec.write_text("not a grid file")  # the spec is not read again
    assert [(x.method, x.missing) for x in coverage(g, {r.run_id for r in runs if g.run(r.run_id).done.exists()})] \
        == [("l1", [("alpha_reg=0.1", [1]), ("alpha_reg=0.2", [0, 1])])]
    g.plan.unlink()
    assert coverage(g, set()) is None


def test_undecodable_and_ill_typed_lines_are_skipped_like_corrupt_ones(grid, slurm_calls, cli):
    expected = {r: s.state for r, s in grid_status(grid).runs.items()}
    manifest = grid.root / "manifest.jsonl"
    garbage = [b"\xff\xfe\x00garbage", b'{"run_id": 5, "job_id": "1"}', b'["not", "an", "entry"]',
               json.dumps({"run_id": rid(7), "job_id": "8", "submitted_at": "yesterday"}).encode(),
               json.dumps({"run_id": rid(7), "job_id": ["8"]}).encode()]
    manifest.write_bytes(manifest.read_bytes() + b"\n".join(garbage) + b"\n")
    attempts = grid.run(rid(3)).attempts
    attempts.write_bytes(attempts.read_bytes() + b'\x80\x81{"event": "start"}\n{"event": ["x"]}\n')
    grid.run(rid(4)).failed.write_text(json.dumps({"error": 5}))
    grid.run(rid(9)).failed.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    status = grid_status(grid)
    assert {r: s.state for r, s in status.runs.items()} == expected
    assert status.runs[rid(3)].attempts == {"start": 1}
    assert dict(status.failed)[rid(4)] == "unknown error (FAILED marker unreadable)"
    assert failure_line(grid.run(rid(9))) == "unknown error (FAILED marker unreadable)"
    assert "unknown error" in cli("grid", "status", grid.root).output
    logs = cli("grid", "logs", grid.root, rid(1), ok=False)
    assert logs.exit_code == 2 and "no log yet" in logs.output


@pytest.mark.parametrize("args", [["status"], ["logs", "{run}"], ["cancel"], ["resume", "--executor", "debug"]])
def test_manifest_that_is_a_directory_is_one_line(grid, slurm_calls, cli, args):
    manifest = grid.root / "manifest.jsonl"
    manifest.unlink()
    manifest.mkdir()
    result = cli("grid", args[0], grid.root, *[a.replace("{run}", rid(1)) for a in args[1:]], ok=False)
    assert result.exit_code == 2 and f"cannot read the grid's manifest {manifest}" in " ".join(result.output.split())
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_run_trained_outside_the_grids_jobs_is_running_then_resumable(grid, slurm_calls, cli, lock_holder,
                                                                         monkeypatch):
    """A process holding the train lock makes the run running, with its pid, whatever SLURM says of the run's
    job; once it ends, a run no job of the grid started is explained, not shown as merely `started`."""
    grid.run(rid(7)).metrics.write_text("{}\n")  # never submitted, trained by hand (`robustmtl run` logs its start)
    record_attempt(grid.run(rid(7)), "start", None, checkpoint=False, via="run")
    by_hand = lock_holder(grid.run(rid(7)).root)
    beside_pending = lock_holder(grid.run(rid(2)).root)  # its job 5_1 is still pending
    after_cancel = lock_holder(grid.run(rid(5)).root)  # its job 5_4 started it, then was cancelled
    grid.run(rid(0)).root.joinpath(".train.lock").write_text("1\n")  # a done run's lock is never looked at

    def no_probe(*args):
        raise AssertionError("status must not take a run's lock: a job starting then would find its run busy")

    monkeypatch.setattr(fcntl, "flock", no_probe)
    status = grid_status(grid)
    runs = status.runs
    assert {r: runs[r].state for r in (rid(7), rid(2), rid(5))} == dict.fromkeys((rid(7), rid(2), rid(5)), "running")
    assert runs[rid(7)].note == f"trained now by pid {by_hand.pid} on this machine, outside this grid's jobs"
    assert runs[rid(2)].note.startswith(f"trained now by pid {beside_pending.pid} on this machine, outside")
    assert "its queued job 5_1 will leave the run alone" in runs[rid(2)].note
    assert runs[rid(5)].note == f"trained now by pid {after_cancel.pid} on this machine"
    assert status.active == {rid(1): "5_0", rid(2): "5_1", rid(3): "5_2", rid(9): "6"}  # only jobs in the queue
    assert status.counts["running"] == 5
    shown = " ".join(cli("grid", "status", grid.root).output.split())
    assert f"running {rid(7)}: trained now by pid {by_hand.pid} on this machine, outside this grid's jobs" in shown

    for proc in (by_hand, beside_pending, after_cancel):
        proc.communicate("")  # ends; the kernel drops its lock, the pid stays written in the lock file
    runs = grid_status(grid).runs
    assert runs[rid(7)].state == "interrupted" and runs[rid(7)].note.startswith("trained outside this grid's jobs")
    assert "by no process on this machine now; `grid resume` continues it" in runs[rid(7)].note
    assert runs[rid(5)].state == "interrupted" and runs[rid(5)].note == "job 5_4 cancelled by root"
    assert runs[rid(2)].state == "pending"
    out = " ".join(cli("grid", "status", grid.root).output.split())
    assert f"interrupted {rid(7)}: trained outside this grid's jobs" in out


def test_a_run_whose_job_left_the_queue_before_starting_it_names_that_job(grid, slurm_calls):
    grid.run(rid(6)).metrics.write_text("{}\n")  # job 5_5 was cancelled while pending; the run was trained by hand
    run = grid_status(grid).runs[rid(6)]
    assert run.state == "interrupted" and "its job 5_5 cancelled by root before starting it" in run.note


def test_no_lock_is_looked_up_when_no_unfinished_run_has_one(grid, slurm_calls, monkeypatch):
    """Status stays one listing per run: /proc/locks is read only when some run not done has a lock file."""
    grid.run(rid(0)).root.joinpath(".train.lock").write_text("1\n")
    monkeypatch.setattr(status_module, "lock_holders", lambda: pytest.fail("read /proc/locks"))
    assert grid_status(grid).runs[rid(0)].state == "done"


# sacct's answers as the live cluster gives them: task records, an array's record for tasks that never
# started (`2_[0-2]`), a dependency that can never be met, a cancel by root, a step killed by SIGKILL
SACCT = """1_0|FAILED|None|3:0
1_0.batch|FAILED||3:0
1_1|COMPLETED|None|0:0
2_[0-2]|CANCELLED|Dependency|0:0
3_[0-3%2]|CANCELLED by 0|JobHeldUser|0:0
4|CANCELLED by 0|None|0:0
4.batch|CANCELLED||0:15
6|FAILED|None|9:0
6.batch|FAILED||9:0
6.0|CANCELLED||0:9
7|PREEMPTED|None|0:0
"""


def test_accounting_reads_array_records_reasons_and_signals():
    wanted = {"1_0", "1_1", "2_1", "3_3", "4", "6", "7", "8"}
    ends = scheduler.parse_accounting(SACCT, wanted)
    assert set(ends) == wanted - {"8"}  # no record at all: the one case that stays unknown
    assert ends["2_1"].by_dependency and ends["2_1"].array_record and not ends["1_0"].array_record
    described = {j: e.describe() for j, e in ends.items()}
    assert described == {"1_0": "failed", "1_1": "completed",
                         "2_1": "cancelled by SLURM: a job it depends on did not succeed",
                         "3_3": "cancelled by root", "4": "cancelled by root",
                         "6": "killed by signal 9 (SIGKILL)", "7": "preempted and not requeued"}
    assert scheduler.array_tasks("12_[0-2,5%2]") == ["12_0", "12_1", "12_2", "12_5"]
    assert scheduler.array_tasks("12_4") == []


def chain_grid(tmp_path, pretrain: bool):
    """A JTT run, its stage-1 run and (with `pretrain`) the pre-training run both require, laid out as a grid."""
    from robustmtl.config import RunOptions, build_config
    from robustmtl.requirements import with_transitive
    from robustmtl.rundir import prepare_run

    values = {"epochs": 2, "n_train": 200, "n_val": 100, "n_test": 100, **({"pretrain_epochs": 1} if pretrain else {})}
    jtt = build_config("jtt", "synthetic", 0, None, values, where="t")
    chain = [*with_transitive(jtt), jtt]
    g = GridDir(tmp_path / "chain")
    g.root.mkdir()
    g.spec.write_text('name = "chain"\n')
    for cfg in chain:
        prepare_run(g.run(cfg.run_id), cfg, RunOptions())
    return g, [c.run_id for c in chain]


@pytest.mark.parametrize("pretrain", [False, True])
def test_a_failed_required_run_blocks_only_its_dependents_and_is_named(tmp_path, monkeypatch, pretrain, cli):
    """The first run of the chain failed; SLURM cancelled the others' jobs (their dependency can never be met)."""
    g, chain = chain_grid(tmp_path, pretrain)
    first, rest = chain[0], chain[1:]
    g.run(first).failed.write_text(json.dumps({"error": "Traceback\nRuntimeError: out of disk"}))
    jobs = {first: "10", **{r: f"{11 + i}_0" for i, r in enumerate(rest)}}
    append_entries(g.root, [{"run_id": r, "job_id": j} for r, j in jobs.items()])
    sacct = "10|FAILED|None|1:0\n" + "".join(f"{11 + i}_[0]|CANCELLED|Dependency|0:0\n" for i in range(len(rest)))
    monkeypatch.setattr(scheduler, "_call", lambda cmd: SimpleNamespace(
        returncode=0, stdout=sacct if cmd[0] == "sacct" else "", stderr=""))
    status = grid_status(g)
    assert status.runs[first].state == "failed"
    assert [status.runs[r].state for r in rest] == ["blocked"] * len(rest)
    assert status.runs[rest[0]].note == f"waiting on run {first} (failed: RuntimeError: out of disk)"
    assert all(f"run {first} (failed: RuntimeError" in status.runs[r].note for r in rest)  # the cause, named
    out = " ".join(cli("grid", "status", g.root).output.split())
    assert f"blocked {rest[-1]}: waiting on run" in out and "`grid resume` submits both" in out
