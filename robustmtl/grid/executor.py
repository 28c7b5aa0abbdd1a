"""[executor] settings: where and how a grid's runs execute (never part of a run's identity)."""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustmtl.config import Execution, RunOptions
from robustmtl.errors import UserError
from robustmtl.params import at_least, coerce, did_you_mean, one_of, positive

KINDS = ("auto", "local", "slurm", "debug")


@dataclass(frozen=True)
class ExecutorSettings(Execution):
    """[executor]: where the runs execute (these fields), and how each does (`Execution`'s).

    A field with `help` is also an option of `grid submit` and `grid resume` that overrides the file
    (`cli_grid.GRID_OVERRIDES`), named after the field unless `cli_names` says otherwise."""

    kind: str = field(default="auto", metadata={**one_of(*KINDS), "cli_names": ("--executor",),
                                                "help": "auto | local | slurm | debug (overrides the file)."})
    parallel: int = field(default=0, metadata=at_least(0))
    partition: str | None = field(default=None, metadata={"help": "SLURM partition (overrides the grid file)."})
    account: str | None = field(default=None, metadata={"help": "SLURM account (overrides the grid file)."})
    qos: str | None = field(default=None, metadata={"help": "SLURM QOS (overrides the grid file)."})
    constraint: str | None = None
    gpus: int = field(default=0, metadata={**at_least(0), "help": "GPUs per run (overrides the grid file)."})
    cpus: int = field(default=1, metadata=positive())
    mem_gb: float | None = None
    # SLURM sends the warning signal up to a minute early: in a 1-minute job it can come before Python catches it
    timeout_min: int = field(default=60, metadata={**at_least(2), "cli_names": ("--time", "--timeout"),
                                                   "help": "Job time limit in minutes (overrides the grid file)."})
    array_parallelism: int = field(default=0, metadata={
        **at_least(0), "help": "Array tasks running at once (overrides the grid file; 0: no limit)."})
    max_preemptions: int = field(default=20, metadata=at_least(0))
    max_timeouts: int = field(default=3, metadata=at_least(0))
    max_crashes: int = field(default=2, metadata=at_least(0))
    pack: int = field(default=1, metadata={**positive(),
                                           "help": "Runs per SLURM array task (overrides the grid file's pack)."})
    pack_mode: str = field(default="sequential", metadata=one_of("sequential", "parallel"))
    # runs of a parallel pack that share one GPU (`gpus = 1`): each may use 1/runs_per_gpu of its memory
    runs_per_gpu: int = field(default=1, metadata=positive())
    extra: tuple[str, ...] = ()
    python: str | None = None  # command that starts the jobs' interpreter (default: the one that submits)
    setup: tuple[str, ...] = ()  # shell lines run before each job (module load, source venv/bin/activate)
    trackers: tuple[str, ...] = ()  # mirrors of metrics.jsonl: "tensorboard", "wandb"

    def resolved_kind(self) -> str:
        if self.kind == "auto":
            return "slurm" if shutil.which("sbatch") else "local"
        if self.kind == "slurm" and not shutil.which("sbatch"):
            raise UserError("executor kind 'slurm' needs SLURM's `sbatch` on PATH (not found); "
                            "run on a login node, or use --executor local")
        return self.kind

    def check_python(self, where: str) -> None:
        """A local job's `python` must start here, or every run would fail before training, logging nowhere
        useful; a bare name is left to `setup` lines, which may put it on PATH (module load, activate)."""
        if self.python is None:
            return
        try:
            program = shlex.split(self.python)[0]
        except (ValueError, IndexError):
            raise UserError(f"{where}: [executor] python {self.python!r} is not a command") from None
        if shutil.which(program) is None and ("/" in program or not self.setup):
            raise UserError(f"{where}: [executor] python {program!r} does not exist or is not executable"
                            + ("" if "/" in program else " (not on PATH)"))

    def local_gpu_shares(self) -> list[str]:
        """The CUDA_VISIBLE_DEVICES values a local grid hands its runs, one run per share at a time.

        One share per GPU this process may use ($CUDA_VISIBLE_DEVICES, else every GPU torch counts);
        a device pinned as `cuda:N` gets one share holding them all (the index must mean the same in
        the run); none on the CPU. submitit's local executor would otherwise hide every GPU from runs.
        """
        if self.device == "cpu":
            return []
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            gpus = [d.strip() for d in visible.split(",") if d.strip()]
        else:
            import torch

            gpus = [str(i) for i in range(torch.cuda.device_count())]
        if gpus and self.device.startswith("cuda:"):
            return [",".join(gpus)]
        return gpus

    def local_parallel(self, gpu_shares: int = 0) -> int:
        """Runs at once on this machine: `parallel`, else one per GPU share, else one per `threads` cores."""
        if self.parallel:
            return self.parallel
        if gpu_shares:
            return gpu_shares
        return max(1, (os.cpu_count() or 1) // max(self.threads, 1))

    def run_options(self, data_root: str | None, kind: str, gpu_shares: int = 0) -> RunOptions:
        """Each run's options: local runs that share the machine take one thread each unless `threads` says."""
        threads = self.threads or (1 if kind == "local" and self.local_parallel(gpu_shares) > 1 else 0)
        return RunOptions.of(self, data_root, threads=threads)


def executor_settings(table: dict[str, Any], where: str, overrides: dict[str, Any] | None = None) -> ExecutorSettings:
    """An [executor] table, validated, with the command line's `overrides` (None values: keep the table's)."""
    settings = with_overrides(ExecutorSettings(**_checked(table, where)), overrides, where)
    if settings.runs_per_gpu > 1 and (settings.pack_mode != "parallel" or settings.gpus != 1):
        raise UserError(f"{where}: [executor] runs_per_gpu = {settings.runs_per_gpu} shares one GPU between the runs "
                        f"of a parallel pack: it needs pack_mode = \"parallel\" and gpus = 1 (got pack_mode = "
                        f"{settings.pack_mode!r}, gpus = {settings.gpus})")
    return settings


def with_overrides(settings: ExecutorSettings, overrides: dict[str, Any] | None, where: str) -> ExecutorSettings:
    """`settings` with the command line's non-None values, validated like the file's."""
    chosen = {k: v for k, v in (overrides or {}).items() if v is not None}
    return dataclasses.replace(settings, **_checked(chosen, where)) if chosen else settings


def _checked(values: dict[str, Any], where: str) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(ExecutorSettings)}
    clean = {}
    for key, value in values.items():
        if key not in known:
            raise UserError(f"{where}: unknown [executor] key `{key}`{did_you_mean(key, known)}; "
                            f"valid: {', '.join(sorted(known))}")
        clean[key] = coerce(ExecutorSettings, key, value, f"{where} [executor]")
        _check_printable(key, clean[key], where)
    return clean


def _check_printable(key: str, value: Any, where: str) -> None:
    """Executor strings become lines of an sbatch script: a newline or control character could add directives."""
    for text in value if isinstance(value, tuple) else (value,):
        if isinstance(text, str) and any(not c.isprintable() for c in text):
            raise UserError(f"{where}: [executor] {key} contains a newline or control character: {text!r}")


def data_root_for(configured: str | None) -> str | None:
    """A grid's [dataset.<name>] data_root, else $ROBUSTMTL_DATA; absolute so jobs find it from anywhere."""
    root = configured or os.environ.get("ROBUSTMTL_DATA")
    return str(Path(root).expanduser().resolve()) if root else None
