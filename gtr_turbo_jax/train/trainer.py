"""The run loop: warm start -> (rollout -> teacher targets -> update -> log -> eval -> checkpoint)*.

A thin Python loop around compiled pieces (DESIGN.md): the rollout (`rollout.make_rollout`), the
update (`train.update_step`), the evaluator (`rollout.evaluate`), all held by the run's
`train.learner.Learner`; its files are `train.run_dir.RunDir`'s. Everything random comes from keys
in the state (`TrainState.key`, `RolloutState.key`) or derived from the seed and the update index,
so a run is a function of its config, and a resumed run continues exactly: a checkpoint holds the
`TrainState`, the `RolloutState` and the host-side counters, and `metrics.jsonl` is cut back to the
checkpoint's update on resume.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from gtr_turbo_jax.rollout.batch import Batch
from gtr_turbo_jax.rollout.metrics import thought_length
from gtr_turbo_jax.rollout.multiturn import RolloutState
from gtr_turbo_jax.train import live, sft_targets, sharding
from gtr_turbo_jax.train.checkpoint import Checkpointer, CheckpointError
from gtr_turbo_jax.train.learner import Learner
from gtr_turbo_jax.train.logger import MetricsLogger
from gtr_turbo_jax.train.progress import Bar, Timings
from gtr_turbo_jax.train.run_config import ConfigError
from gtr_turbo_jax.train.run_dir import RunDir
from gtr_turbo_jax.train.setup import RunSetup
from gtr_turbo_jax.train.state import TrainState
from gtr_turbo_jax.train.update import update_step

# The logged success_rate / return_mean: the last SUCCESS_WINDOW training episodes of the completed
# start-update cohorts (`train.live`: episodes counted by the update they started in, so the
# window is not biased towards short episodes as one of the episodes that ended is).
SUCCESS_WINDOW = live.SUCCESS_WINDOW
LOG_KEYS = ("kl_mean", "kl_max", "loss", "policy_loss", "value_loss", "sft_loss", "clip_fraction",
            "approx_kl", "thought_entropy", "grad_norm", "learning_rate", "teacher_policy_distance",
            "value_mean", "advantage_std", "trained_fraction", "optimizer_steps", "finite",
            "merged")  # fmt: skip


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. a non-finite update); `str()` is one line for the CLI."""


def _episode_stats(
    episodes: dict[str, jax.Array], window: live.LiveWindow, update: int, restart: bool = False
) -> tuple[live.LiveWindow, int]:
    """The live window after update `update`'s rollout (`live.advance`: episodes counted by the
    update they started in; `restart`: group rollouts, each env's first episode only) and the
    number of episodes that ended during the rollout."""
    returned = np.asarray(episodes["returned_episode"], bool)
    window = live.advance(
        window, update, returned, episodes["success"], episodes["episode_return"], restart
    )
    return window, int(returned.sum())


def _thought_words(setup: RunSetup, batch: Batch) -> float:
    """Mean thought length in words over the valid replies of a batch (decoded on the host)."""
    ids = np.asarray(batch.response_ids).reshape(-1, batch.response_ids.shape[-1])
    mask = np.asarray(batch.thought_mask).reshape(ids.shape)
    valid = np.asarray(batch.valid).reshape(-1).astype(bool)
    texts = setup.tokenizer.batch_decode(
        [row[m].tolist() for row, m, v in zip(ids, mask, valid) if v], skip_special_tokens=True
    )
    return float(np.mean([thought_length(t) for t in texts])) if texts else math.nan


