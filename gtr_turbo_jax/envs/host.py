"""Host-env adapter: the batched gymnax interface over Python (non-JAX) environments.

ALFWorld and other simulators cannot run inside jit. `HostEnvAdapter` steps `num_envs` Python envs
outside jit and returns what `jax.vmap(env.step)` over a JAX env would: stacked numpy observations,
rewards, terminated/truncated flags, automatic reset and `info["final_observation"]` (and an env's
own `info["success"]`, stacked). The host-driven rollout calls it exactly where the compiled
rollout calls the JAX env.

A Python env keeps the `HostEnv` protocol below; `PythonEnv` is the base class of one that
`gtr-turbo train --env=module:Class` trains (it carries an `AgentSpec` like a JAX env). Its state
lives inside the Python objects, so the `state` the adapter returns is only a record of episode
bookkeeping: unlike a JAX env, stepping the same `state` twice does not replay it.

Seeds: env i is reset with a Python int drawn from `split(key, num_envs)[i]`, the key the compiled
rollout hands JAX env i (`jax.random.bits`, 0..2**32-1), so a Python twin of a JAX env can draw
its levels as the JAX env does (`PySokoban`: level `seed % N`, as `Sokoban`'s `bits(key) % N`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from gtr_turbo_jax.envs.agent import AgentSpec


class HostEnv(Protocol):
    action_names: Sequence[str]

    def reset(self, seed: int) -> dict[str, np.ndarray]: ...

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]: ...


class PythonEnv:
    """Base class of a Python env that the CLI trains through the host rollout.

    A subclass sets `action_names` and `agent_spec` (the prompt text, reply format and optional
    expert / grounding, as a JAX env's) and implements `image_shape`, `reset(seed) -> obs` and
    `step(action) -> (obs, reward, terminated, truncated, info)`, where `obs` is
    `{"image": uint8[H, W, 3], **prompt_fields}` (numpy, the same shapes every step). Its
    constructor arguments with plain defaults are the config's `env` section; a `split` argument
    ("train" / "test") gives evaluation held-out episodes; `max_steps_in_episode` (an attribute)
    bounds an evaluation episode. `step`'s `info` may hold `success` (bool): whether the episode
    that ends with this step succeeded, where a return > 0 (the default rule) is not a win. An env
    whose reset is costly (a simulator) may define `prompt_field_shapes() -> {name:
    jax.ShapeDtypeStruct}` so that building the prompt template starts no game."""

    action_names: ClassVar[Sequence[str]] = ()
    agent_spec: ClassVar[AgentSpec | None] = None
    max_steps_in_episode: int = 100

    @property
    def image_shape(self) -> tuple[int, int, int]:
        raise NotImplementedError

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict]:
        raise NotImplementedError


@dataclass(frozen=True)
class HostEnvState:
    time: np.ndarray  # [num_envs] steps taken in the current episode
    episodes: np.ndarray  # [num_envs] episodes started so far


def _stack(observations: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([np.asarray(o[k]) for o in observations]) for k in observations[0]}


def _seeds(key: jax.Array, n: int, group_size: int = 1) -> list[int]:
    """Python-int seeds of the `n` envs from a JAX key: env i's from `split(key, n)[i]`, as the
    compiled rollout splits it for JAX env i, so a run is reproducible from its key alone;
    `group_size` > 1: `group_size` consecutive envs share one seed (the compiled rollout's
    `grouped_reset`: one level and start per group)."""
    if n % group_size:
        raise ValueError(f"{n} envs do not split into groups of {group_size}")
    keys = jnp.repeat(jax.random.split(key, n // group_size), group_size, axis=0)
    bits = jax.vmap(lambda k: jax.random.bits(k, (), jnp.uint32))(keys)
    return [int(s) for s in np.asarray(bits)]


class HostEnvAdapter:
    """`num_envs` Python envs behind `reset(key) -> (obs, state)` and `step(key, state, actions) ->
    (obs, state, reward, terminated, truncated, info)`, all arrays with a leading `[num_envs]` axis."""

    def __init__(self, make_env: Callable[[], HostEnv], num_envs: int):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.envs = [make_env() for _ in range(num_envs)]
        self.action_names = tuple(self.envs[0].action_names)
        self.num_envs = num_envs

    @property
    def num_actions(self) -> int:
        return len(self.action_names)

    def reset(
        self, key: jax.Array, params: Any = None, group_size: int = 1
    ) -> tuple[dict[str, np.ndarray], HostEnvState]:
        """Fresh episodes in every env (`group_size` consecutive envs from one seed)."""
        del params
        seeds = _seeds(key, self.num_envs, group_size)
        obs = [env.reset(seed) for env, seed in zip(self.envs, seeds)]
        n = self.num_envs
        return _stack(obs), HostEnvState(np.zeros(n, np.int32), np.ones(n, np.int32))

    def step(self, key: jax.Array, state: HostEnvState, action: Any, params: Any = None):
        del params
        actions = np.asarray(action).reshape(-1)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"expected {self.num_envs} actions, got shape {np.shape(action)}")
        bad = actions[(actions < 0) | (actions >= self.num_actions)]
        if bad.size:
            raise ValueError(
                f"action {int(bad[0])} out of range: valid ids are 0..{self.num_actions - 1} "
                f"({', '.join(self.action_names)})"
            )
        seeds = _seeds(key, self.num_envs)
        obs, final_obs, rewards, terminated, truncated, success = [], [], [], [], [], []
        for env, a, seed in zip(self.envs, actions, seeds):
            o, r, term, trunc, env_info = env.step(int(a))
            success.append(env_info.get("success") if isinstance(env_info, dict) else None)
            final_obs.append(o)
            if term or trunc:
                o = env.reset(seed)
            obs.append(o)
            rewards.append(r)
            terminated.append(term)
            truncated.append(trunc)
        done = np.asarray(terminated) | np.asarray(truncated)
        state = HostEnvState(
            np.where(done, 0, state.time + 1).astype(np.int32),
            (state.episodes + done).astype(np.int32),
        )
        info = {
            "terminated": np.asarray(terminated),
            "truncated": np.asarray(truncated),
            "final_observation": _stack(final_obs),
        }
        if all(s is not None for s in success):  # the envs' own success (`PythonEnv.step`)
            info["success"] = np.asarray(success, bool)
        return (
            _stack(obs),
            state,
            np.asarray(rewards, np.float32),
            np.asarray(terminated),
            np.asarray(truncated),
            info,
        )
