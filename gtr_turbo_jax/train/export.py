"""`gtr-turbo export` and `gtr-turbo eval`: a run directory's checkpoint -> an HF directory / metrics.

The export is a complete Hugging Face model directory: `config.json` + safetensors of the policy
with LoRA merged (`models.save_pretrained`), and the tokenizer, chat template and image processor
files of the model it started from, so transformers (and `--config.model.path` here) load it as is.
The value head is not part of the HF model; it is written into a subfolder,
`value_head/value_head.safetensors` (a loader that globs the top folder's safetensors never sees it).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from gtr_turbo_jax.models import save_pretrained
from gtr_turbo_jax.text.tokenizer import tiny_tokenizer_path
from gtr_turbo_jax.train.setup import RunSetup

PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "chat_template.json", "preprocessor_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "generation_config.json")  # fmt: skip


def export_model(setup: RunSetup, model: nnx.Module, out_dir: str | Path) -> Path:
    """Writes `model` (LoRA merged) and the source model's tokenizer/processor files to `out_dir`."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: choose a new output directory")
    save_pretrained(model, out, merge_lora=True)
    source = Path(setup.config.model.path) if setup.config.model.path else tiny_tokenizer_path()
    for name in PROCESSOR_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    return out


def _trainer(run_dir: str | Path, echo: Callable[[str], None]):
    from gtr_turbo_jax.cli import run_config
    from gtr_turbo_jax.train.trainer import Trainer

    return Trainer(run_config(run_dir), run_dir, echo=echo)


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
    from gtr_turbo_jax.cli import run_config
    from gtr_turbo_jax.train.trainer import Trainer

    config = run_config(run_dir)
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


__all__ = ["evaluate_run", "export_model", "export_run"]
