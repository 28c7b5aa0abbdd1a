"""How many CPUs this run was given: what DataLoader workers and the image-cache builder size themselves by."""

from __future__ import annotations

import os

# A parallel pack member's share of its SLURM task's CPUs (train/pack.py sets it): the task's own count
# is the whole pack's, and every member sizing itself by it would oversubscribe the task.
CPUS_ENV = "ROBUSTMTL_CPUS"


def job_cpus() -> int:
    """A pack member's share, else SLURM's `--cpus-per-task`, else the CPUs this process may run on.

    SLURM comes before the affinity mask because a node without cgroup CPU binding lets a job run on
    every core while it was given only its `cpus`: sizing by the mask would take the neighbours' cores.
    """
    for name in (CPUS_ENV, "SLURM_CPUS_PER_TASK"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return len(os.sched_getaffinity(0))
