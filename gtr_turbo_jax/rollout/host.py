"""The host-driven multi-turn rollout: jitted policy turns, Python envs stepped in between.

For environments that cannot run inside jit (ALFWorld, any Python simulator) behind
`envs.host.HostEnvAdapter`. Each turn is one call of a jitted policy turn (the compiled rollout's
own `make_policy_turn`: prompt -> prefill + value -> decode -> parse), then `adapter.step` in
Python (numpy observations, automatic reset, `info["final_observation"]`), then, only in turns
where an episode was truncated, one jitted value forward of the final observations (the compiled
rollout's `lax.cond`, decided on the host). The action history stays on the host. One jitted
`finish` stacks the rows and builds the same `Batch` with the compiled rollout's
`finish_rollout`, so for the same key schedule and the same env dynamics the two rollouts give the
same batch: `tests/rollout/test_host_rollout.py` checks that on Sokoban against `PySokoban`.

Key schedule: the compiled rollout's. `adapter.step` receives the turn's `step_key` (where the
compiled rollout splits it per env and hands each JAX env its part); `adapter.reset` receives the
`reset_key` that `init_rollout_state` splits per env.

The episode statistics (`EPISODE_METRICS`) are kept on the host with `EpisodeStatistics`' rules.
The Python envs hold their own state, so a `HostRolloutState` belongs to the adapter it names:
running it twice from the same state does not replay the envs.

Compilations: one `act` and one `values` per shape set (batch, prompt length, image size, reply
width), one `finish` per number of turns; none per turn or per call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gtr_turbo_jax.envs.host import HostEnv, HostEnvAdapter, HostEnvState, PythonEnv
from gtr_turbo_jax.models.defs import ModelDefs
from gtr_turbo_jax.rollout.batch import Batch
from gtr_turbo_jax.rollout.constraint import ActionConstraint
from gtr_turbo_jax.rollout.multiturn import (
    ReplyFn,
    check_format_reward,
    check_num_turns,
    check_reply_spec,
    finish_rollout,
    make_policy_turn,
    push_history,
    turn_row,
)
from gtr_turbo_jax.rollout.sampler import SamplingConfig
from gtr_turbo_jax.text.image import ImageConfig, image_grid_thw
from gtr_turbo_jax.text.parse import ReplySpec
from gtr_turbo_jax.text.prompts import PromptTemplate


@dataclasses.dataclass(frozen=True)
class HostRolloutState:
    """What carries from one host rollout call to the next (leading axis: envs)."""

    adapter: HostEnvAdapter  # the live Python envs this state belongs to
    adapter_state: HostEnvState
    obs: dict[str, np.ndarray]  # the observation each env shows now (`image` and prompt fields)
    history: np.ndarray  # int32[E, K]: the last K actions, oldest first, -1 for none
    key: jax.Array
    episode_return: np.ndarray  # float32[E]: running return of the current episodes
    episode_length: np.ndarray  # int32[E]: steps taken in the current episodes

    @property
    def num_envs(self) -> int:
        return self.history.shape[0]


class HostRollout(NamedTuple):
    """`init(key, num_envs) -> HostRolloutState`; `run(state, base, policy, value_head,
    num_turns) -> (state, Batch, episode_metrics)`, as `multiturn.Rollout`."""

    init: Callable[[jax.Array, int], HostRolloutState]
    run: Callable[..., tuple[HostRolloutState, Batch, dict[str, Any]]]
    image_grid: tuple[int, int, int]


def _probe(
    source: HostEnvAdapter | Callable[[], HostEnv],
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(action names, image shape) of the envs, read off one env: its `image_shape` (a
    `PythonEnv`: no game is started for it, which may be a whole simulator), else one reset of
    it (`init` resets every env before the first turn)."""
    env = source.envs[0] if isinstance(source, HostEnvAdapter) else source()
    if isinstance(env, PythonEnv):
        shape = tuple(int(x) for x in env.image_shape)
    else:
        shape = _image_shape(env.reset(0))
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"the host env's image has shape {shape}: need [H, W, 3]")
    return tuple(env.action_names), shape


