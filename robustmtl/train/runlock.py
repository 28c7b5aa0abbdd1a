"""RUN/.train.lock: at most one process trains a run directory at a time.

Two trainers on one run would both append to its metrics.jsonl and write its one checkpoint. The
trainer holds an exclusive fcntl.flock on the lock file for its whole attempt (the pid it writes there
is only for messages). The kernel drops the lock when the process dies, even SIGKILLed, so a dead
trainer never leaves a stale lock, and a requeued SLURM job, which starts after the old process died,
finds it free. On a filesystem without flock (some Lustre mounts) runs train without the lock,
since there is nothing to hold it with, and only the scheduler keeps two trainers apart.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator

from robustmtl.errors import UserError
from robustmtl.layout import TRAIN_LOCK, RunDir

UNSUPPORTED = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP})


class RunBusy(UserError):
    """Another live process is training this run; this one must leave the run's files alone."""


def _path(rd: RunDir) -> str:
    return os.path.abspath(rd.root / TRAIN_LOCK)


def _try_lock(fd: int) -> bool:
    """Take the lock without waiting: True if taken (or flock unsupported here), False if another holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno not in UNSUPPORTED:
            raise
    return True


@contextlib.contextmanager
def holding(rd: RunDir) -> Iterator[None]:
    """Hold the run's lock for the block (train/attempt.py takes it once per attempt); RunBusy when another
    process, or another holder in this one, has it."""
    fd = os.open(_path(rd), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if not _try_lock(fd):
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise RunBusy(f"run {rd.root} is being trained by another process (pid {holder or '?'}); wait for it "
                          "to finish, or stop that process first")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)  # also for DataLoader workers forked with this descriptor
    finally:
        os.close(fd)


def locked(rd: RunDir) -> bool:
    """Whether some process holds the run's lock right now (probed without waiting; for processes that
    do not train, such as the one waiting for cancelled runs to stop)."""
    try:
        fd = os.open(_path(rd), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        if not _try_lock(fd):
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
