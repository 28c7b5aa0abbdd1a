"""A pause that a test holds a long operation at, so an injected event lands where the test says it does.

A test that signals, kills or times out a run must know the run is still at work when the event arrives,
on a machine ten times faster than the one it was written on as well as on a slower one. So the test
names a file in $ROBUSTMTL_TEST_PAUSE and writes an integer N into it: an operation that counts its
progress (a training run its steps, an archive's unpacking its members) waits once it has counted N,
at a point where stopping is safe, until the file holds a larger number or is removed. A line `KEY N`
holds only the operation KEY (one run of several) and takes precedence over a bare `N`. While it waits
it notes its count in `<file>.<key>` (the key: a run id, `unpack`), which the test reads to know where
it stands. A stop request (a preemption signal) ends the wait at once. Unset, as in every real run,
the pause costs one dictionary lookup.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

PAUSE_ENV = "ROBUSTMTL_TEST_PAUSE"
POLL_S = 0.02


def pause_file() -> Path | None:
    value = os.environ.get(PAUSE_ENV, "")
    return Path(value) if value else None


def pause_limits(path: Path) -> dict[str, int]:
    """The file's limits by key (`""`: every operation without a line of its own); none when it is missing."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    limits = {}
    for line in lines:
        fields = line.split()
        if fields and fields[-1].lstrip("-").isdigit() and len(fields) <= 2:
            limits[fields[0] if len(fields) == 2 else ""] = int(fields[-1])
    return limits


def pause_limit(path: Path, key: str = "") -> int | None:
    """The count at which operation `key` waits; None when the file is missing or names no count for it."""
    limits = pause_limits(path)
    return limits.get(key, limits.get(""))


def note_path(path: Path, key: str) -> Path:
    return path.with_name(f"{path.name}.{key}")


def held_at(path: Path, key: str) -> int | None:
    """The count at which operation `key` last waited, from its note; None before it ever waited."""
    return pause_limit(note_path(path, key))


def wait_here(key: str, count: int, stop_requested: Callable[[], bool] | None = None) -> bool:
    """Wait while the pause file asks operations that have counted `count` to wait; True when a stop was
    requested (before or during the wait), so the caller stops as it would at this point anyway."""
    path = pause_file()
    if path is not None:
        noted = False
        while (limit := pause_limit(path, key)) is not None and count >= limit:
            if not noted:
                note = note_path(path, key)
                temp = note.with_name(f".{note.name}.{os.getpid()}")
                temp.write_text(f"{count}\n")
                temp.replace(note)
                noted = True
            if stop_requested is not None and stop_requested():
                return True
            time.sleep(POLL_S)
    return stop_requested is not None and stop_requested()
