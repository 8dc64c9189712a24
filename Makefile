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

.PHONY: demo test bench bench-apollo gpu-check venv clean

$(STAMP): setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(PIP_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet $(PIP_ARGS) -e ".[test]"
	touch $@

venv: $(STAMP)

DEMO_STAMP := $(VENV)/.flashkit-demo-installed
$(DEMO_STAMP): $(STAMP)
	$(PY) -m pip install --quiet $(PIP_ARGS) -e ".[demo]"
	touch $@

demo: $(DEMO_STAMP)
	$(PY) -m flashkit demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m flashkit bench

# apollo-torch (CC-BY-NC) is a benchmark baseline only: it lives in its own environment with
# what it imports (transformers, bitsandbytes), never in flashkit's.
BASELINE_VENV ?= .venv-baselines
$(BASELINE_VENV)/.installed: setup.py pyproject.toml
	$(PYTHON) -m venv $(BASELINE_VENV)
	$(BASELINE_VENV)/bin/python -m pip install --quiet $(PIP_ARGS) "$(TORCH_SPEC)"
	$(BASELINE_VENV)/bin/python -m pip install --quiet $(PIP_ARGS) -e . transformers bitsandbytes
	$(BASELINE_VENV)/bin/python -m pip install --quiet $(PIP_ARGS) --no-deps apollo-torch
	touch $@

bench-apollo: $(BASELINE_VENV)/.installed
	$(BASELINE_VENV)/bin/python -m flashkit bench apollo

# On a GPU machine whose python already has a CUDA torch, triton and the other dependencies (no
# package index needed): install flashkit in place, run the GPU tests (failures are reported,
# the benchmarks still run), then the benchmarks of BENCH_OPS (all by default). Results: JSON
# under bench/results/, plus the test report and the run's JSON in GPU_OUT.
GPU_OUT  ?= build/gpu-check
BENCH_OPS ?=
gpu-check:
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e .
	mkdir -p $(GPU_OUT)
	-$(PYTHON) -m pytest -m gpu -q --junitxml=$(GPU_OUT)/gpu-tests.xml
	$(PYTHON) -m flashkit bench $(BENCH_OPS) --json $(GPU_OUT)/bench.json

clean:
	rm -rf $(VENV) $(BASELINE_VENV) .pytest_cache build *.egg-info
