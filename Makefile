# `make demo` and `make test` create .venv if needed and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast stress lint docs bench bench-check ray-package mutate

# A strict editable install: build/__editable__.*/ holds links to the checkout's files laid out
# as the package `continual_trainer`, so type checkers and IDEs resolve every import (the default
# editable mode maps the folders with an import hook they cannot follow). Adding, moving or
# removing a module changes its folder, which reinstalls.
$(STAMP): pyproject.toml data trainer strategies continual_trainer cluster
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# tensorflow-cpu (the base dependency before the GPU extra) shares its files with tensorflow
	if $(PY) -m pip show --quiet tensorflow-cpu 2>/dev/null; then $(PY) -m pip uninstall --quiet -y tensorflow-cpu tensorflow; fi
	$(PY) -m pip install --quiet -e '.[dev]' --config-settings editable_mode=strict
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ctrain demo

# Two pytest workers, each test file on one of them (its module fixtures built once).
PARALLEL := -n 2 --dist loadfile

# Everything, as CI runs it; the 25 slowest items are listed at the end so regressions show.
test: $(STAMP)
	$(PY) -m pytest $(PARALLEL) --durations=25

# The quick loop: every module, nothing marked slow and no Ray (under 3 minutes on 2 cores).
test-fast: $(STAMP)
	$(PY) -m pytest $(PARALLEL) -m "not slow and not ray" --durations=10

# Repeated runs that catch rare failures, at full count (make test runs them reduced).
stress: $(STAMP)
	CTRAIN_STRESS_RUNS=100 $(PY) -m pytest -m stress --durations=10

# Mutation testing of the modules that hold the rules (scripts/mutate.py; not in `make test`:
# it takes about half an hour here). Prints each module's score; docs/development.md records the last.
mutate: $(STAMP)
	$(PY) scripts/mutate.py

# Style, then types: mypy reads the installed package from build/ (in the checkout's root,
# `continual_trainer/` alone would hide its sibling folders).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	cd build && $(abspath $(PY)) -m mypy --config-file ../pyproject.toml -p continual_trainer

# The documentation site (docs/, mkdocs.yml) into build/site; --strict: a broken link, a page
# missing from the navigation or a docstring mkdocstrings cannot read fails the build, as in CI.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# The package as one folder, build/ray-package/continual_trainer, for a Ray job's runtime
# environment (`py_modules`) on a cluster whose nodes have the dependencies but not this project.
ray-package: $(STAMP)
	rm -rf build/ray-package
	$(PY) -m pip install --quiet --no-deps --target build/ray-package .

# The benchmarks behind the Speed page (docs/speed.md); exits 1 if a figure misses its target.
bench-check: $(STAMP)
	$(PY) scripts/bench_check.py

bench: bench-check
