"""Wrappers and the env base class, on a tiny hand-checkable env defined here.

`Walk`: position 0..4 on a line, action 0 = left, 1 = right. Reward -1 for bumping the left wall,
+1 for reaching 4 (terminated), 0 otherwise; truncated after `max_steps_in_episode` steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from gymnax.environments import environment

from gtr_turbo_jax.envs.base import VisualEnv
from gtr_turbo_jax.envs.wrappers import EarlyTermination, EpisodeStatistics


@struct.dataclass
class WalkState(environment.EnvState):
    pos: jax.Array


@struct.dataclass
class WalkParams(environment.EnvParams):
    max_steps_in_episode: int = 6
    start: int = 1


class Walk(VisualEnv):
    action_names = ("left", "right")

    @property
    def default_params(self):
        return WalkParams()

    @property
    def image_shape(self):
        return (1, 5, 3)

    def reset_env(self, key, params):
        state = WalkState(time=0, pos=jnp.asarray(params.start, jnp.int32))
        return self.observe(key, state, None, params), state

    def step_env(self, key, state, action, params):
        target = state.pos + 2 * action - 1
        bump = target < 0
        pos = jnp.clip(target, 0, 4)
        reward = jnp.where(bump, -1.0, jnp.where(pos == 4, 1.0, 0.0))
        state = WalkState(time=state.time + 1, pos=pos)
        return self.observe(key, state, action, params), state, reward, pos == 4, {}

    def render(self, state, params):
        return (jnp.arange(5) == state.pos).astype(jnp.uint8)[None, :, None].repeat(3, -1) * 255

    def prompt_fields(self, state, params):
        return {"pos": state.pos}


def run(env, actions, params=None):
    """Step `env` through `actions`; return rewards, terminated, truncated, positions after reset."""
    params = env.default_params if params is None else params
    obs, state = env.reset(jax.random.key(0), params)
    out = []
    for i, a in enumerate(actions):
        obs, state, r, term, trunc, info = env.step(jax.random.key(i + 1), state, a, params)
        out.append((float(r), bool(term), bool(trunc), int(obs["pos"]), info))
    return out


def test_base_step_auto_resets_and_keeps_final_observation():
    steps = run(Walk(), [1, 1, 1])  # 1 -> 2 -> 3 -> 4 (terminated, reset to 1)
    assert [s[:4] for s in steps] == [
        (0.0, False, False, 2),
        (0.0, False, False, 3),
        (1.0, True, False, 1),
    ]
    assert int(steps[-1][4]["final_observation"]["pos"]) == 4


def test_base_clips_out_of_range_actions():
    assert run(Walk(), [7])[0][3] == 2  # 7 -> 1 (right)
    assert run(Walk(), [-3])[0][3] == 0  # -3 -> 0 (left)


def test_base_observation_and_action_spaces():
    env = Walk()
    space = env.observation_space()
    assert space.spaces["image"].shape == (1, 5, 3) and space.spaces["image"].dtype == jnp.uint8
    assert space.spaces["pos"].shape == ()
    assert env.action_space().n == 2 and env.num_actions == 2


def test_early_termination_ends_episode_on_minus_one():
    bare = run(Walk(), [0, 0, 1])  # 1 -> 0 -> bump (-1, continues at 0) -> 1
    assert [s[:4] for s in bare] == [
        (0.0, False, False, 0),
        (-1.0, False, False, 0),
        (0.0, False, False, 1),
    ]
    wrapped = run(EarlyTermination(Walk()), [0, 0, 1])  # the bump ends the episode: reset to 1
    assert [s[:4] for s in wrapped] == [
        (0.0, False, False, 0),
        (-1.0, True, False, 1),
        (0.0, False, False, 2),
    ]
    assert int(wrapped[1][4]["final_observation"]["pos"]) == 0


def test_early_termination_keeps_truncation_and_delegates():
    env = EarlyTermination(Walk())
    steps = run(env, [1, 0] * 3, WalkParams(max_steps_in_episode=4))
    assert [s[2] for s in steps] == [False, False, False, True, False, False]
    assert env.action_names == ("left", "right") and env.image_shape == (1, 5, 3)


def test_episode_statistics_reports_each_finished_episode():
    env = EpisodeStatistics(EarlyTermination(Walk()))
    # episode 1: right x3 -> +1 (return 1, length 3, success); episode 2: left x2 -> 0, -1 (return -1)
    steps = run(env, [1, 1, 1, 0, 0])
    ended = [
        (float(s[4]["episode_return"]), int(s[4]["episode_length"]), bool(s[4]["success"]))
        for s in steps
        if bool(s[4]["returned_episode"])
    ]
    assert ended == [(1.0, 3, True), (-1.0, 2, False)]


def test_wrapped_env_jits_and_vmaps():
    env = EpisodeStatistics(EarlyTermination(Walk()))
    params = env.default_params
    keys = jax.random.split(jax.random.key(0), 16)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    actions = jnp.arange(16) % 2
    obs, state, reward, term, trunc, info = step(keys, state, actions, params)
    np.testing.assert_array_equal(obs["pos"], np.where(np.arange(16) % 2, 2, 0))
    assert obs["image"].shape == (16, 1, 5, 3)


def test_early_termination_rejects_non_visual_env():
    with pytest.raises(TypeError, match="VisualEnv"):
        EarlyTermination(object())
