"""The metrics file writer: one line per (epoch, step, split) however often a resumed run replays a step, a torn
last line (a kill mid-append) dropped on reopen, and listeners told of each new record once it is written."""

from __future__ import annotations

import json
import math

from robustmtl.records import MetricsWriter, count_split_records, listening


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_key_is_written_once_in_append_order_with_sorted_keys(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path)
    assert writer.append({"split": "val", "epoch": 1, "step": 5, "acc": 0.5}) is True
    assert writer.append({"epoch": 1, "step": 5, "split": "val", "acc": 0.9}) is False  # same key: kept as first
    assert writer.append({"epoch": 1, "step": 5, "split": "test", "acc": 0.7}) is True
    assert writer.append({"epoch": 2, "step": 5, "split": "val", "acc": 0.6}) is True
    assert writer.append({"epoch": 1, "step": 6, "split": "val", "acc": 0.8}) is True
    assert [r["acc"] for r in lines(path)] == [0.5, 0.7, 0.6, 0.8]
    assert path.read_text().splitlines()[0] == '{"acc": 0.5, "epoch": 1, "split": "val", "step": 5}'


def test_a_reopened_file_remembers_its_keys(tmp_path):
    path = tmp_path / "metrics.jsonl"
    MetricsWriter(path).append({"epoch": 1, "step": 5, "split": "val", "acc": 0.5})
    again = MetricsWriter(path)
    assert again.keys == {(1, 5, "val")}
    assert again.append({"epoch": 1, "step": 5, "split": "val", "acc": 0.9}) is False
    assert again.append({"epoch": 1, "step": 5, "split": "train", "acc": 0.9}) is True
    assert [r["split"] for r in lines(path)] == ["val", "train"]


def test_a_torn_last_line_is_cut_and_unreadable_lines_do_not_stop_the_index(tmp_path):
    path = tmp_path / "metrics.jsonl"
    good = json.dumps({"epoch": 1, "step": 5, "split": "val", "acc": 0.5})
    other = json.dumps({"epoch": 2, "step": 9, "split": "val", "acc": 0.5})
    path.write_text(good + "\n" + "not json\n" + '{"no": "key"}\n' + "[1, 2]\n" + other + "\n" + '{"epoch": 3, "st')
    writer = MetricsWriter(path)
    assert path.read_text().endswith(other + "\n")
    assert writer.keys == {(1, 5, "val"), (2, 9, "val")}
    writer.append({"epoch": 3, "step": 12, "split": "val", "acc": 0.7})
    assert path.read_text().splitlines()[-1] == json.dumps({"acc": 0.7, "epoch": 3, "split": "val", "step": 12})


def test_a_file_ending_in_a_newline_is_left_as_it_is(tmp_path):
    path = tmp_path / "metrics.jsonl"
    text = json.dumps({"epoch": 1, "step": 5, "split": "val"}) + "\n"
    path.write_text(text)
    MetricsWriter(path)
    assert path.read_text() == text


def test_nan_is_written_and_read_back(tmp_path):
    path = tmp_path / "metrics.jsonl"
    MetricsWriter(path).append({"epoch": 1, "step": 5, "split": "val", "acc": math.nan})
    assert math.isnan(lines(path)[0]["acc"])


def test_listeners_see_each_new_record_of_their_file_while_listening(tmp_path):
    path, other = tmp_path / "metrics.jsonl", tmp_path / "other.jsonl"
    seen, also, elsewhere = [], [], []
    writer = MetricsWriter(path)
    with listening(tmp_path / "." / "metrics.jsonl", seen.append), listening(path, also.append), \
            listening(other, elsewhere.append):
        writer.append({"epoch": 1, "step": 5, "split": "val"})
        writer.append({"epoch": 1, "step": 5, "split": "val"})  # a replayed key is no new record
        MetricsWriter(path).append({"epoch": 2, "step": 5, "split": "val"})  # any writer of the file
    writer.append({"epoch": 3, "step": 5, "split": "val"})
    assert [r["epoch"] for r in seen] == [1, 2] and also == seen and elsewhere == []
    with listening(path, seen.append):
        writer.append({"epoch": 4, "step": 5, "split": "val"})
    assert [r["epoch"] for r in seen] == [1, 2, 4]


def test_split_records_are_counted_as_the_writer_spells_them(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert count_split_records(path, "val") == 0  # no file yet: nothing evaluated
    writer = MetricsWriter(path)
    for epoch in (1, 2, 3):
        for split in ("train", "val", "test"):
            writer.append({"epoch": epoch, "step": 10 * epoch, "split": split, "avg_acc": 0.5,
                           "note": "split val"})
    writer.append({"epoch": 3, "step": 30, "split": "val"})  # a duplicate key is not written again
    assert count_split_records(path, "val") == 3
    assert count_split_records(path, "test") == 3
    assert count_split_records(path, "train") == 3
