# gtr_turbo_jax: `make install` once, then `make test` / `make train ENV=sokoban`.
# Everything runs in a virtual environment at $(VENV) (override: make VENV=/path/to/venv ...).
# To use the current interpreter instead: make VENV= PY=python3 ...

VENV ?= .venv
PY ?= $(if $(VENV),$(VENV)/bin/python,python3)
EXTRAS ?= test
ENV ?= sokoban
ARGS ?=
# Tests and the CPU default never probe for accelerators.
export JAX_PLATFORMS ?= cpu

.PHONY: install install-all test test-parity test-slow test-all lint bench-envs train clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip setuptools wheel

# Fresh machine: creates the venv and installs the package (editable) with the test tools.
install: $(if $(VENV),$(VENV)/bin/python)
	$(PY) -m pip install -e ".[$(EXTRAS)]"

# Everything CI needs: tests, live PyTorch parity (torch CPU) and benchmark peers (jumanji).
# TORCH pins the CPU build that the CI machines carry as a local wheel (a plain `torch` from PyPI
# drags in gigabytes of CUDA libraries). Elsewhere pass your own, e.g. TORCH=torch.
TORCH ?= torch==2.13.0
install-all: $(if $(VENV),$(VENV)/bin/python)
	$(PY) -m pip install "$(TORCH)"
	$(MAKE) install EXTRAS=test,parity,bench

# Default suite: fast tests only (< 10 minutes on 2 cores). Exit code 5 (no tests) fails.
test:
	$(PY) -m pytest -m "not slow" -q

# The fast live-parity tests, which `make test` skips without torch (after `make install-all`).
test-parity:
	$(PY) -c "import torch" || (echo "test-parity needs torch: make install-all" && exit 1)
	$(PY) -m pytest -m "parity and not slow" -q

test-slow:
	$(PY) -m pytest -m "slow" -q

test-all:
	$(PY) -m pytest -q

LINT_PATHS = $(wildcard gtr_turbo_jax tests experiments configs docs tools)
lint:
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m ruff format --check $(LINT_PATHS)

bench-envs:
	$(PY) experiments/bench/envs.py $(ARGS)

train:
	$(PY) -m gtr_turbo_jax train --env=$(ENV) $(ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
