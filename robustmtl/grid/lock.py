"""One `grid submit`/`grid resume` at a time per grid directory, so no run is queued or executed twice.

The lock is fcntl.flock on GRID_DIR/.submit.lock: the kernel drops it when the holder exits, even
killed, so a stale lock file never blocks anyone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from robustmtl.errors import UserError
from robustmtl.layout import SUBMIT_LOCK

WAIT_S = 5.0
POLL_S = 0.2


@contextlib.contextmanager
def submit_lock(grid_root: Path) -> Iterator[None]:
    """Hold the grid's submit lock; wait up to WAIT_S for another holder, then refuse clearly."""
    grid_root.mkdir(parents=True, exist_ok=True)
    fd = os.open(grid_root / SUBMIT_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                    raise UserError(f"another grid submit is running on {grid_root} (pid {holder or '?'}); "
                                    "wait for it to finish") from None
                time.sleep(POLL_S)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing releases the lock


def submit_running(grid_root: Path) -> bool:
    """Whether a `grid submit`/`grid resume` holds the grid's lock now: a local one runs until its runs end.

    Probed (taken and let go at once): a submit that comes in that instant waits for the lock, it is not refused.
    """
    try:
        fd = os.open(grid_root / SUBMIT_LOCK, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # no flock on this filesystem: nothing can hold it
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False
