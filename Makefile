# flowvae: every target sets up what it needs (a fresh clone needs only python3.11).
#   make reproduce   the study (config/config.yaml), figures and summary
#   make quick       a tiny run of every step (config/quick.yaml)
#   make tuning      the tuning stage of the hyperparameter protocol, then adopt its selection
#   make test        the default test suite (about 5 minutes on 2 cores)
#   make test-all    the default suite and the long checks (what CI runs)
#   make mutations   every deliberately wrong formula of tests/mutations.py must fail a test
#   make lint        snakemake --lint, snakefmt, ruff

VENV ?= .venv
PYTHON3 ?= python3.11
CORES ?= 4
PYTHON := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake
# The rules call `python -m flowvae`: put the environment's python first on the PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: reproduce quick tuning test test-all mutations lint report clean

$(PYTHON):
	$(PYTHON3) -m venv $(VENV)
	$(PYTHON) -m pip install -e '.[dev]'

reproduce: $(PYTHON)
	$(SNAKEMAKE) --cores $(CORES)

quick: $(PYTHON)
	$(SNAKEMAKE) --cores $(CORES) --configfile config/quick.yaml

# The tuning stage, then its selection written into config/selected.yaml (read after
# config/config.yaml); `make reproduce` then runs the final comparison at the selected settings.
tuning: $(PYTHON)
	$(SNAKEMAKE) --cores $(CORES) tuning
	$(PYTHON) -m flowvae adopt

# The default suite: everything but the checks of minutes each (marked slow), one test
# file per worker process (pytest-xdist; a file's tests share their fixtures and order).
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= auto
test: $(PYTHON)
	$(PYTHON) -m pytest -m "not slow and not mutations" -n $(TEST_WORKERS) --dist loadfile

# What CI runs: the default suite and the slow checks (the quick protocol, kill and resume,
# --cores 1 against 2, and the SLURM tests (marker slurm), which install and
# start a single-node SLURM where they can (as root, with apt-get) and are skipped, saying why,
# where they cannot).
test-all: $(PYTHON)
	$(PYTHON) -m pytest -m "not mutations"

mutations: $(PYTHON)
	$(PYTHON) tests/mutations.py

lint: $(PYTHON)
	$(SNAKEMAKE) --lint
	$(VENV)/bin/snakefmt --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

report: $(PYTHON)
	$(SNAKEMAKE) --report report.html

# Removes what the pipeline computed, except the committed files (results/metrics.csv,
# results/summary.md, results/selection.csv, results/equal_compute/metrics.csv,
# results/figdata/) and figures; `git clean -fdX` removes every ignored file.
clean:
	rm -rf results/data results/runs results/eval results/logs results/benchmarks \
		results/sweeps results/tuning results/settings results/quick results/budgets.csv \
		results/spikes.csv report.html .snakemake
	[ ! -d results/equal_compute ] || find results/equal_compute -mindepth 1 -maxdepth 1 \
		! -name metrics.csv -exec rm -rf {} +
