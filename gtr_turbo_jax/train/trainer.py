"""The outer loop: warm start -> (rollout -> teacher targets -> update -> log -> eval -> checkpoint)*.

A thin Python loop around compiled pieces (DESIGN.md): the rollout (`rollout.make_rollout`), the
update (`train.update_step`), the evaluator (`rollout.evaluate`). Everything random comes from keys
in the state (`TrainState.key`, `RolloutState.key`) or derived from the seed and the update index,
so a run is a function of its config, and a resumed run continues exactly: a checkpoint holds the
`TrainState`, the `RolloutState` and the host-side counters, and `metrics.jsonl` is cut back to the
checkpoint's update on resume.

Run directory: `config.json` (resolved), `metrics.jsonl` (one line per update; eval lines carry
`eval/...` keys), `tb/` (TensorBoard), `checkpoints/`, `episodes/` (GIFs), `summary.json`, and
after a warm start `sft_model/` (the warm-started model as an HF directory: other modes can start
from the same one with `--config.model.path=RUN_DIR/sft_model --config.warm_start.steps=0`).
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from gtr_turbo_jax.rollout.batch import Batch
from gtr_turbo_jax.rollout.metrics import thought_length
from gtr_turbo_jax.rollout.multiturn import RolloutState, make_rollout
from gtr_turbo_jax.train import live, sharding, teachers
from gtr_turbo_jax.train.checkpoint import Checkpointer, CheckpointError
from gtr_turbo_jax.train.export import export_model
from gtr_turbo_jax.train.logger import EVAL_LEVELS_FILE, MetricsLogger
from gtr_turbo_jax.train.run_config import ConfigError
from gtr_turbo_jax.train.setup import RunSetup, build_model, build_setup, model_defs
from gtr_turbo_jax.train.state import TrainState, init_train_state, split_model
from gtr_turbo_jax.train.update import update_step

# The logged success_rate / return_mean: the last SUCCESS_WINDOW training episodes of the completed
# start-update cohorts (`train.live`: episodes counted by the update they started in, so the
# window is not biased towards short episodes as one of the episodes that ended is).
SUCCESS_WINDOW = live.SUCCESS_WINDOW
LOG_KEYS = ("kl_mean", "kl_max", "loss", "policy_loss", "value_loss", "sft_loss", "clip_fraction",
            "approx_kl", "thought_entropy", "grad_norm", "learning_rate", "teacher_policy_distance",
            "value_mean", "advantage_std", "finite", "merged")  # fmt: skip


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. a non-finite update); `str()` is one line for the CLI."""


