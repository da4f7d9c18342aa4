"""Shared test set-up: CPU only, no network, deterministic."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests never reach a hub: everything they need is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