class Trainer:
    """One run in one run directory. `run()` trains to `config.train.updates` (or continues a
    run with `resume=True`) and returns the summary; `echo` receives the one-line reports (the CLI
    sends them to stderr)."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str | Path,
        *,
        resume: bool = False,
        echo: Callable[[str], None] = print,
    ):
        self.config = config
        self.learner = Learner(config)
        self.run_dir = RunDir(workdir)
        self.resume = resume
        self.echo = echo
        self.timings = Timings()
        self.mesh = None  # laid out by `run`
        defs, update = self.learner.defs, self.learner.setup.update
        self._step = lambda state, batch: update_step(state, batch, defs, update)

    def run(self) -> dict[str, Any]:
        config, run_dir = self.config, self.run_dir
        self.mesh = self._make_mesh()  # before anything is written: a bad mesh is one line
        self.echo(f"run directory: {run_dir.path}")
        run_dir.write_config(config)
        checkpoints = self.learner.checkpointer(run_dir.checkpoints)
        wandb = {"project": config.train.wandb_project} if config.train.wandb_project else None
        self.logger = MetricsLogger(run_dir.path, tensorboard=config.train.tensorboard, wandb=wandb)
        try:
            restored = self._restore(checkpoints) if self.resume else None
            if restored is None:
                if self.resume:
                    self.echo(f"no checkpoint in {run_dir.checkpoints}: starting fresh")
                self.logger.truncate_after(-1)  # lines of an earlier attempt without checkpoints
                state, rollout_state, host = self._fresh()
            else:
                state, rollout_state, host = restored
                self.logger.truncate_after(host["update"])
            state, rollout_state = self._place(state, rollout_state)
            state, host = self._loop(state, rollout_state, host, checkpoints)
            checkpoints.wait()
            return self._summary(host)
        finally:
            checkpoints.close()
            self.logger.close()

    # -- start, resume, layout --------------------------------------------------------------------

    def _fresh(self) -> tuple[TrainState, RolloutState, dict[str, Any]]:
        learner = self.learner
        warm = learner.warm_start()
        if warm:
            self.run_dir.save_warm_start(learner.setup, learner.model)
        state = learner.init_state()
        rollout_state = learner.init_rollout()
        host = {"update": 0, "env_steps": 0, "wall_s": 0.0}
        host.update(live.LiveWindow.fresh(self.config.train.num_envs, SUCCESS_WINDOW).to_host())
        initial_eval = self.evaluate(state, 0)
        host["initial_eval"] = initial_eval
        host["warm_start"] = warm
        self.logger.log(0, {"env_steps": 0, **warm, **initial_eval})
        return state, rollout_state, host

    def _restore(self, checkpoints: Checkpointer) -> tuple[TrainState, RolloutState, dict] | None:
        if checkpoints.latest_step() is None:
            return None
        step, state, rollout_state, host = self.learner.restore(checkpoints)
        self.echo(f"resumed from {checkpoints.directory}/{step} (update {host['update']})")
        return state, rollout_state, host

    def _make_mesh(self):
        """The (data, fsdp) mesh of `train.mesh`; None on one device (plain jit, no layouts)."""
        data, fsdp = self.config.train.mesh.data, self.config.train.mesh.fsdp
        if data * fsdp == 1:
            return None
        try:
            return sharding.make_mesh(data, fsdp)
        except ValueError as err:
            raise ConfigError(f"train.mesh: {err}") from None

    def _place(self, state: TrainState, rollout_state: RolloutState):
        """On a mesh: the state in its FSDP layout, the rollout's envs split over the devices, and
        the update step compiled for those layouts."""
        if self.mesh is None:
            return state, rollout_state
        mesh, envs, learner = self.mesh, self.config.train.num_envs, self.learner
        state_layout = sharding.state_shardings(state, mesh)
        state = jax.device_put(state, state_layout)
        if not learner.setup.is_python_env:  # a Python env's state is not on the devices
            rollout_state = jax.device_put(
                rollout_state, sharding.env_axis_shardings(rollout_state, envs, mesh)
            )
        batch_layout = sharding.batch_shardings(learner.batch_like(), mesh)
        step = sharding.sharded_update_step(
            learner.defs, learner.setup.update, mesh, state_layout, batch_layout
        )
        self._step = lambda state, batch: step(state, jax.device_put(batch, batch_layout))
        return state, rollout_state

    # -- one update -----------------------------------------------------------------------------

    def evaluate(self, state: TrainState, update: int) -> dict[str, float]:
        """Held-out metrics of `state`, its per-level outcomes and GIFs into the run directory."""
        result = self.learner.evaluate(state)
        gifs = bool(self.config.train.record_episodes)
        return self.run_dir.record_evaluation(result, update, levels=True, gifs=gifs)

    def _teacher_targets(self, state: TrainState, batch: Batch, episodes, update: int) -> Batch:
        """The SFT targets of `gtr` (oracle) and `turbo_sft` (merged teacher); else the batch."""
        setup = self.learner.setup
        if setup.update.mode == "gtr":
            return sft_targets.with_oracle_corrections(
                setup.env_name, batch, episodes["fields"], setup.tokenizer, setup.spec,
                setup.sampling.max_new_tokens, setup.template.style,
            )  # fmt: skip
        if setup.update.mode == "turbo_sft":
            key = jax.random.fold_in(self.learner.keys["teacher"], update)
            return sft_targets.teacher_replies(
                self.learner.defs, state, setup.update, batch, key, setup.sampling, setup.spec
            )
        return batch

    def _log_line(
        self, batch: Batch, metrics, episodes, host, window: live.LiveWindow, update: int
    ) -> tuple[live.LiveWindow, dict[str, Any]]:
        """The live window after update `update` (0-based: the rollout's update) and the update's
        metrics line."""
        setup = self.learner.setup
        restart = setup.update.rollout_group_size > 1
        window, ended = _episode_stats(episodes, window, update, restart)
        return window, {
            "env_steps": host["env_steps"],
            "success_rate": window.success_rate,
            "return_mean": window.return_mean,
            "episodes": ended,
            "valid_rate": float(np.mean(np.asarray(batch.valid))),
            "thought_len": _thought_words(setup, batch),
            "reward_mean": float(np.mean(np.asarray(batch.reward))),
            **{k: float(metrics[k]) for k in LOG_KEYS if k in metrics},
        }

    def _loop(self, state, rollout_state, host, checkpoints):
        setup, train = self.learner.setup, self.config.train
        # An old checkpoint without the per-env episode starts: `LiveWindow.from_host` falls back.
        window = live.LiveWindow.from_host(host, train.num_envs, SUCCESS_WINDOW)
        if setup.is_python_env:  # its envs start new games here, resumed or not
            window = window.restart(host["update"])
        bar = Bar(train.updates, f"{setup.update.mode} {setup.env_name}")
        bar.advance(host["update"])
        clock = time.perf_counter() - host["wall_s"]
        timer = self.timings
        bad_updates = 0
        for update in range(host["update"], train.updates):
            with timer("rollout"):
                rollout_state, batch, episodes = self.learner.rollout.run(
                    rollout_state, state.base, state.policy, state.value_head,
                    train.turns_per_update,
                )  # fmt: skip
                batch, episodes = jax.block_until_ready((batch, episodes))
            with timer("teacher"):
                batch = jax.block_until_ready(self._teacher_targets(state, batch, episodes, update))
            with timer("update"):
                state, metrics = self._step(state, batch)
                metrics = jax.device_get(metrics)
            # The step skips a non-finite gradient step itself; a run that keeps producing them
            # is stopped (the checkpoints before it are kept; a non-finite state is never saved).
            bad_updates = 0 if metrics["finite"] else bad_updates + 1
            if bad_updates:
                self.echo(f"update {update + 1}: non-finite loss or gradient, step skipped")
            if bad_updates >= 3:
                raise TrainingError(
                    f"updates {update - 1}..{update + 1} were all non-finite; stopping (the last "
                    "checkpoint is kept): lower rl.learning_rate or check the inputs"
                )
            host["env_steps"] += train.num_envs * train.turns_per_update
            host["update"] = update + 1
            with timer("logging"):
                window, line = self._log_line(batch, metrics, episodes, host, window, update)
                host.update(window.to_host())
            last = update + 1 == train.updates
            if (update + 1) % train.eval_every == 0 or last:
                with timer("eval"):
                    line.update(self.evaluate(state, update + 1))
            host["wall_s"] = time.perf_counter() - clock
            line["wall_s"] = host["wall_s"]
            # Seconds per phase since the previous line (its checkpoint save included).
            line.update({f"time/{k}": v for k, v in timer.lap().items()})
            with timer("logging"):
                self.logger.log(update + 1, line)
                bar.step(1, _shown(line))
            if (update + 1) % train.checkpoint_every == 0 or last:
                with timer("checkpoint"):
                    saved = checkpoints.save(
                        update + 1,
                        self.learner.checkpoint_tree(state, rollout_state),
                        metadata=host,
                        metrics={"success_rate": line.get("eval/success_rate")},
                    )
                if not saved:
                    self.echo(f"update {update + 1}: state not finite, checkpoint skipped")
        bar.close()
        return state, host

    def _summary(self, host: dict[str, Any]) -> dict[str, Any]:
        setup = self.learner.setup
        summary = {
            "env": setup.env_name,
            "mode": setup.update.mode,
            "updates": host["update"],
            "env_steps": host["env_steps"],
            "wall_s": host["wall_s"],
            "initial": host.get("initial_eval", {}),
            "final": self.run_dir.last_evaluation(),
            "warm_start": host.get("warm_start", {}),
        }
        self.run_dir.write_summary(summary)
        return summary


def _shown(line: dict[str, Any]) -> dict[str, Any]:
    """What the progress bar shows of a metrics line: live success, KL, valid replies, eval."""
    keys = {"success": "success_rate", "kl": "kl_mean", "valid": "valid_rate",
            "eval": "eval/success_rate"}  # fmt: skip
    return {short: line.get(key) for short, key in keys.items()}


def train(config: ml_collections.ConfigDict, workdir: str | Path, *, resume: bool = False,
          echo: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Trains the run `config` describes in `workdir` (see `Trainer`); returns the summary."""
    return Trainer(config, workdir, resume=resume, echo=echo).run()


__all__ = ["CheckpointError", "Trainer", "TrainingError", "train"]
