# Two entry points that work on a fresh machine with only Python (>= 3.10) installed:
#   make demo   set up .venv and run the main job (`ntkit reproduce --quick`)
#   make test   set up .venv with the test extras and run the test suite (slow tests left out)
#
# torch is installed first, on its own, from TORCH_SPEC. The default pins the CPU build this project's
# machines keep on disk (torch==2.13.0); a plain `torch` requirement would download a multi-GB CUDA build
# there. Elsewhere, pick your own build, e.g. `make test TORCH_SPEC=torch` or
# `make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"`; a torch that is
# already importable in .venv is kept as it is.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

.PHONY: demo test test-all lint bench docs clean

$(VENV)/.torch:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH_SPEC)
	touch $@

$(VENV)/.repro: pyproject.toml $(VENV)/.torch
	$(PIP) install -e ".[repro]"
	touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.torch
	$(PIP) install -e ".[dev]"
	touch $@ $(VENV)/.repro

# OMP_WAIT_POLICY=PASSIVE: torch's OpenMP threads sleep instead of spinning while they wait; on a machine whose
# cores are shared with other busy processes this made the quick run several times faster (benchmarks/reproduce.py).
demo: $(VENV)/.repro
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/ntkit reproduce --quick
	@echo "Report: $(CURDIR)/ntkit-report/index.html (figures in ntkit-report/figures, numbers in ntkit-report/results.json)"

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: lint
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

lint: $(VENV)/.test
	$(VENV)/bin/ruff check
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy

# The documentation site (mkdocs.yml): docs/*.md and the API reference from the docstrings, into site/.
docs: $(VENV)/.test
	$(VENV)/bin/mkdocs build --strict

bench: $(VENV)/.test
	$(PY) benchmarks/empirical.py
	$(PY) benchmarks/infinite.py
	$(PY) benchmarks/predict.py
	$(PY) benchmarks/linearize.py

clean:
	rm -rf $(VENV) ntkit-report .pytest_cache site
