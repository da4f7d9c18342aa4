"""Shared test set-up: CPU only, no network, deterministic."""

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests never reach a hub: everything they need is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_experiment():
    """`load_experiment("gradient_snr")`: the script `experiments/gradient_snr.py` as a module."""
    return lambda name: _load_script(ROOT / "experiments" / f"{name}.py")


@pytest.fixture(scope="session")
def load_tool():
    """`load_tool("convert_checkpoint")`: the script `tools/convert_checkpoint.py` as a module."""
    return lambda name: _load_script(ROOT / "tools" / f"{name}.py")


@pytest.fixture(scope="module", autouse=True)
def _free_compiled_programs():
    """After each test module, drop JAX's caches of compiled programs. XLA:CPU maps memory for
    every program it compiles; one process running the whole suite passed the kernel's default
    `vm.max_map_count` (65530 mappings) and crashed inside a compile (a segfault or an abort at
    ~91% of `make test`). Tests of one module still share their compilations."""
    yield
    import jax  # here, not at the top: JAX_PLATFORMS above must be set first

    jax.clear_caches()
