# `make demo` and `make test` create .venv if needed and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast stress lint bench bench-check

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ctrain demo

# Two pytest workers, each test file on one of them (its module fixtures built once).
PARALLEL := -n 2 --dist loadfile

# Everything, as CI runs it; the 25 slowest items are listed at the end so regressions show.
test: $(STAMP)
	$(PY) -m pytest $(PARALLEL) --durations=25

# The quick loop: every module, nothing marked slow (under 3 minutes on 2 cores).
test-fast: $(STAMP)
	$(PY) -m pytest $(PARALLEL) -m "not slow" --durations=10

# Repeated runs that catch rare failures, at full count (make test runs them reduced).
stress: $(STAMP)
	CTRAIN_STRESS_RUNS=100 $(PY) -m pytest -m stress --durations=10

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The benchmarks behind the README's Speed table; exits 1 if a figure misses its target.
bench-check: $(STAMP)
	$(PY) scripts/bench_check.py

bench: bench-check
