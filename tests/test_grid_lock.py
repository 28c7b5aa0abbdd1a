"""Two `grid submit`s on one grid directory: the second waits briefly, then refuses with one clear line."""

from __future__ import annotations

import subprocess
import sys

from robustmtl.grid import lock
from robustmtl.layout import SUBMIT_LOCK
from tests.conftest import tiny_grid, write_spec

SPEC = tiny_grid("locked", ["erm"], [0], defaults={"epochs": 1, "n_train": 100, "n_val": 50, "n_test": 50})

HOLDER = """
import sys, time
from pathlib import Path
from robustmtl.grid.lock import submit_lock
with submit_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_second_submit_is_refused_while_the_first_holds_the_lock(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "WAIT_S", 0.5)
    spec = write_spec(tmp_path / "g.toml", SPEC)
    out = tmp_path / "grid"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused = cli("grid", "submit", spec, "--out", out, ok=False)
        assert refused.exit_code == 2, refused.output
        assert f"another grid submit is running on {out}" in refused.output
        assert "Traceback" not in refused.output and not (out / "grid.toml").exists()
    finally:
        holder.kill()  # a killed holder releases the lock (the file stays)
        holder.wait()
    assert (out / SUBMIT_LOCK).exists()
    done = cli("grid", "submit", spec, "--out", out)
    assert "0 already done, 1 to run" in done.output
