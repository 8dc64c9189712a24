# flashkit: `make demo` runs the toolkit end to end on the best device here; `make test` runs the
# suite. Each creates .venv and installs what it needs. Override TORCH_SPEC for another torch
# (e.g. TORCH_SPEC='torch==2.11.0' or a CUDA build's index options via PIP_ARGS).
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP_ARGS   ?=
PYTEST_ARGS ?= -n 2
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.flashkit-installed

.PHONY: demo test bench venv clean

$(STAMP): setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(PIP_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet $(PIP_ARGS) -e ".[test]"
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m flashkit demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m flashkit bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
