"""Random Hugging Face checkpoints written locally (nothing downloaded): for notebooks, demos, tests
and benchmarks that need a model directory without a real model."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np
from flax import nnx

from gtr_turbo_jax.models import safetensors_io
from gtr_turbo_jax.models.config import ModelConfig, get_config, to_hf_dict
from gtr_turbo_jax.models.hf import CONFIG_FILE, SINGLE_FILE, param_path_to_hf
from gtr_turbo_jax.models.qwen2_5_vl import Qwen25VL


def random_tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Deterministic per (seed, name): norms near 1, biases small, matrices with unit-variance
    outputs (so logits are O(1) and parity tests compare meaningful numbers)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if name.endswith("norm.weight") or "norm1" in name or "norm2" in name or "ln_q" in name:
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if name.endswith(".bias"):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    std = 1.0 if "embed_tokens" in name else fan_in**-0.5
    return (std * rng.standard_normal(shape)).astype(np.float32)


def checkpoint_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Hub tensor name -> shape for a config."""
    abstract = nnx.eval_shape(lambda: Qwen25VL(config, rngs=nnx.Rngs(0)))
    flat = nnx.to_flat_state(nnx.state(abstract, nnx.Param))
    return {
        param_path_to_hf(".".join(str(p) for p in path)): tuple(variable.shape)
        for path, variable in flat
    }


def write_random_checkpoint(
    path: str | os.PathLike, config: ModelConfig | str = "tiny", seed: int = 0
) -> Path:
    """Writes config.json + model.safetensors (float32) with random weights; returns the dir."""
    if isinstance(config, str):
        config = get_config(config)
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(to_hf_dict(config), indent=2) + "\n")
    specs = [
        safetensors_io.TensorSpec(
            name, shape, np.dtype(np.float32), lambda n=name, s=shape: random_tensor(n, s, seed)
        )
        for name, shape in sorted(checkpoint_shapes(config).items())
    ]
    safetensors_io.write_file(directory / SINGLE_FILE, specs)
    return directory
