"""Optional experiment trackers, offline: TensorBoard event files and W&B offline runs.

Both are mirrors of RUN/metrics.jsonl, which stays the only source of truth: every record the loop
appends is passed on as it is written (`records.listening`), and at each start of a run the
records already on disk are brought over first. global_step is the record's optimiser step, so a
preempted and requeued run continues the same curve:

- TensorBoard (RUN/tensorboard/): the event files are rewritten from the JSONL at every start, so a
  step written before a kill is never there twice.
- W&B (RUN/wandb/): offline runs (`wandb sync` uploads them later) whose id is robustmtl's run id
  with resume="allow", so all attempts are one W&B run; the keys already logged are listed in
  RUN/wandb/mirrored.jsonl and not logged again.

Which trackers a run uses is in RUN/trackers.json, written by `grid submit` from `[executor]
trackers`; without it nothing is mirrored.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from robustmtl.errors import UserError
from robustmtl.layout import TRACKERS_FILE, RunDir, read_json, read_jsonl, write_json
from robustmtl.params import did_you_mean
from robustmtl.records import listening

TRACKERS = ("tensorboard", "wandb")
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
WANDB_PROJECT = "robustmtl"


def check(names: Sequence[str], where: str) -> None:
    """Unknown or uninstalled trackers are refused at submit time, not discovered in every job."""
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"{where}: unknown tracker {name!r}{did_you_mean(name, TRACKERS)}; "
                            f"valid: {', '.join(TRACKERS)}")
        if importlib.util.find_spec(name) is None:
            raise UserError(f"{where}: tracker {name!r} needs the `{name}` package, which is not installed; "
                            'pip install "robustmtl[trackers]", or remove it from [executor] trackers')


def write_choice(rd: RunDir, names: Sequence[str]) -> None:
    """Record the run's trackers for its jobs (no file: none)."""
    path = rd.root / TRACKERS_FILE
    if names:
        write_json(path, {"trackers": list(names)})
    else:
        path.unlink(missing_ok=True)


def chosen(rd: RunDir) -> tuple[str, ...]:
    path = rd.root / TRACKERS_FILE
    return tuple(read_json(path, "tracker choice")["trackers"]) if path.exists() else ()


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics record as tracker scalars, tagged `<split>/<metric>`."""
    split = record["split"]
    out = {f"{split}/{k}": float(record[k]) for k in ("avg_acc", "worst_group_acc", "loss") if k in record}
    out.update({f"{split}/group_acc/{g}": float(v) for g, v in record.get("group_acc", {}).items()})
    out.update({f"{split}/terms/{k}": float(v) for k, v in record.get("terms", {}).items()})
    return out


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records on disk; unreadable lines (a torn last one, which the writer repairs) are skipped."""
    return read_jsonl(path)


def record_key(record: dict[str, Any]) -> list[Any]:
    return [record["epoch"], record["step"], record["split"]]


class TensorBoardMirror:
    """RUN/tensorboard/: rewritten from the records on disk, then one scalar per tag and record."""

    def __init__(self, rd: RunDir, existing: list[dict[str, Any]]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = rd.root / TENSORBOARD_DIR
        for old in log_dir.glob("events.out.tfevents.*"):
            old.unlink()
        self.writer = SummaryWriter(log_dir=str(log_dir))
        for record in existing:
            self._write(record)
        self.writer.flush()

    def _write(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=record["step"])

    def __call__(self, record: dict[str, Any]) -> None:
        self._write(record)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbMirror:
    """An offline W&B run under RUN/wandb/ with id = run id; each record key is logged once over all attempts."""

    def __init__(self, rd: RunDir, existing: list[dict[str, Any]]) -> None:
        import wandb

        config = read_json(rd.config, "run config")
        root = rd.root / WANDB_DIR
        root.mkdir(parents=True, exist_ok=True)
        self.logged_path = root / "mirrored.jsonl"
        logged = {tuple(k) for k in read_jsonl(self.logged_path, lambda k: isinstance(k, list))}
        self.run = wandb.init(project=WANDB_PROJECT, id=config["run_id"], name=config["run_id"], resume="allow",
                              dir=str(rd.root), mode="offline", config=config, save_code=False,
                              settings=wandb.Settings(silent=True, console="off"))
        for record in existing:
            if tuple(record_key(record)) not in logged:
                self(record)

    def __call__(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=record["step"])
        with open(self.logged_path, "a") as f:
            f.write(json.dumps(record_key(record)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        import wandb

        self.run.finish()
        wandb.teardown()  # finish() can return before the service has written the run's file; this waits for it


MIRRORS: dict[str, type[TensorBoardMirror | WandbMirror]] = {"tensorboard": TensorBoardMirror, "wandb": WandbMirror}


@contextlib.contextmanager
def mirroring(rd: RunDir) -> Iterator[None]:
    """While training: mirror the run's metrics into the trackers RUN/trackers.json names."""
    with contextlib.ExitStack() as stack:
        existing = read_metrics(rd.metrics)
        for name in chosen(rd):
            mirror = MIRRORS[name](rd, existing)
            stack.callback(mirror.close)
            stack.enter_context(listening(rd.metrics, mirror))
        yield
