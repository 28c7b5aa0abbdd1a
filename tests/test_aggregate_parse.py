"""metrics.jsonl bytes to records: the line splitter, the schema checks of both parse paths, and the issue
lines a user reads when a file is torn, corrupt or holds another run's records."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from robustmtl.aggregate.parse import (
    PARSE_SCHEMA,
    RunFile,
    _valid_meta,
    _valid_record,
    drop_torn_tail,
    iter_lines,
    own_records,
    parse_files,
    parse_slow,
)

META = {"run_id": "r1", "setting_id": "s", "method": "erm", "dataset": "synthetic", "model": "mlp", "seed": 0,
        "hparams": {}, "uses_train_groups": False, "report": True}


def record(epoch: int = 1, run_id: str = "r1", **extra: object) -> dict:
    return {**META, "run_id": run_id, "epoch": epoch, "step": 10 * epoch, "split": "val", "avg_acc": 0.5,
            "worst_group_acc": 0.25, **extra}


def lines(*records: object) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def run_file(run_id: str, data: bytes, index: int = 0) -> RunFile:
    return RunFile(grid_dir=Path("grid"), run_dir=f"grid/runs/{run_id}", complete=True, data=data, index=index)


def records_of(*files: RunFile) -> list[dict]:
    table = pa.concat_tables(parse_files(list(files)))
    return own_records(table, files, {f.run_dir for f in files}).to_dict("records")


@pytest.mark.parametrize(("data", "expected"), [
    (b"a\nb", [b"a", b"b"]),  # a last line without newline
    (b"\nx\n", [b"", b"x"]),  # a newline at the very start
    (b"a\n", [b"a"]),  # no empty line after the final newline
    (b"", []),
])
def test_iter_lines_splits_like_the_file_reads(data, expected):
    assert list(iter_lines(data)) == expected


@pytest.mark.parametrize(("field", "value"), [
    ("seed", "3"), ("seed", 1.5), ("seed", None), ("run_id", 3), ("report", "yes"), ("hparams", [])])
def test_metadata_of_the_wrong_type_is_no_metadata(field, value):
    assert _valid_meta(json.dumps(META).encode()) == META
    assert _valid_meta(json.dumps({**META, field: value}).encode()) is None


def test_a_boolean_seed_is_no_integer():
    assert _valid_meta(json.dumps({**META, "seed": True}).encode()) is None


@pytest.mark.parametrize("change", [
    {"epoch": "1"}, {"epoch": True}, {"step": 2.0}, {"split": 3}, {"run_id": None}, {"avg_acc": "0.5"},
    {"worst_group_acc": False}, {"code": 5}])
def test_the_slow_path_schema_check_refuses_each_mistyped_field(change):
    assert _valid_record(record())
    assert _valid_record(record(code="abc123"))
    assert not _valid_record({**record(), **change})


@pytest.mark.parametrize("value", [[1, 2], "text", 3, None])
def test_a_line_that_is_no_object_is_no_record(value):
    assert not _valid_record(value)


def test_a_torn_last_line_is_dropped_with_its_issue():
    f = run_file("r1", lines(record()) + b'{"run_id": "r1", "ep')
    drop_torn_tail(f)
    assert f.data == lines(record()) and f.issues == ["truncated last line dropped"]


def test_the_slow_path_counts_bad_lines_from_line_one_and_reads_past_blank_lines():
    # line 2 is not JSON and line 4 is JSON of the wrong shape; the records after the blank line still count
    f = run_file("r1", lines(record(1), b"{oops", b"", {**record(2), "epoch": "two"}, record(3)))
    table = parse_slow(f)
    assert f.issues == ["2 corrupt line(s) skipped (first at line 2)"]
    assert table.column("epoch").to_pylist() == [1, 3, None]  # the last row is the file's sentinel


def test_the_slow_path_names_the_first_line_of_the_wrong_shape():
    f = run_file("r1", lines(record(1), {**record(2), "split": None}))
    parse_slow(f)
    assert f.issues == ["1 corrupt line(s) skipped (first at line 2)"]


def test_the_slow_path_keeps_mechanism_fields_as_floats_and_blanks_unreadable_ones():
    f = run_file("r1", lines({**record(1), "probe_y_acc": 0.75, "active_units": 3, "avg_acc": 1},
                             {**record(2), "probe_y_acc": "high"}))
    rows = parse_slow(f).to_pylist()[:2]
    assert [r["probe_y_acc"] for r in rows] == [0.75, None]
    assert rows[0]["active_units"] == 3.0 and rows[0]["avg_acc"] == 1.0
    assert f.issues == []


def test_both_parse_paths_give_the_same_records():
    data = lines(record(1, probe_y_acc=0.5), record(2, code="abc"))
    fast = records_of(run_file("r1", data))
    slow = run_file("r1", data + b"{not json\n")
    slow_records = records_of(slow)
    assert slow.issues == ["1 corrupt line(s) skipped (first at line 3)"]
    assert json.dumps(fast, default=str) == json.dumps(slow_records, default=str)


@pytest.mark.parametrize("missing", ["run_id", "epoch", "step", "split", "avg_acc", "worst_group_acc"])
def test_a_record_lacking_a_key_field_or_a_metric_is_skipped_with_its_issue(missing):
    incomplete = {k: v for k, v in record(2).items() if k != missing}
    f = run_file("r1", lines(record(1), incomplete))
    kept = records_of(f)
    assert [r["epoch"] for r in kept] == [1]
    assert f.issues == ["1 incomplete record(s) skipped (without run_id, epoch, step, split, avg_acc or "
                        "worst_group_acc)"]


def test_records_of_other_runs_are_named_in_one_issue_of_the_file_they_were_in():
    mine, other = run_file("r1", lines(record(1), record(run_id="r9"), record(run_id="r7")), index=0), \
        run_file("r2", lines(record(run_id="r2")), index=1)
    kept = records_of(mine, other)
    assert sorted((r["run_id"], r["epoch"]) for r in kept) == [("r1", 1), ("r2", 1)]
    assert mine.issues == ["2 record(s) of other runs (r7, r9) dropped: the file belongs to run r1"]
    assert other.issues == []


def test_no_files_give_no_records():
    assert own_records(PARSE_SCHEMA.empty_table(), [], set()).empty
