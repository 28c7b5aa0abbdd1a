"""Mutation testing of the modules that carry the results, one module at a time, with mutmut.

Each module is mutated against only the test files that exercise it ([tool.robustmtl.mutation] in
pyproject.toml), in a scratch copy of the project under build/mutation/<module>/ (mutmut reads its
settings from the working directory's pyproject.toml, so each module gets a copy with its own
[tool.mutmut] table; the checkout is never touched). Mutants reviewed as equivalent (no behaviour can
tell them apart from the original) are listed with their reason in docs/mutation_equivalents.toml and
leave the score's denominator.

    python scripts/mutation.py                 # every configured module (make mutation)
    python scripts/mutation.py --ci            # the bounded CI subset; exit 1 below its threshold
    python scripts/mutation.py robustmtl/metrics.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "build" / "mutation"
EQUIVALENTS = REPO / "docs" / "mutation_equivalents.toml"
KILLED = {1, 3, 36, 24, -24, 152, 255}  # failing tests, pytest internal error, timeouts (mutmut's exit codes)
NOT_RUN = {34, 37, None}  # skipped, caught by a type check, not checked


@dataclass
class Score:
    module: str
    killed: int
    survived: list[str]
    equivalent: list[str]

    @property
    def counted(self) -> int:
        return self.killed + len(self.survived)

    @property
    def value(self) -> float:
        return self.killed / self.counted if self.counted else 1.0

    def line(self) -> str:
        return (f"{self.module}: {self.value:.1%} ({self.killed} killed / {self.counted}; "
                f"{len(self.equivalent)} equivalent left out, {len(self.survived)} survived)")


def settings() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["robustmtl"]["mutation"]


def equivalents() -> dict[str, str]:
    return tomllib.loads(EQUIVALENTS.read_text()) if EQUIVALENTS.exists() else {}


def mutmut_table(module: str, tests: list[str]) -> str:
    # -x: one failing test kills the mutant; -p no:randomly etc. are not installed, so order is the file's.
    return ("\n[tool.mutmut]\n"
            'source_paths = ["robustmtl"]\n'
            f"only_mutate = {json.dumps([module])}\n"
            f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
            'pytest_add_cli_args = ["-x", "-q", "-p", "no:cacheprovider"]\n'
            "use_git_change_detection = false\n")


def work_dir(module: str) -> Path:
    return WORK / module.removesuffix(".py").replace("/", ".")


def prepare(module: str, tests: list[str]) -> Path:
    """A fresh copy of the package, the tests and a pyproject.toml naming this module and its tests."""
    work = work_dir(module)
    shutil.rmtree(work, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "robustmtl", work / "robustmtl", ignore=ignore)
    shutil.copytree(REPO / "tests", work / "tests", ignore=ignore)
    (work / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text() + mutmut_table(module, tests))
    return work


def score(module: str, work: Path, known: dict[str, str]) -> Score:
    meta = json.loads((work / "mutants" / f"{module}.meta").read_text())
    killed, survived, equivalent = 0, [], []
    for name, code in sorted(meta["exit_code_by_key"].items()):
        if code in NOT_RUN:
            continue
        if code in KILLED:
            killed += 1
        elif name in known:
            equivalent.append(name)
        else:
            survived.append(name)
    return Score(module, killed, survived, equivalent)


def run(module: str, tests: list[str], children: int, known: dict[str, str], mutants: list[str]) -> Score:
    """Mutate `module` (only the mutants matching the `mutants` globs, if any) against `tests`."""
    work = prepare(module, tests)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    log = work / "mutmut.log"
    with log.open("w") as out:
        proc = subprocess.run([mutmut, "run", "--max-children", str(children), *mutants], cwd=work, env=env,
                              stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0 or not (work / "mutants" / f"{module}.meta").exists():
        sys.exit(f"mutmut failed on {module} (exit {proc.returncode}); see {log}")
    return score(module, work, known)


def main() -> None:
    conf = settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: all configured, or the CI subset)")
    parser.add_argument("--ci", action="store_true", help="only the CI subset; fail below its threshold")
    parser.add_argument("--children", type=int, default=2, help="mutants tested in parallel")
    parser.add_argument("--tests", nargs="+", help="test files to use instead of the configured ones (one module)")
    parser.add_argument("--report", action="store_true", help="score the last runs again (after editing the "
                        "equivalents) without mutating anything")
    args = parser.parse_args()
    modules = conf["modules"]
    chosen = args.modules or (conf["ci"] if args.ci else list(modules))
    unknown = [m for m in chosen if m not in modules]
    if unknown:
        sys.exit(f"not configured in [tool.robustmtl.mutation.modules]: {', '.join(unknown)}")
    if args.tests and len(chosen) != 1:
        sys.exit("--tests needs exactly one module")
    known = equivalents()
    subset = conf.get("ci_subset", {}) if args.ci else {}
    if args.report:
        scores = [score(m, work_dir(m), known) for m in chosen if (work_dir(m) / "mutants" / f"{m}.meta").exists()]
    else:
        scores = [run(m, args.tests or subset.get(m, {}).get("tests") or modules[m], args.children, known,
                      subset.get(m, {}).get("mutants", [])) for m in chosen]
    for s in scores:
        print(s.line())
        for name in s.survived:
            print(f"  survived: {name}")
        if s.survived:
            print(f"  (see one: cd {work_dir(s.module)} && mutmut show NAME)")
    if args.ci:
        low = [s for s in scores if s.value < conf["ci_threshold"]]
        if low:
            sys.exit(f"mutation score below {conf['ci_threshold']:.0%}: {', '.join(s.module for s in low)}")


if __name__ == "__main__":
    main()
