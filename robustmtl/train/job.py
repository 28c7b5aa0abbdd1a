"""The callable every executor runs: its only argument is the run directory; all else is read from disk.

As a submitit `Checkpointable`, a job that is preempted or times out is requeued with the same run
directory, and the loop resumes from the newest checkpoint there.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import submitit

from robustmtl.layout import RunDir, atomic_write_text


class TrainJob(submitit.helpers.Checkpointable):
    def __call__(self, run_dir: str) -> dict[str, Any]:
        from robustmtl.train.loop import train_run

        rd = RunDir(Path(run_dir))
        try:
            return train_run(rd)
        except Exception as exc:
            write_failure(rd, exc)
            raise

    def checkpoint(self, run_dir: str) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(TrainJob(), run_dir)


def write_failure(rd: RunDir, exc: BaseException) -> None:
    atomic_write_text(rd.failed, json.dumps({
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": traceback.format_exc(),
        "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(),
    }, indent=2) + "\n")
