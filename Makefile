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

.PHONY: demo test lint bench bench-apollo gpu-check wheels venv clean

$(STAMP): setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(PIP_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet $(PIP_ARGS) -e ".[test]"
	touch $@

venv: $(STAMP)

DEMO_STAMP := $(VENV)/.flashkit-demo-installed
$(DEMO_STAMP): $(STAMP)
	$(PY) -m pip install --quiet $(PIP_ARGS) -e ".[plot]"
	touch $@

demo: $(DEMO_STAMP)
	$(PY) -m flashkit demo

# ruff first (seconds; pyproject.toml's [tool.ruff]), then the suite.
test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

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

# fla-core, the baseline of chunk_ssd_scan: a pure-Python wheel (~1 MB) that the GPU host, which
# has no package index, gets only by carrying it. `make wheels` downloads it here into wheels/
# (ignored by git); a device run carries wheels/ and gpu-check installs it from there.
WHEELS   ?= wheels
FLA_CORE ?= fla-core==0.6.0
wheels:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: -d $(WHEELS) "$(FLA_CORE)"

# On a GPU machine whose python already has a CUDA torch, triton and the test tools (no package
# index needed): install flashkit in place and the carried wheels, then run the prepared check
# (python -m flashkit.gpucheck: environment and ceilings, GPU tests, benchmarks, cold JIT; one
# JSON per section in GPU_OUT as it ends; default budget 475 s). GPU_OUT defaults to
# bench/results/gpucheck_<date>_<commit>/; `make gpu-check GPUCHECK_ARGS=--dry-run` shows the plan.
GPU_OUT       ?=
GPU_BUDGET_S  ?=
GPUCHECK_ARGS ?=
gpu-check:
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e .
	@if ls $(WHEELS)/*.whl >/dev/null 2>&1; then \
		$(PYTHON) -m pip install --quiet --no-deps --no-index $(WHEELS)/*.whl; \
	else echo "no $(WHEELS)/*.whl: the fla-core rows will be skipped (make wheels here, carry $(WHEELS)/)"; fi
	$(PYTHON) -m flashkit.gpucheck $(if $(GPU_OUT),--out $(GPU_OUT)) \
		$(if $(GPU_BUDGET_S),--budget-s $(GPU_BUDGET_S)) $(GPUCHECK_ARGS)

clean:
	rm -rf $(VENV) $(BASELINE_VENV) .pytest_cache build *.egg-info
