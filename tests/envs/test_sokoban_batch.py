"""Sokoban under jit + vmap: 1024 envs at once, agreement with single-env steps, and no
recompilation when a params value changes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gtr_turbo_jax.envs.sokoban import Sokoban

NUM_ENVS = 1024


@pytest.fixture(scope="module")
def env():
    return Sokoban()


@pytest.fixture(scope="module")
def batched(env):
    reset = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    return reset, step


def test_vmap_over_1024_envs_matches_single_steps(env, batched):
    reset, step = batched
    params = env.default_params
    obs, state = reset(jax.random.split(jax.random.key(0), NUM_ENVS), params)
    assert obs["image"].shape == (NUM_ENVS, 168, 168, 3)
    assert len(np.unique(np.asarray(state.level))) > 100  # levels drawn per env
    keys = jax.random.split(jax.random.key(1), NUM_ENVS)
    actions = jax.random.randint(jax.random.key(2), (NUM_ENVS,), 0, 4)
    out = step(keys, state, actions, params)
    next_obs, next_state, reward, terminated, truncated, info = out
    assert reward.shape == terminated.shape == truncated.shape == (NUM_ENVS,)
    assert info["final_observation"]["image"].shape == (NUM_ENVS, 168, 168, 3)
    single_step = jax.jit(env.step)
    for i in (0, 17, NUM_ENVS - 1):
        one = jax.tree.map(lambda x, i=i: x[i], state)
        want = single_step(keys[i], one, actions[i], params)
        got = jax.tree.map(lambda x, i=i: x[i], out)
        for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
            np.testing.assert_array_equal(np.asarray(w), np.asarray(g))


def test_changing_params_values_does_not_recompile(env, batched):
    _, step = batched
    params = env.default_params
    n = NUM_ENVS  # the shapes of the test above: its compilation is reused
    _, state = jax.vmap(env.reset_to, in_axes=(0, None))(jnp.arange(n), params)
    keys = jax.random.split(jax.random.key(3), n)
    actions = jnp.zeros(n, jnp.int32)
    step(keys, state, actions, params)
    compiled = step._cache_size()
    changed = params.replace(
        step_penalty=-0.25, max_steps_in_episode=1, solved_reward=3.0, box_on_target_reward=2.0
    )
    _, _, reward, _, truncated, _ = step(keys, state, actions, changed)
    assert step._cache_size() == compiled
    # The new values are used: no level here is solved in one move.
    assert np.all(np.asarray(truncated))
    np.testing.assert_allclose(np.asarray(reward)[np.asarray(reward) < 0], -0.25)
    # A different bank of the same shape is a value change too.
    shuffled = params.replace(levels=jax.tree.map(lambda x: x[::-1], params.levels))
    step(keys, state, actions, shuffled)
    assert step._cache_size() == compiled


def test_render_image_false_leaves_the_image_out():
    env = Sokoban(render_image=False)
    obs, _ = env.reset(jax.random.key(0))
    assert set(obs) == {"grid", "player"}
