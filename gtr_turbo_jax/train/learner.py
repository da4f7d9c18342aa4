"""The model side of a run, built from its config: what the loop and the commands share.

`Learner(config)` holds the setup (env, tokenizer, sampler, update config), the modules and their
defs, the run's keys, the rollout and the held-out evaluator, and makes the states: a fresh
`TrainState`, or the one a checkpoint holds (`restore`). A JAX env gets the compiled rollout
(`rollout.multiturn`); a Python env (`envs.PythonEnv`) the host rollout (`rollout.host`), whose
envs live in Python objects: its checkpoints hold the rollout's key, not the envs, so a resumed
run continues from the checkpoint's policy with fresh episodes (a JAX env's resume is exact). The loop (`train.trainer`) adds the
run directory and the update; `gtr-turbo eval | export | sft` (`train.commands`) need no more than
this.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from gtr_turbo_jax.rollout.batch import Batch
from gtr_turbo_jax.rollout.host import make_host_rollout
from gtr_turbo_jax.rollout.multiturn import RolloutState, make_rollout
from gtr_turbo_jax.train.checkpoint import Checkpointer, CheckpointError
from gtr_turbo_jax.train.progress import Bar
from gtr_turbo_jax.train.run_config import ConfigError
from gtr_turbo_jax.train.setup import build_model, build_setup, build_teacher
from gtr_turbo_jax.train.state import TrainState, init_train_state, model_defs, split_model


def run_keys(seed: int) -> dict[str, jax.Array]:
    """The run's root keys, one per consumer: everything random derives from the seed."""
    root = jax.random.key(seed)
    names = ("state", "rollout", "warm_start", "demos", "eval", "teacher")
    return dict(zip(names, jax.random.split(root, len(names))))


