"""docs/design.md's worked example, performed: a method is its module plus one registry line."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import robustmtl
from tests.conftest import dry_run_in_fresh_process, read_records

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"
REGISTRY_TABLE = "METHODS: dict[str, MethodPlugin] = {\n"
SMALL = ["--set", "n_train=200", "--set", "n_val=100", "--set", "n_test=100", "--set", "epochs=2", "--threads", "1"]


def example_blocks() -> tuple[str, str]:
    """The module and the registry line, as the page shows them."""
    section = DESIGN.read_text().split("### Worked example: a focal-loss method", 1)[1].split("\n## ", 1)[0]
    module, line = re.findall(r"```python\n(.*?)```", section, re.S)
    return module, line


@pytest.fixture(scope="module")
def package_with_focal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pkg")
    shutil.copytree(Path(robustmtl.__file__).parent, root / "robustmtl", ignore=shutil.ignore_patterns("__pycache__"))
    module, line = example_blocks()
    (root / "robustmtl" / "methods" / "focal.py").write_text(module)
    registry = root / "robustmtl" / "registry.py"
    text = registry.read_text()
    assert text.count(REGISTRY_TABLE) == 1
    registry.write_text(text.replace(REGISTRY_TABLE, REGISTRY_TABLE + line))
    return root


def robustmtl_cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-m", "robustmtl", *args], capture_output=True, text=True, env=env,
                          cwd=root, timeout=300)


def objectives(run_dir: Path) -> list[float]:
    """The training objective of each epoch (the method's `end` term, averaged over its steps)."""
    return [r["terms"]["end"] for r in read_records(run_dir / "metrics.jsonl") if r.get("split") == "train"]


def test_the_example_method_trains_and_is_erm_at_gamma_zero(package_with_focal: Path, tmp_path: Path) -> None:
    focal = robustmtl_cli(package_with_focal, "run", "--method", "focal", "--dataset", "synthetic",
                          "--set", "focal_gamma=0", "--out", str(tmp_path / "focal"), *SMALL)
    assert focal.returncode == 0, focal.stderr
    assert json.loads((tmp_path / "focal" / "config.json").read_text())["method_params"] == {"focal_gamma": 0.0}
    erm = robustmtl_cli(package_with_focal, "run", "--method", "erm", "--dataset", "synthetic",
                        "--out", str(tmp_path / "erm"), *SMALL)
    assert erm.returncode == 0, erm.stderr
    assert objectives(tmp_path / "focal") == pytest.approx(objectives(tmp_path / "erm"), rel=1e-5)
    sharper = robustmtl_cli(package_with_focal, "run", "--method", "focal", "--dataset", "synthetic",
                            "--out", str(tmp_path / "gamma2"), *SMALL)
    assert sharper.returncode == 0, sharper.stderr
    # the same start as ERM, every example's term scaled by (1 - p_y)^2 < 1: the parameter reaches the loss
    assert objectives(tmp_path / "gamma2")[0] < objectives(tmp_path / "erm")[0]


def test_the_example_parameter_is_checked_in_one_line(package_with_focal: Path, tmp_path: Path) -> None:
    bad = robustmtl_cli(package_with_focal, "run", "--method", "focal", "--dataset", "synthetic",
                        "--set", "focal_gamma=-1", "--out", str(tmp_path / "bad"))
    assert bad.returncode != 0 and "focal_gamma" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert not (tmp_path / "bad").exists()


def test_a_grid_plans_the_example_method_without_importing_torch(package_with_focal: Path, tmp_path: Path) -> None:
    spec = tmp_path / "focal.toml"
    spec.write_text('name = "f"\ndatasets = ["synthetic"]\nmethods = ["erm", "focal"]\nseeds = [0, 1]\n'
                    '[method.focal.sweep]\nfocal_gamma = [0.5, 2.0]\n[executor]\nkind = "debug"\n')
    output, heavy = dry_run_in_fresh_process(spec, tmp_path, {**os.environ, "PYTHONPATH": str(package_with_focal)})
    assert "6 runs" in output and heavy == []
