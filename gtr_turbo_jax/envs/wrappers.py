"""Wrappers over our environments, each one concern.

- `StepWrapper`: delegates everything to the wrapped env; the base of wrappers that change a step.
- `EarlyTermination`: any reward <= -1 ends the episode, as GTR trains Points24 ("early truncation" in
  the papers). It acts *before* gymnax's automatic reset, so the ended episode really resets. The
  episode ends as terminated (no bootstrap), which is what the reference code's `done` means.
- `EpisodeStatistics`: running return and length per env; on the step that ends an episode, `info`
  carries that episode's return, length and success (return > 0, METHOD.md section 5).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from gtr_turbo_jax.envs.base import VisualEnv


class StepWrapper(VisualEnv):
    """A VisualEnv around another that delegates everything; a subclass overrides `step_env` (the
    reward or the episode's end). `name` is the wrapped env's plus the subclass's."""

    def __init__(self, env: VisualEnv):
        if not isinstance(env, VisualEnv):
            raise TypeError(f"{type(self).__name__} wraps a VisualEnv, got {type(env).__name__}")
        self._env = env
        self.action_names = env.action_names

    def __getattr__(self, name: str) -> Any:  # render helpers, constants, ...
        if name == "_env":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self._env, name)

    @property
    def name(self) -> str:
        return f"{self._env.name}+{type(self).__name__}"

    @property
    def agent_spec(self) -> Any:  # a wrapper changes steps, not what the agent is told
        return self._env.agent_spec

    @property
    def default_params(self) -> Any:
        return self._env.default_params

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._env.image_shape

    def reset_env(self, key, params):
        return self._env.reset_env(key, params)

    def step_env(self, key, state, action, params):
        return self._env.step_env(key, state, action, params)

    def is_truncated(self, state, params):
        return self._env.is_truncated(state, params)

    def render(self, state, params):
        return self._env.render(state, params)

    def prompt_fields(self, state, params):
        return self._env.prompt_fields(state, params)

    def observe(self, key, state, action, params):
        return self._env.observe(key, state, action, params)


class EarlyTermination(StepWrapper):
    """Ends the episode (terminated) on any reward <= `threshold` (default -1)."""

    def __init__(self, env: VisualEnv, threshold: float = -1.0):
        super().__init__(env)
        self.threshold = float(threshold)

    def step_env(self, key, state, action, params):
        obs, state, reward, terminated, info = self._env.step_env(key, state, action, params)
        return obs, state, reward, terminated | (reward <= self.threshold), info


@struct.dataclass
class EpisodeStatisticsState:
    env_state: Any
    episode_return: jax.Array  # running return of the current episode
    episode_length: jax.Array  # steps taken in the current episode


class EpisodeStatistics:
    """Tracks returns and lengths; adds `returned_episode`, `episode_return`, `episode_length` and
    `success` to `info` (the latter three meaningful where `returned_episode` is true)."""

    def __init__(self, env: VisualEnv):
        self._env = env

    def __getattr__(self, name: str) -> Any:
        if name == "_env":
            raise AttributeError(name)
        return getattr(self._env, name)

    @partial(jax.jit, static_argnames=("self",))
    def reset(self, key: jax.Array, params: Any = None):
        obs, env_state = self._env.reset(key, params)
        zero = jnp.zeros((), jnp.float32)
        return obs, EpisodeStatisticsState(env_state, zero, jnp.zeros((), jnp.int32))

    @partial(jax.jit, static_argnames=("self",))
    def step(self, key: jax.Array, state: EpisodeStatisticsState, action: Any, params: Any = None):
        obs, env_state, reward, terminated, truncated, info = self._env.step(
            key, state.env_state, action, params
        )
        done = terminated | truncated
        episode_return = state.episode_return + reward
        episode_length = state.episode_length + 1
        info = {
            **info,
            "returned_episode": done,
            "episode_return": episode_return,
            "episode_length": episode_length,
            "success": done & (episode_return > 0),
        }
        state = EpisodeStatisticsState(
            env_state,
            jnp.where(done, 0.0, episode_return),
            jnp.where(done, 0, episode_length),
        )
        return obs, state, reward, terminated, truncated, info
