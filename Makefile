# bitsearch: `make demo` and `make test` work on a fresh clone (CPU-only machine, no network but PyPI).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# PyTorch's CPU wheel: install it before the project, else an unpinned resolver pulls CUDA packages.
TORCH  ?= torch==2.13.0

.PHONY: install test lint demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(STAMP)

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy quant

demo: install
	$(VENV)/bin/bitsearch inspect --model sdxl-unet --top 15
	$(PY) bench/kernels.py --quick

bench: install
	$(PY) bench/kernels.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
