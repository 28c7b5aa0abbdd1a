"""A grid directory on a tiny real filesystem: full, filling up mid-submit, read-only.

Each case is one clear line (exit 2) before anything is submitted, and what was written is a state
that the same command completes once there is room again. Needs root and tmpfs (as on CI here);
skipped where mounting is not allowed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from robustmtl.layout import GridDir
from tests.conftest import tiny_grid, write_spec

SPEC = tiny_grid("disk", ["erm"], [0, 1, 2, 3, 4, 5], defaults={"epochs": 1, "n_train": 100, "n_val": 50, "n_test": 50})


def mount(point: Path, options: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True, capture_output=True)


@pytest.fixture
def tiny_fs(tmp_path):
    point = tmp_path / "fs"
    point.mkdir()
    try:
        mount(point, "size=16k")
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc})")
    yield point
    subprocess.run(["umount", "-l", str(point)], check=False)


def submit(spec: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robustmtl", "grid", "submit", str(spec), "--out", str(out)],
                          capture_output=True, text=True)


def assert_one_line(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert fragment in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow  # several seconds: left out of make test-fast
def test_filling_up_mid_submit_is_one_line_and_resumable(tiny_fs, tmp_path):
    spec = write_spec(tmp_path / "g.toml", SPEC)
    out = tiny_fs / "grid"
    assert_one_line(submit(spec, out), "No space left on device")
    grid = GridDir(out)
    assert 0 < len(grid.run_ids()) < 6, "the filesystem should fill up partway through laying out the runs"
    assert not any(grid.run(r).done.exists() for r in grid.run_ids())
    subprocess.run(["mount", "-o", "remount,size=8m", str(tiny_fs)], check=True)
    assert submit(spec, out).returncode == 0
    assert len(grid.run_ids()) == 6 and all(grid.run(r).done.exists() for r in grid.run_ids())


def test_full_and_read_only_are_refused_before_writing(tiny_fs, tmp_path):
    spec = write_spec(tmp_path / "g.toml", SPEC)
    (tiny_fs / "filler").write_bytes(b"\0" * 12 * 1024)
    with open(tiny_fs / "filler", "ab") as f, pytest.raises(OSError):
        f.write(b"\0" * 64 * 1024)
        f.flush()
    assert_one_line(submit(spec, tiny_fs / "full"), "No space left on device")
    (tiny_fs / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    assert_one_line(submit(spec, tiny_fs / "ro"), "Read-only file system")
    assert not [p for p in tiny_fs.rglob("*") if p.is_file()], "nothing may be written on a full or read-only disk"
