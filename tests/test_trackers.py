"""Trackers mirror metrics.jsonl: TensorBoard event files (read back with tensorboard's own reader)
and W&B offline runs (read back from the .wandb files), continuous and without duplicates across an
interruption and resume."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from robustmtl import trackers
from robustmtl.config import RunOptions, build_config
from robustmtl.errors import UserError
from robustmtl.layout import RunDir
from robustmtl.records import MetricsWriter, listening
from robustmtl.rundir import prepare_run
from robustmtl.train.loop import Interrupted, train_run
from tests.conftest import TINY, read_records, tiny_grid, write_spec


def make_run(tmp_path: Path, names: tuple[str, ...]) -> RunDir:
    cfg = build_config("mtl_l1", "synthetic", 0, None, {**TINY, "eval_every": 4}, where="test")
    rd = RunDir(tmp_path / cfg.run_id)
    prepare_run(rd, cfg, RunOptions(threads=1, checkpoint_every=3))
    trackers.write_choice(rd, names)
    return rd


def train_interrupted(rd: RunDir, stop_at_call: int) -> None:
    """Train with the trackers on, stopped once at a step boundary, then resumed to the end."""
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] == stop_at_call

    with pytest.raises(Interrupted), trackers.mirroring(rd):
        train_run(rd, stop_requested=stop)
    with trackers.mirroring(rd):
        train_run(rd)


def expected_scalars(rd: RunDir) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for record in read_records(rd.metrics):
        for tag, value in trackers.scalars(record).items():
            out.setdefault(tag, []).append((record["step"], value))
    return out


def test_tensorboard_curves_equal_the_jsonl_across_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rd = make_run(tmp_path, ("tensorboard",))
    train_interrupted(rd, stop_at_call=11)  # after an eval_every record, before the epoch ends
    acc = EventAccumulator(str(rd.root / "tensorboard"))
    acc.Reload()
    got = {tag: [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    expected = expected_scalars(rd)
    assert {"val/worst_group_acc", "test/avg_acc", "train/terms/reg", "val/group_acc/3"} <= set(expected)
    assert got == expected  # every step once, in order: the curve continues instead of restarting
    assert len(list((rd.root / "tensorboard").glob("events.out.tfevents.*"))) == 1


def wandb_history(path: Path) -> tuple[set[str], list[str], list[dict[str, str]]]:
    """The run ids, record types and history rows of a .wandb file (LevelDB-style log records of
    wandb's protobufs)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, parts = 32768, 7, b""
    run_ids: set[str] = set()
    kinds: list[str] = []
    rows: list[dict[str, str]] = []
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # block trailer or padding
            pos += left
            continue
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            kinds.append(record.WhichOneof("record_type") or "?")
            if kinds[-1] == "run" and record.run.run_id:  # an update record may leave the id out
                run_ids.add(record.run.run_id)
            elif kinds[-1] == "history":
                rows.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    return run_ids, kinds, rows


def test_wandb_offline_run_is_one_run_with_every_step_once(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    rd = make_run(tmp_path, ("wandb",))
    train_interrupted(rd, stop_at_call=11)
    files = sorted((rd.root / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2  # one per attempt
    got: dict[str, list[tuple[int, float]]] = {}
    for path in files:
        run_ids, kinds, rows = wandb_history(path)
        assert path.name == f"run-{rd.root.name}.wandb" and run_ids <= {rd.root.name}, (path, run_ids, kinds)
        for row in rows:
            for tag, value in row.items():
                if not tag.startswith("_"):
                    got.setdefault(tag, []).append((int(row["_step"]), pytest.approx(float(value), rel=1e-6)))
    assert got == expected_scalars(rd)


def test_listeners_see_each_new_record_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    MetricsWriter(path).append({"epoch": 1, "step": 5, "split": "val", "x": 1})
    seen: list[dict] = []
    writer = MetricsWriter(path)
    with listening(path, seen.append):
        writer.append({"epoch": 1, "step": 5, "split": "val", "x": 1})  # already on disk
        writer.append({"epoch": 1, "step": 5, "split": "test", "x": 2})
    writer.append({"epoch": 2, "step": 10, "split": "val", "x": 3})  # no longer listening
    assert seen == [{"epoch": 1, "step": 5, "split": "test", "x": 2}]


def test_unknown_or_missing_tracker_is_one_line_at_submit(tmp_path, cli, monkeypatch):
    spec = write_spec(tmp_path / "g.toml", tiny_grid("g", ["erm"], [0], executor={"trackers": ["tensorbord"]}))
    result = cli("grid", "submit", spec, "--out", tmp_path / "g", ok=False)
    assert result.exit_code == 2 and "did you mean 'tensorboard'" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "g").exists()

    real_find_spec = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real_find_spec(name, *a))
    spec = write_spec(tmp_path / "w.toml", tiny_grid("w", ["erm"], [0], executor={"trackers": ["wandb"]}))
    result = cli("grid", "submit", spec, "--out", tmp_path / "w", ok=False)
    assert result.exit_code == 2 and "robustmtl[trackers]" in result.output
    assert not (tmp_path / "w").exists()
    with pytest.raises(UserError, match="needs the `wandb` package"):
        trackers.check(["wandb"], "here")


def test_grid_submit_turns_trackers_on_per_run(tmp_path, cli):
    spec = write_spec(tmp_path / "g.toml", tiny_grid("g", ["erm"], [0], executor={"trackers": ["tensorboard"]}))
    cli("grid", "submit", spec, "--out", tmp_path / "g")
    (run_id,) = [p.name for p in (tmp_path / "g" / "runs").iterdir()]
    rd = RunDir(tmp_path / "g" / "runs" / run_id)
    assert trackers.chosen(rd) == ("tensorboard",)
    assert list((rd.root / "tensorboard").glob("events.out.tfevents.*"))
