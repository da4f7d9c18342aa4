"""The run-level commands behind `gtr-turbo eval`, `export` and `sft`: a run directory's
checkpoint -> held-out metrics / a Hugging Face directory (with the value head beside it); the
warm start alone -> a Hugging Face directory. They build the run's `Learner`, not its loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from flax import nnx

from gtr_turbo_jax.train.export import export_model
from gtr_turbo_jax.train.learner import Learner
from gtr_turbo_jax.train.run_config import read_run_config
from gtr_turbo_jax.train.run_dir import RunDir
from gtr_turbo_jax.train.state import TrainState


def restore_run(
    run_dir: str | Path,
    step: int | None = None,
    config: ml_collections.ConfigDict | None = None,
    with_teacher: bool = False,
) -> tuple[Learner, TrainState, dict[str, Any]]:
    """The run's learner (`config`: default the run's own) and the `TrainState` and host-side
    counters of its checkpoint `step` (default: the newest good one); an external teacher's
    weights only `with_teacher`."""
    learner = Learner(config or read_run_config(run_dir), with_teacher)
    with learner.checkpointer(RunDir(run_dir).checkpoints, read_only=True) as checkpoints:
        _, state, _, host = learner.restore(checkpoints, step)
    return learner, state, host


def export_run(run_dir: str | Path, out_dir: str | Path, *, step: int | None = None) -> Path:
    """The policy of a run's checkpoint (default: the newest good one) as an HF directory."""
    from safetensors.numpy import save_file

    learner, state, _ = restore_run(run_dir, step)
    out = export_model(learner.setup, learner.model_with(state), out_dir)
    values = {k: np.asarray(v) for k, v in nnx.to_flat_state(state.value_head)}
    (out / "value_head").mkdir()
    save_file(
        {".".join(map(str, k)): v for k, v in values.items()},
        out / "value_head" / "value_head.safetensors",
    )
    return out


def evaluate_run(
    run_dir: str | Path, *, episodes: int | None = None, gifs: int = 0, step: int | None = None,
    temperature: float | None = None,
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
    learner, state, host = restore_run(run_dir, step, config)
    result = learner.evaluate(state)
    return RunDir(run_dir).record_evaluation(result, host["update"], levels=False, gifs=bool(gifs))


def warm_start_run(
    config: ml_collections.ConfigDict, run_dir: str | Path
) -> tuple[dict[str, float], Path]:
    """The supervised warm start alone; the model written to RUN_DIR/sft_model (never over an
    existing one)."""
    learner = Learner(config)
    warm = learner.warm_start()
    out = export_model(learner.setup, learner.model, RunDir(run_dir).sft_model)
    return warm, out


__all__ = ["evaluate_run", "export_run", "restore_run", "warm_start_run"]
