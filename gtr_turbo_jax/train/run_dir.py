"""The files of one run, in one directory: what a run writes besides its metrics.

`config.json` (the resolved config), `checkpoints/` (`train.checkpoint`), `metrics.jsonl` and
`tb/` (`train.logger`), `eval_episodes.jsonl` (each evaluation's per-level outcomes, for paired
comparisons), `episodes/` (GIFs), `sft_model/` (the warm-started model as an HF directory: other
modes can start from it with `--config.model.path=RUN_DIR/sft_model --config.warm_start.steps=0`)
and `summary.json`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import ml_collections
from flax import nnx

from gtr_turbo_jax.train.export import export_model
from gtr_turbo_jax.train.logger import EVAL_LEVELS_FILE, read_metrics
from gtr_turbo_jax.train.setup import RunSetup


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def sft_model(self) -> Path:
        return self.path / "sft_model"

    def write_config(self, config: ml_collections.ConfigDict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")

    def save_warm_start(self, setup: RunSetup, model: nnx.Module) -> None:
        """RUN_DIR/sft_model, written aside and moved in: a kill never leaves half of one (a fresh
        start replaces one from a run killed before its first checkpoint: the same seed writes
        the same model)."""
        final, partial = self.sft_model, self.path / ".sft_model.partial"
        for stale in (partial, final):
            shutil.rmtree(stale, ignore_errors=True)
        export_model(setup, model, partial)
        partial.rename(final)

    def record_evaluation(self, result, update: int, levels: bool, gifs: bool) -> dict[str, float]:
        """An evaluator's result as `eval/...` metrics. `levels`: each level's success and return
        appended to `eval_episodes.jsonl` (a resumed run appends its evaluations again; readers
        keep the last line of a step, which an exact resume makes identical); `gifs`: the
        recorded episodes as animations in `episodes/`."""
        if result.episodes and gifs:
            self._save_gifs(result.episodes, update)
        if levels:
            line = {
                "step": update,
                "success": [int(e.success) for e in result.episodes],
                "return": [float(sum(e.rewards)) for e in result.episodes],
            }
            with open(self.path / EVAL_LEVELS_FILE, "a") as file:
                file.write(json.dumps(line) + "\n")
        return {f"eval/{k}": float(v) for k, v in result.metrics.items()}

    def _save_gifs(self, episodes, update: int) -> None:
        from gtr_turbo_jax.rollout.recording import save_episode_gif

        folder = self.path / "episodes"
        folder.mkdir(parents=True, exist_ok=True)
        for i, episode in enumerate(episodes):
            if episode.frames:
                save_episode_gif(folder / f"update{update:05d}_ep{i}.gif", episode.frames,
                                 episode.replies)  # fmt: skip

    def last_evaluation(self) -> dict[str, float]:
        """The `eval/...` metrics of the last evaluation after the start (empty if none)."""
        for line in reversed(read_metrics(self.path)):
            if "eval/success_rate" in line and line.get("step", 0) > 0:
                return {k: v for k, v in line.items() if k.startswith("eval/")}
        return {}

    def write_summary(self, summary: dict[str, Any]) -> None:
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


__all__ = ["RunDir"]