def _keys(seed: int) -> dict[str, jax.Array]:
    root = jax.random.key(seed)
    names = ("state", "rollout", "warm_start", "demos", "eval", "teacher")
    return dict(zip(names, jax.random.split(root, len(names))))


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
    sends them to stderr). `restore` / `model_with` / `evaluate` serve `gtr-turbo eval | export`."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str | Path,
        *,
        resume: bool = False,
        echo: Callable[[str], None] = print,
    ):
        self.config = config
        self.workdir = Path(workdir)
        self.resume = resume
        self.echo = echo
        self.setup = build_setup(config)
        self.keys = _keys(config.train.seed)
        model, value_head = build_model(self.setup)
        self.defs = model_defs(model, value_head)
        self._model, self._value_head = model, value_head
        setup = self.setup
        self.rollout = make_rollout(
            setup.env,
            setup.env_params,
            setup.template,
            setup.spec,
            setup.image_config,
            setup.sampling,
            self.defs,
            format_reward=setup.format_reward,
            constraint=setup.constraint,
            group_size=setup.update.rollout_group_size,
        )
        self._evaluator = None
        self.timings = Timings()
        self.mesh = None  # laid out by `run` (eval / export of a run need no mesh)
        self._step = lambda state, batch: update_step(state, batch, self.defs, setup.update)

    # -- pieces -------------------------------------------------------------------------------

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
        mesh, envs = self.mesh, self.config.train.num_envs
        state_layout = sharding.state_shardings(state, mesh)
        state = jax.device_put(state, state_layout)
        rollout_state = jax.device_put(
            rollout_state, sharding.env_axis_shardings(rollout_state, envs, mesh)
        )
        batch_layout = sharding.batch_shardings(self.batch_like(), mesh)
        step = sharding.sharded_update_step(
            self.defs, self.setup.update, mesh, state_layout, batch_layout
        )
        self._step = lambda state, batch: step(state, jax.device_put(batch, batch_layout))
        return state, rollout_state

    @property
    def evaluator(self):
        if self._evaluator is None:
            from gtr_turbo_jax.rollout.evaluate import make_evaluator

            setup = self.setup
            self._evaluator = make_evaluator(
                setup.env_name,
                setup.eval_env,
                setup.eval_params,
                setup.template,
                setup.spec,
                setup.image_config,
                setup.eval_sampling,
                self.defs,
                setup.tokenizer,
                num_episodes=self.config.train.eval_episodes,
                record=self.config.train.record_episodes,
                constraint=setup.constraint,
            )
        return self._evaluator

    def batch_like(self) -> Batch:
        """A zero batch of the rollout's shapes (sizes the DAgger buffer)."""
        setup, train = self.setup, self.config.train
        height, width, _ = setup.env.image_shape
        grid = self.rollout.image_grid
        return Batch.dummy(
            train.turns_per_update,
            train.num_envs,
            setup.template.max_length,
            setup.sampling.max_new_tokens,
            setup.image_config.patch_dim,
            grid,
            teacher_len=setup.sampling.max_new_tokens if setup.update.uses_sft else 1,
        )

    def warm_start(self) -> dict[str, float]:
        """Supervised warm start of the fresh model on the solver's demonstrations (in place)."""
        from gtr_turbo_jax.train.demos import collect_demos, encode_demos
        from gtr_turbo_jax.train.warmstart import WarmStartConfig, warm_start

        ws, setup = self.config.warm_start, self.setup
        if ws.steps <= 0:
            return {}
        start = time.perf_counter()
        demos = collect_demos(
            setup.env_name, setup.env, setup.env_params, self.keys["demos"], ws.demos,
            noise=ws.noise, history_length=setup.template.history_length,
            style=setup.template.style,
        )  # fmt: skip
        try:
            encoded = encode_demos(
                demos, setup.template, setup.tokenizer, setup.image_config,
                setup.sampling.max_new_tokens,
            )  # fmt: skip
        except ValueError as err:  # e.g. a demonstration longer than the reply budget
            raise ConfigError(f"warm start: {err} (sampling.max_new_tokens)") from None
        graphdef, trainable, base = split_model(self._model)
        bar = _bar(ws.steps, "warm start")
        trainable, losses = warm_start(
            graphdef,
            base,
            trainable,
            encoded,
            WarmStartConfig(
                steps=ws.steps,
                batch_size=ws.batch_size,
                learning_rate=ws.learning_rate,
                warmup=min(20, ws.steps // 5),
            ),
            self.keys["warm_start"],
            progress=lambda step, loss: bar.step(1, {"loss": float(loss)}),
        )
        bar.close()
        nnx.update(self._model, trainable)
        return {
            "warm_start/loss_first": float(losses[0]),
            "warm_start/loss_last": float(np.mean(losses[-10:])),
            "warm_start/seconds": time.perf_counter() - start,
        }

    def evaluate(self, state: TrainState, update: int, levels: bool = False) -> dict[str, float]:
        """Held-out metrics of `state`. `levels`: also append each level's success and return to
        RUN_DIR/eval_episodes.jsonl (`EVAL_LEVELS_FILE`), for paired comparisons between two
        evaluations of one run; a resumed run appends its evaluations again (readers keep the
        last line of a step, which an exact resume makes identical)."""
        # The same key at every evaluation: the same held-out levels (and, when sampling, the
        # same draws), so the warm start and the trained model are compared pair for pair.
        result = self.evaluator(state.base, state.policy, state.value_head, self.keys["eval"])
        if result.episodes and self.config.train.record_episodes:
            self._record(result.episodes, update)
        if levels:
            line = {
                "step": update,
                "success": [int(e.success) for e in result.episodes],
                "return": [float(sum(e.rewards)) for e in result.episodes],
            }
            with open(self.workdir / EVAL_LEVELS_FILE, "a") as file:
                file.write(json.dumps(line) + "\n")
        return {f"eval/{k}": float(v) for k, v in result.metrics.items()}

    def _record(self, episodes, update: int) -> None:
        from gtr_turbo_jax.rollout.recording import save_episode_gif

        folder = self.workdir / "episodes"
        folder.mkdir(parents=True, exist_ok=True)
        for i, episode in enumerate(episodes):
            if episode.frames:
                save_episode_gif(folder / f"update{update:05d}_ep{i}.gif", episode.frames,
                                 episode.replies)  # fmt: skip

    # -- the loop -----------------------------------------------------------------------------

    def _fresh(self) -> tuple[TrainState, RolloutState, dict[str, Any]]:
        warm = self.warm_start()
        if warm:
            self._save_warm_start()
        _, state = init_train_state(
            self._model, self._value_head, self.setup.update, self.keys["state"], self.batch_like()
        )
        rollout_state = self.rollout.init(self.keys["rollout"], self.config.train.num_envs)
        host = {"update": 0, "env_steps": 0, "wall_s": 0.0}
        host.update(live.LiveWindow.fresh(self.config.train.num_envs, SUCCESS_WINDOW).to_host())
        initial_eval = self.evaluate(state, 0, levels=True)
        host["initial_eval"] = initial_eval
        host["warm_start"] = warm
        self.logger.log(0, {"env_steps": 0, **warm, **initial_eval})
        return state, rollout_state, host

    def _save_warm_start(self) -> None:
        """RUN_DIR/sft_model, written aside and moved in: a kill never leaves half of one (a
        fresh start replaces one from a run killed before its first checkpoint: the same seed
        writes the same model)."""
        final, partial = self.workdir / "sft_model", self.workdir / ".sft_model.partial"
        for stale in (partial, final):
            shutil.rmtree(stale, ignore_errors=True)
        export_model(self.setup, self._model, partial)
        partial.rename(final)

    def _restore(self, checkpoints: Checkpointer) -> tuple[TrainState, RolloutState, dict] | None:
        if checkpoints.latest_step() is None:
            return None
        _, state_like = init_train_state(
            self._model, self._value_head, self.setup.update, self.keys["state"], self.batch_like()
        )
        rollout_like = self.rollout.init(self.keys["rollout"], self.config.train.num_envs)
        like = {"state": state_like, "rollout": rollout_like}
        step, tree, host = checkpoints.restore(like)
        self.echo(f"resumed from {checkpoints.directory}/{step} (update {host['update']})")
        return tree["state"], tree["rollout"], host

    def checkpointer(self, read_only: bool = False) -> Checkpointer:
        """The run's checkpoints; `read_only` for readers (eval, export) of a possibly live run."""
        return Checkpointer(
            self.workdir / "checkpoints",
            fingerprint=self.setup.fingerprint(),
            keep_last=self.config.train.keep_checkpoints,
            read_only=read_only,
        )

    def restore(self, step: int | None = None) -> tuple[TrainState, dict[str, Any]]:
        """The `TrainState` of checkpoint `step` (default: the newest good one) and its metadata."""
        _, state_like = init_train_state(
            self._model, self._value_head, self.setup.update, self.keys["state"], self.batch_like()
        )
        rollout_like = self.rollout.init(self.keys["rollout"], self.config.train.num_envs)
        with self.checkpointer(read_only=True) as checkpoints:
            if checkpoints.latest_step() is None:
                raise CheckpointError(f"no checkpoint in {self.workdir / 'checkpoints'}")
            _, tree, host = checkpoints.restore(
                {"state": state_like, "rollout": rollout_like}, step
            )
        return tree["state"], host

    def model_with(self, state: TrainState | None = None):
        """The policy as an NNX module: the run's fresh/warm-started model, or `state`'s policy."""
        if state is None:
            return self._model
        return nnx.merge(self.defs.model, nnx.merge_state(state.policy, state.base))

    def run(self) -> dict[str, Any]:
        config = self.config
        self.mesh = self._make_mesh()  # before anything is written: a bad mesh is one line
        self.echo(f"run directory: {self.workdir}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
        checkpoints = self.checkpointer()
        wandb = {"project": config.train.wandb_project} if config.train.wandb_project else None
        self.logger = MetricsLogger(self.workdir, tensorboard=config.train.tensorboard, wandb=wandb)
        try:
            restored = self._restore(checkpoints) if self.resume else None
            if restored is None:
                if self.resume:
                    self.echo(f"no checkpoint in {self.workdir / 'checkpoints'}: starting fresh")
                self.logger.truncate_after(-1)  # lines of an earlier attempt without checkpoints
                state, rollout_state, host = self._fresh()
            else:
                state, rollout_state, host = restored
                self.logger.truncate_after(host["update"])
            state, rollout_state = self._place(state, rollout_state)
            state, host = self._loop(state, rollout_state, host, checkpoints)
            checkpoints.wait()
            return self._summary(state, host)
        finally:
            checkpoints.close()
            self.logger.close()

    def _teacher_targets(self, state: TrainState, batch: Batch, episodes, update: int) -> Batch:
        """The SFT targets of `gtr` (oracle) and `turbo_sft` (merged teacher); else the batch."""
        setup = self.setup
        if setup.update.mode == "gtr":
            return teachers.with_oracle_corrections(
                setup.env_name, batch, episodes["fields"], setup.tokenizer, setup.spec,
                setup.sampling.max_new_tokens, setup.template.style,
            )  # fmt: skip
        if setup.update.mode == "turbo_sft":
            key = jax.random.fold_in(self.keys["teacher"], update)
            return teachers.teacher_replies(
                self.defs, state, setup.update, batch, key, setup.sampling, setup.spec
            )
        return batch

    def _log_line(
        self, batch: Batch, metrics, episodes, host, window: live.LiveWindow, update: int
    ) -> tuple[live.LiveWindow, dict[str, Any]]:
        """The live window after update `update` (0-based: the rollout's update) and the update's
        metrics line."""
        restart = self.setup.update.rollout_group_size > 1
        window, ended = _episode_stats(episodes, window, update, restart)
        return window, {
            "env_steps": host["env_steps"],
            "success_rate": window.success_rate,
            "return_mean": window.return_mean,
            "episodes": ended,
            "valid_rate": float(np.mean(np.asarray(batch.valid))),
            "thought_len": _thought_words(self.setup, batch),
            "reward_mean": float(np.mean(np.asarray(batch.reward))),
            **{k: float(metrics[k]) for k in LOG_KEYS if k in metrics},
        }

    def _loop(self, state, rollout_state, host, checkpoints):
        setup, train = self.setup, self.config.train
        # An old checkpoint without the per-env episode starts: `LiveWindow.from_host` falls back.
        window = live.LiveWindow.from_host(host, train.num_envs, SUCCESS_WINDOW)
        bar = _bar(train.updates, f"{setup.update.mode} {setup.env_name}")
        bar.advance(host["update"])
        clock = time.perf_counter() - host["wall_s"]
        timer = self.timings
        bad_updates = 0
        for update in range(host["update"], train.updates):
            with timer("rollout"):
                rollout_state, batch, episodes = jax.block_until_ready(
                    self.rollout.run(rollout_state, state.base, state.policy, state.value_head,
                                     train.turns_per_update)
                )  # fmt: skip
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
                    line.update(self.evaluate(state, update + 1, levels=True))
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
                        {"state": state, "rollout": rollout_state},
                        metadata=host,
                        metrics={"success_rate": line.get("eval/success_rate")},
                    )
                if not saved:
                    self.echo(f"update {update + 1}: state not finite, checkpoint skipped")
        bar.close()
        return state, host

    def _summary(self, state: TrainState, host: dict[str, Any]) -> dict[str, Any]:
        final = {k: v for k, v in self._last_eval().items()}
        summary = {
            "env": self.setup.env_name,
            "mode": self.setup.update.mode,
            "updates": host["update"],
            "env_steps": host["env_steps"],
            "wall_s": host["wall_s"],
            "initial": host.get("initial_eval", {}),
            "final": final,
            "warm_start": host.get("warm_start", {}),
        }
        (self.workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _last_eval(self) -> dict[str, float]:
        from gtr_turbo_jax.train.logger import read_metrics

        for line in reversed(read_metrics(self.workdir)):
            if "eval/success_rate" in line and line.get("step", 0) > 0:
                return {k: v for k, v in line.items() if k.startswith("eval/")}
        return {}


def _shown(line: dict[str, Any]) -> dict[str, Any]:
    """What the progress bar shows of a metrics line: live success, KL, valid replies, eval."""
    keys = {"success": "success_rate", "kl": "kl_mean", "valid": "valid_rate",
            "eval": "eval/success_rate"}  # fmt: skip
    return {short: line.get(key) for short, key in keys.items()}


class Timings:
    """Seconds spent per phase of the loop, summed (`with timings("rollout"): ...`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self._last: dict[str, float] = {}

    def lap(self) -> dict[str, float]:
        """Seconds per phase since the previous lap."""
        since = {k: v - self._last.get(k, 0.0) for k, v in self.seconds.items()}
        self._last = dict(self.seconds)
        return since

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start


class _bar:
    """A tqdm progress bar (stderr) with a postfix of the live figures."""

    def __init__(self, total: int, label: str):
        from tqdm.auto import tqdm

        self._tqdm = tqdm(total=total, desc=label, dynamic_ncols=True, leave=True)

    def advance(self, count: int) -> None:
        if count:
            self._tqdm.update(count)

    def step(self, count: int = 1, shown: dict[str, Any] | None = None) -> None:
        if shown:
            self._tqdm.set_postfix(
                {k: f"{v:.3f}" for k, v in shown.items() if v is not None}, refresh=False
            )
        self._tqdm.update(count)

    def close(self) -> None:
        self._tqdm.close()


def train(config: ml_collections.ConfigDict, workdir: str | Path, *, resume: bool = False,
          echo: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Trains the run `config` describes in `workdir` (see `Trainer`); returns the summary."""
    return Trainer(config, workdir, resume=resume, echo=echo).run()


__all__ = ["CheckpointError", "Trainer", "TrainingError", "train"]
