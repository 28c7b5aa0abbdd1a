"""The metrics JSONL writer: durable appends, no duplicate keys after a resume, torn tails repaired.

Each record is keyed by (epoch, step, split) within a run. A run resumed from a checkpoint replays
the steps since that checkpoint and produces the same records again; those already on disk are
skipped, so the file never holds a key twice.

Listeners (`listening`) see every record a writer in this process appends to a given file, once it
is durable: that is how the optional trackers mirror metrics.jsonl without the loop knowing them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustmtl.provenance import code_version

if TYPE_CHECKING:
    from robustmtl.config import RunConfig

Key = tuple[int, int, str]
Listener = Callable[[dict[str, Any]], None]
_listeners: dict[str, list[Listener]] = {}


@contextlib.contextmanager
def listening(path: Path, listener: Listener) -> Iterator[None]:
    """Call `listener(record)` after each new record any MetricsWriter of this process appends to `path`."""
    key = os.path.abspath(path)
    _listeners.setdefault(key, []).append(listener)
    try:
        yield
    finally:
        _listeners[key].remove(listener)
        if not _listeners[key]:
            del _listeners[key]


def run_record(cfg: RunConfig, *, uses_train_groups: bool, report: bool, epoch: int, step: int,
               time_s: float) -> dict[str, Any]:
    """The fields every record of a run carries before its split and metrics: who it is (the aggregator reads
    these once per run), where in training it was taken, and the code that computed it."""
    return {
        "run_id": cfg.run_id, "setting_id": cfg.setting_id, "method": cfg.method, "dataset": cfg.dataset,
        "model": cfg.model, "seed": cfg.seed, "hparams": cfg.hparams(), "uses_train_groups": uses_train_groups,
        "report": report, "epoch": epoch, "step": step, "time_s": round(time_s, 3), "code": code_version(),
    }


class MetricsWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: set[Key] = set()
        if path.exists():
            self._repair_and_index()

    def _repair_and_index(self) -> None:
        """Drop a torn last line (a kill mid-append) and remember which keys exist."""
        data = self.path.read_bytes()
        good_end = data.rfind(b"\n") + 1
        if good_end != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        for line in data[:good_end].splitlines():
            try:
                rec = json.loads(line)
                self.keys.add((rec["epoch"], rec["step"], rec["split"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue

    def append(self, record: dict[str, Any]) -> bool:
        """Append one record unless its key is already written; flushed and fsynced."""
        key = (record["epoch"], record["step"], record["split"])
        if key in self.keys:
            return False
        line = json.dumps(record, sort_keys=True, allow_nan=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.keys.add(key)
        for listener in _listeners.get(os.path.abspath(self.path), ()):
            listener(record)
        return True


def count_split_records(path: Path, split: str) -> int:
    """How many records of `split` a metrics file holds, without parsing it (a progress display reads this
    often): `MetricsWriter.append` writes each record as one `json.dumps` line, which spells the key so."""
    try:
        return path.read_bytes().count(json.dumps({"split": split})[1:-1].encode())
    except FileNotFoundError:
        return 0