def _image_shape(obs: dict[str, np.ndarray]) -> tuple[int, ...]:
    if "image" not in obs:
        raise ValueError(
            f"the host env's observation has keys {sorted(obs)}: the rollout needs an 'image' "
            "(uint8[H, W, 3]) beside the prompt fields"
        )
    return tuple(int(x) for x in np.shape(obs["image"]))


def _episode_statistics(
    episode_return: np.ndarray,
    episode_length: np.ndarray,
    reward: np.ndarray,
    done: np.ndarray,
    success: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """`EpisodeStatistics.step` on the host: (info, running return, running length). `success`:
    the envs' own flag (`PythonEnv.step`'s `info["success"]`); None: a return > 0 succeeds."""
    ended_return = (episode_return + reward).astype(np.float32)
    ended_length = (episode_length + 1).astype(np.int32)
    info = {
        "returned_episode": done,
        "episode_return": ended_return,
        "episode_length": ended_length,
        "success": done & ((ended_return > 0) if success is None else np.asarray(success, bool)),
    }
    return (
        info,
        np.where(done, np.float32(0), ended_return).astype(np.float32),
        np.where(done, 0, ended_length).astype(np.int32),
    )


def make_host_rollout(
    adapter_or_factory: HostEnvAdapter | Callable[[], HostEnv],
    template: PromptTemplate,
    spec: ReplySpec,
    image_config: ImageConfig,
    sampling: SamplingConfig,
    defs: ModelDefs,
    *,
    format_reward: tuple[float, float] = (0.0, 0.0),
    constraint: ActionConstraint | None = None,
    reply_fn: ReplyFn | None = None,
    group_size: int = 1,
) -> HostRollout:
    """Builds the host-driven rollout over Python envs.

    adapter_or_factory: a `HostEnvAdapter` (then `init`'s `num_envs` must be its size), or a
    factory of one Python env (`HostEnv` protocol), from which `init` builds an adapter of
    `num_envs` envs. Observations hold `image` (uint8[H, W, 3], the same size every step) and the
    prompt fields the template reads. The other arguments are `make_rollout`'s; with
    `group_size` > 1 every call starts fresh episodes, `group_size` consecutive envs from one seed
    (the compiled rollout's `grouped_reset`, key for key).
    """
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size={group_size!r}: need an int >= 1")
    if not (isinstance(adapter_or_factory, HostEnvAdapter) or callable(adapter_or_factory)):
        raise ValueError(
            f"adapter_or_factory={type(adapter_or_factory).__name__}: need a HostEnvAdapter or a "
            "callable that makes one Python env"
        )
    action_names, image_shape = _probe(adapter_or_factory)
    check_reply_spec(spec, action_names)
    format_reward = check_format_reward(format_reward)
    grid = image_grid_thw(image_shape[0], image_shape[1], image_config)
    history_length = template.history_length
    policy_turn = make_policy_turn(
        template, image_config, sampling, defs, grid, constraint=constraint, reply_fn=reply_fn
    )

    adapters: dict[int, HostEnvAdapter] = {}  # `init`'s envs by count (factory given)

    @jax.jit
    def act(base, policy, value_head, obs, history, spec, key):
        params = nnx.merge_state(policy, base)
        return policy_turn.act(params, value_head, obs, history, spec, key)

    @jax.jit
    def values(base, policy, value_head, obs, history):
        return policy_turn.values(nnx.merge_state(policy, base), value_head, obs, history)

    @jax.jit
    def finish(rows, bootstrap):  # one dispatch for the whole stacking (one compile per T)
        stacked = jax.tree.map(lambda *turns: jnp.stack(turns), *rows)
        return finish_rollout(stacked, bootstrap, format_reward, grid, image_config)

    def init(key: jax.Array, num_envs: int) -> HostRolloutState:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r}: need an int >= 1")
        if isinstance(adapter_or_factory, HostEnvAdapter):
            adapter = adapter_or_factory
            if adapter.num_envs != num_envs:
                raise ValueError(
                    f"num_envs={num_envs} but the adapter holds {adapter.num_envs} envs: pass "
                    "a factory of one env to choose the count at init"
                )
        else:  # built once per size: a reset restarts an env, so later inits reuse them
            if num_envs not in adapters:
                adapters[num_envs] = HostEnvAdapter(adapter_or_factory, num_envs)
            adapter = adapters[num_envs]
        key, reset_key = jax.random.split(key)
        obs, adapter_state = adapter.reset(reset_key)
        if _image_shape(obs)[1:] != image_shape:  # [num_envs, H, W, 3]
            raise ValueError(
                f"the host env's images have shape {_image_shape(obs)[1:]}, its image_shape "
                f"says {image_shape}"
            )
        return HostRolloutState(
            adapter=adapter,
            adapter_state=adapter_state,
            obs=obs,
            history=np.full((num_envs, history_length), -1, np.int32),
            key=key,
            episode_return=np.zeros(num_envs, np.float32),
            episode_length=np.zeros(num_envs, np.int32),
        )

    def restart(state: HostRolloutState) -> HostRolloutState:
        """Fresh episodes, one seed per group of envs; the key moves on by one split."""
        key, reset_key = jax.random.split(state.key)
        obs, adapter_state = state.adapter.reset(reset_key, group_size=group_size)
        return dataclasses.replace(
            state,
            adapter_state=adapter_state,
            obs=obs,
            history=np.full_like(state.history, -1),
            key=key,
            episode_return=np.zeros_like(state.episode_return),
            episode_length=np.zeros_like(state.episode_length),
        )

    def run(state: HostRolloutState, base, policy, value_head, num_turns: int):
        check_num_turns(num_turns)
        if group_size > 1:
            state = restart(state)
        adapter, adapter_state = state.adapter, state.adapter_state
        obs, history, key = state.obs, state.history, state.key
        episode_return, episode_length = state.episode_return, state.episode_length
        rows, zeros = [], jnp.zeros((state.num_envs,), jnp.float32)  # a device array, as values
        for _ in range(num_turns):
            key, step_key, acted = act(base, policy, value_head, obs, history, spec, key)
            action = np.asarray(acted.parsed.action)
            next_obs, adapter_state, reward, terminated, truncated, info = adapter.step(
                step_key, adapter_state, action
            )
            terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
            done = terminated | truncated
            history = push_history(history, action)
            truncation_value = zeros
            if truncated.any():  # the final observation's value, where an episode was cut short
                truncation_value = values(
                    base, policy, value_head, info["final_observation"], history
                )
            history = np.where(done[:, None], -1, history)
            reward = np.asarray(reward, np.float32)
            episode, episode_return, episode_length = _episode_statistics(
                episode_return, episode_length, reward, done, info.get("success")
            )
            rows.append(
                turn_row(
                    acted,
                    obs,
                    reward,
                    terminated,
                    truncated,
                    truncation_value,
                    episode,
                )
            )
            obs = next_obs
        bootstrap = values(base, policy, value_head, obs, history)
        batch, metrics = finish(rows, bootstrap)
        next_state = HostRolloutState(
            adapter=adapter,
            adapter_state=adapter_state,
            obs=obs,
            history=history,
            key=key,
            episode_return=episode_return,
            episode_length=episode_length,
        )
        return next_state, batch, metrics

    run.act, run.values, run.finish = act, values, finish  # for `_cache_size()` checks
    return HostRollout(init=init, run=run, image_grid=grid)


__all__ = ["HostRollout", "HostRolloutState", "make_host_rollout"]
