"""Where a run's numbers came from: the code, the software versions and the machine of every attempt.

The code is identified by the git commit of the checkout robustmtl was imported from, whether that
tree was dirty (the diff is saved), and a content hash of the package source. A job that runs from a
grid's code snapshot (`grid/snapshot.py`) reads all of that from the snapshot's SOURCE.json, taken at
submit time, instead of asking git about a checkout that may have moved on since.

Each start of a run appends one JSON line to RUN/provenance.jsonl; `code_version()` is the compact
form that every metrics record carries in its `code` field. CPU results are bitwise reproducible only
at a fixed torch thread count (reductions split differently), so each attempt also records the CPU
model and the intra-op and inter-op thread counts it trains with.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import robustmtl
from robustmtl.layout import PROVENANCE, RunDir, read_jsonl

SOURCE_FILE = "SOURCE.json"  # beside a snapshot's robustmtl/ folder: the code's git provenance
DIFF_FILE = "diff.patch"
CODE_ENV = "ROBUSTMTL_CODE"  # set for jobs that must import robustmtl from this snapshot directory
GIT_TIMEOUT_S = 20


def package_root() -> Path:
    """The robustmtl package directory this process imported."""
    return Path(robustmtl.__file__).resolve().parent


def package_files(root: Path) -> list[Path]:
    """The package's source and data files (relative, sorted); bytecode caches are not source."""
    return sorted(p.relative_to(root) for p in root.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def package_hash(root: Path) -> str:
    """SHA-256 over the package's file names and contents: equal source, equal hash, on any machine."""
    digest = hashlib.sha256()
    for rel in package_files(root):
        digest.update(rel.as_posix().encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return digest.hexdigest()


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_source(root: Path) -> dict[str, Any]:
    """commit, dirty, diff and untracked package files of the git checkout that holds `root`.

    `commit` is None when `root` is not tracked by git (an installed package, an unpacked copy).
    Dirty means uncommitted changes to tracked files anywhere in the checkout, or package files git
    does not track (they are code the commit lacks); `diff` is `git diff HEAD`, binary-safe.
    """
    if shutil.which("git") is None or not _git(root, "ls-files", "--", "__init__.py"):
        return {"commit": None, "dirty": None, "diff": None, "untracked": []}
    commit = (_git(root, "rev-parse", "HEAD") or "").strip() or None
    changed = _git(root, "status", "--porcelain", "--untracked-files=no") or ""
    untracked = (_git(root, "ls-files", "--others", "--exclude-standard", "--", ".") or "").split()
    untracked = [u for u in untracked if "__pycache__" not in u]
    diff = _git(root, "diff", "HEAD", "--binary") if changed.strip() else None
    return {"commit": commit, "dirty": bool(changed.strip() or untracked), "diff": diff or None,
            "untracked": untracked}


def version_string(commit: str | None, dirty: bool | None, source_hash: str) -> str:
    """The `code` field: `<commit12>` (clean checkout), `<commit12>+dirty.<hash8>` (uncommitted changes;
    the hash tells different edits apart), or `source:<hash12>` (not a git checkout)."""
    if commit is None:
        return f"source:{source_hash[:12]}"
    return f"{commit[:12]}+dirty.{source_hash[:8]}" if dirty else commit[:12]


@functools.cache
def code_info() -> dict[str, Any]:
    """The code this process runs (computed once: the modules are already imported by then)."""
    root = package_root()
    source_file = root.parent / SOURCE_FILE
    if source_file.exists():  # imported from a grid's code snapshot
        source = json.loads(source_file.read_text())
        diff = root.parent / DIFF_FILE
        return {**source, "code": version_string(source["commit"], source["dirty"], source["source_hash"]),
                "source_path": str(root), "diff_file": str(diff) if diff.exists() else None}
    source = git_source(root)
    source_hash = package_hash(root)
    return {"commit": source["commit"], "dirty": source["dirty"], "source_hash": source_hash, "snapshot": None,
            "untracked": source["untracked"], "code": version_string(source["commit"], source["dirty"], source_hash),
            "source_path": str(root), "diff": source["diff"]}


def code_version() -> str:
    """Compact identity of the code this process runs; see `version_string`."""
    return code_info()["code"]


def check_snapshot() -> None:
    """A job told to run a snapshot (CODE_ENV) must not silently run another copy of robustmtl."""
    expected = os.environ.get(CODE_ENV)
    if expected and Path(expected).resolve() != package_root().parent:
        raise RuntimeError(f"this job should run the code snapshot {expected}, but robustmtl was imported from "
                           f"{package_root()} (something puts it before PYTHONPATH: [executor] python or setup?)")


def _version(dist: str) -> str | None:
    """Installed version without importing (timm imports torchvision, which may be broken on CPU)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _driver_version() -> str | None:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        text = ""
    match = re.search(r"Kernel Module(?: for \S+)?\s+([\d.]+)", text)
    if match:
        return match.group(1)
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=GIT_TIMEOUT_S).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0].strip() if out.strip() else None


def cpu_model() -> str | None:
    """The CPU's model name (x86's `model name`, ARM's `Hardware` / `CPU part` in /proc/cpuinfo), else the
    platform's processor string; None where neither says."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for key in ("model name", "Hardware", "Processor", "cpu model", "CPU part"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if match and match.group(1).strip():
            return match.group(1).strip()
    return platform.processor() or None


def cpu_info(threads: int) -> dict[str, Any]:
    """The CPU and the thread counts a run trains with: `threads` when its options set one (the loop
    applies it), else torch's default for this process (from OMP_NUM_THREADS or the usable cores)."""
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "cpus_usable": usable,
            "torch_threads": threads or torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads()}


def _run_threads(rd: RunDir) -> int:
    """The run's `threads` option (0: torch's default); a run without options asks for none."""
    from robustmtl.config import options_from_dict
    from robustmtl.layout import read_json

    if not rd.options.exists():
        return 0
    return options_from_dict(read_json(rd.options, "run options"), where=str(rd.options)).threads


def machine_info() -> dict[str, Any]:
    """Software versions, CUDA, the driver and the GPUs this process sees."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "hostname": socket.gethostname(), "platform": platform.platform(),
        "python": platform.python_version(), "python_executable": sys.executable,
        "versions": {"robustmtl": robustmtl.__version__, "torch": torch.__version__,
                     "transformers": _version("transformers"), "timm": _version("timm")},
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
        "driver": _driver_version() if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
    }


def _saved_diff(rd: RunDir, info: dict[str, Any]) -> str | None:
    """Path of the dirty tree's diff: the snapshot's, or one saved in the run directory (content-keyed)."""
    if info.get("diff_file"):
        return info["diff_file"]
    if not info.get("diff"):
        return None
    path = rd.root / f"source-{hashlib.sha256(info['diff'].encode()).hexdigest()[:12]}.patch"
    if not path.exists():
        from robustmtl.layout import atomic_write_text

        atomic_write_text(path, info["diff"])
    return str(path)


def read_provenance(rd: RunDir) -> list[dict[str, Any]]:
    """Every attempt's entry, oldest first; unreadable lines (a torn last one) are skipped."""
    return read_jsonl(rd.root / PROVENANCE)


def record(rd: RunDir, job_id: str | None) -> dict[str, Any]:
    """Append this attempt's provenance to RUN/provenance.jsonl (fsynced) and return it; a job that should
    run a code snapshot but imported another copy of robustmtl fails here, after saying so in the entry."""
    from robustmtl.layout import append_durably

    info = code_info()
    entry = {
        "attempt": len(read_provenance(rd)) + 1, "time": time.time(),
        "job_id": job_id, "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
        "code": info["code"], "commit": info["commit"], "dirty": info["dirty"], "diff_file": _saved_diff(rd, info),
        "snapshot": info["snapshot"], "source_hash": info["source_hash"], "source_path": info["source_path"],
        **machine_info(), **cpu_info(_run_threads(rd)),
    }
    append_durably(rd.root / PROVENANCE, json.dumps(entry, sort_keys=True) + "\n")
    check_snapshot()
    return entry