class Learner:
    """The setup, modules, keys, rollout and evaluator of the run `config` describes."""

    def __init__(self, config: ml_collections.ConfigDict, with_teacher: bool = True):
        """`with_teacher=False`: a reader of the policy (eval, export), whose states hold no
        external teacher; nothing of it is read."""
        self.config = config
        self.setup = setup = build_setup(config, with_teacher)
        self.keys = run_keys(config.train.seed)
        self.model, self.value_head = build_model(setup)
        # An external teacher's weights are read when a state needs them (`init_state`,
        # `restore`); a reader's learner (eval, export) has no teacher at all.
        self.defs = model_defs(self.model, self.value_head, build_teacher(setup, abstract=True))
        common = (setup.template, setup.spec, setup.image_config, setup.sampling, self.defs)
        options = dict(
            format_reward=setup.format_reward,
            constraint=setup.constraint,
            group_size=setup.update.rollout_group_size,
        )
        if setup.is_python_env:
            self.rollout = make_host_rollout(setup.env_factory, *common, **options)
        else:
            self.rollout = make_rollout(setup.env, setup.env_params, *common, **options)
        self._evaluator = None

    @property
    def evaluator(self):
        """The held-out evaluator (built on first use: training without evaluations skips it)."""
        if self._evaluator is None:
            from gtr_turbo_jax.rollout.evaluate import Evaluator, make_evaluator

            setup, train = self.setup, self.config.train
            if setup.is_python_env:  # the same first-episode evaluation, over Python envs
                rollout = make_host_rollout(
                    setup.eval_env_factory, setup.template, setup.spec, setup.image_config,
                    setup.eval_sampling, self.defs, constraint=setup.constraint,
                )  # fmt: skip
                # In rounds of the training's env count: each env may be a whole simulator.
                self._evaluator = Evaluator(
                    setup.env_name, rollout, setup.tokenizer, train.eval_episodes,
                    setup.max_steps_in_episode, train.record_episodes, train.num_envs,
                )  # fmt: skip
                return self._evaluator
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
        return Batch.dummy(
            train.turns_per_update,
            train.num_envs,
            setup.template.max_length,
            setup.sampling.max_new_tokens,
            setup.image_config.patch_dim,
            self.rollout.image_grid,
            teacher_len=setup.sampling.max_new_tokens if setup.update.uses_sft else 1,
        )

    # -- states ---------------------------------------------------------------------------------

    def init_state(self, with_teacher: bool = True) -> TrainState:
        """A fresh `TrainState` of the modules as they are now (after a warm start, its model).
        An external teacher is loaded (its buffers become the state's: the update donates them),
        or without `with_teacher` only its shapes."""
        teacher = build_teacher(self.setup, abstract=not with_teacher)  # None for a reader
        defs, state = init_train_state(
            self.model, self.value_head, self.setup.update, self.keys["state"], self.batch_like(),
            teacher,
        )  # fmt: skip
        if defs != self.defs:
            raise ValueError(f"{self.setup.update.teacher_path}: the teacher's weights do not "
                             "match its config.json")  # fmt: skip
        return state

    def init_rollout(self) -> RolloutState:
        return self.rollout.init(self.keys["rollout"], self.config.train.num_envs)

    def checkpointer(self, directory, read_only: bool = False) -> Checkpointer:
        """The checkpoints of this run in `directory`; `read_only` for readers (eval, export) of a
        possibly live run."""
        return Checkpointer(
            directory,
            fingerprint=self.setup.fingerprint(),
            keep_last=self.config.train.keep_checkpoints,
            read_only=read_only,
        )

    def checkpoint_tree(self, state: TrainState, rollout_state) -> dict[str, Any]:
        """What a checkpoint holds of the states: both, or with a Python env the train state and
        the rollout's key (the envs' state is in Python objects). An external teacher is not
        saved: it never changes, and `rl.teacher_path` has it."""
        if self.setup.is_python_env:
            return {"state": self._saved(state), "rollout_key": rollout_state.key}
        return {"state": self._saved(state), "rollout": rollout_state}

    def _saved(self, state: TrainState) -> TrainState:
        return state.replace(teacher=nnx.State({})) if self.setup.update.external_teacher else state

    def restore(
        self, checkpoints: Checkpointer, step: int | None = None
    ) -> tuple[int, TrainState, Any, dict[str, Any]]:
        """`(step, train state, rollout state, host-side counters)` of checkpoint `step` (default:
        the newest good one). With a Python env the rollout state is a fresh one from the saved
        key (new episodes). An external teacher is loaded again (a reader's learner: none)."""
        if checkpoints.latest_step() is None:
            raise CheckpointError(f"no checkpoint in {checkpoints.directory}")
        fresh = self.init_state(with_teacher=False)
        if self.setup.is_python_env:  # not `init_rollout`: that would start the envs twice
            like = {"state": self._saved(fresh), "rollout_key": self.keys["rollout"]}
        else:
            like = self.checkpoint_tree(fresh, self.init_rollout())
        step, tree, host = checkpoints.restore(like, step)
        if self.setup.is_python_env:
            rollout_state = self.rollout.init(tree["rollout_key"], self.config.train.num_envs)
        else:
            rollout_state = tree["rollout"]
        state = tree["state"]
        teacher = build_teacher(self.setup)  # an external teacher is not in the checkpoint
        if teacher is not None:
            state = state.replace(teacher=nnx.state(teacher))
        return step, state, rollout_state, host

    def model_with(self, state: TrainState | None = None) -> nnx.Module:
        """The policy as an NNX module: the run's fresh/warm-started model, or `state`'s policy."""
        if state is None:
            return self.model
        return nnx.merge(self.defs.model, nnx.merge_state(state.policy, state.base))

    # -- warm start and evaluation --------------------------------------------------------------

    def warm_start(self) -> dict[str, float]:
        """Supervised warm start of the fresh model on the expert's demonstrations (in place)."""
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
        graphdef, trainable, base = split_model(self.model)
        bar = Bar(ws.steps, "warm start")
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
        nnx.update(self.model, trainable)
        return {
            "warm_start/loss_first": float(losses[0]),
            "warm_start/loss_last": float(np.mean(losses[-10:])),
            "warm_start/seconds": time.perf_counter() - start,
        }

    def evaluate(self, state: TrainState):
        """The evaluator's result for `state` (metrics and episodes). The same key at every
        evaluation: the same held-out levels (and, when sampling, the same draws), so the warm
        start and the trained model are compared pair for pair."""
        return self.evaluator(state.base, state.policy, state.value_head, self.keys["eval"])


__all__ = ["Learner", "run_keys"]
