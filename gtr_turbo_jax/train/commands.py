"""The run-level commands behind `gtr-turbo eval` and `gtr-turbo export`: a run directory's
checkpoint -> held-out metrics / a Hugging Face directory (with the value head beside it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from gtr_turbo_jax.train.export import export_model
from gtr_turbo_jax.train.run_config import read_run_config
from gtr_turbo_jax.train.trainer import Trainer


def _trainer(run_dir: str | Path, echo: Callable[[str], None]) -> Trainer:
    return Trainer(read_run_config(run_dir), run_dir, echo=echo)


def export_run(
    run_dir: str | Path, out_dir: str | Path, *, step: int | None = None,
    echo: Callable[[str], None] = print,
) -> Path:  # fmt: skip
    """The policy of a run's checkpoint (default: the newest good one) as an HF directory."""
    from safetensors.numpy import save_file

    trainer = _trainer(run_dir, echo)
    state, _ = trainer.restore(step)
    out = export_model(trainer.setup, trainer.model_with(state), out_dir)
    values = {k: np.asarray(v) for k, v in nnx.to_flat_state(state.value_head)}
    (out / "value_head").mkdir()
    save_file(
        {".".join(map(str, k)): v for k, v in values.items()},
        out / "value_head" / "value_head.safetensors",
    )
    return out


def evaluate_run(
    run_dir: str | Path, *, episodes: int | None = None, gifs: int = 0, step: int | None = None,
    temperature: float | None = None, echo: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """Held-out metrics of a run's checkpoint; `gifs` episode animations into RUN_DIR/episodes.
    `temperature` replaces the run's `sampling.eval_temperature` (0: greedy; the training
    sampler's, e.g. 0.2, measures the policy that PPO improves)."""
    config = read_run_config(run_dir)
    if episodes is not None:
        if episodes < 1:
            raise ValueError(f"--episodes={episodes}: need a value >= 1")
        config.train.eval_episodes = episodes
    if temperature is not None:
        if not 0.0 <= temperature < float("inf"):
            raise ValueError(f"--temperature={temperature}: need a value >= 0 (0: greedy)")
        config.sampling.eval_temperature = float(temperature)
    config.train.record_episodes = gifs
    trainer = Trainer(config, run_dir, echo=echo)
    state, host = trainer.restore(step)
    return trainer.evaluate(state, host["update"])


__all__ = ["evaluate_run", "export_run"]
