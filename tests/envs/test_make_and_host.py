"""`envs.make`, gymnax registration, and the host adapter over a real Python env (PySokoban)."""

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gtr_turbo_jax.envs import ENVS, make
from gtr_turbo_jax.envs.host import HostEnvAdapter
from gtr_turbo_jax.envs.sokoban import LevelBank, PySokoban, Sokoban, default_bank

# --- make -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ENVS))
def test_make_builds_every_env_with_an_image_and_legal_actions(name):
    env, params = make(name)
    obs, state = env.reset(jax.random.key(0), params)
    assert obs["image"].dtype == jnp.uint8 and obs["image"].shape == env.image_shape
    assert env.image_shape[2] == 3 and len(env.action_names) == env.num_actions >= 2
    assert len(set(env.action_names)) == env.num_actions  # action strings are distinct


def test_make_splits_overrides_between_constructor_and_params():
    env, params = make("sokoban", size=(8, 8), num_boxes=2, max_steps_in_episode=17)
    assert env.image_shape[:2] == (8 * 28, 8 * 28)
    assert int(params.max_steps_in_episode) == 17


def test_make_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown env 'sokobam'.*sokoban, points24"):
        make("sokobam")


def test_make_unknown_override_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown override.*boxes.*valid:.*num_boxes"):
        make("sokoban", boxes=2)


def test_gymnax_make_finds_our_envs():
    env, params = gymnax.make("Points24-gtr")
    assert env.action_names == make("points24")[0].action_names
    env, _ = gymnax.make("Sokoban-gtr", size=(8, 8), num_boxes=2)
    assert env.image_shape[:2] == (224, 224)


# --- host adapter -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_level():
    """A bank with one level: the Python and the JAX env then start (and auto-reset) identically."""
    bank = default_bank((6, 6), 1, "train")
    return LevelBank(bank.levels[:1], bank.solution_lengths[:1])


def test_host_adapter_matches_the_jax_env_step_for_step(one_level):
    n, steps = 4, 40
    host = HostEnvAdapter(
        lambda: PySokoban(bank=one_level.levels, max_steps_in_episode=12), num_envs=n
    )
    env = Sokoban(bank=one_level)
    params = env.default_params.replace(max_steps_in_episode=12)
    keys = jax.random.split(jax.random.key(0), n)
    jax_obs, jax_state = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
    jax_step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    host_obs, host_state = host.reset(jax.random.key(0))
    actions = np.random.default_rng(0).integers(0, 4, size=(steps, n))
    ended = 0
    for t in range(steps):
        key = jax.random.key(t)
        jax_obs, jax_state, r, term, trunc, info = jax_step(
            jax.random.split(key, n), jax_state, jnp.asarray(actions[t]), params
        )
        host_obs, host_state, hr, hterm, htrunc, hinfo = host.step(key, host_state, actions[t])
        np.testing.assert_allclose(hr, np.asarray(r), atol=1e-6)
        np.testing.assert_array_equal(hterm, np.asarray(term))
        np.testing.assert_array_equal(htrunc, np.asarray(trunc))
        np.testing.assert_array_equal(host_obs["image"], np.asarray(jax_obs["image"]))
        np.testing.assert_array_equal(
            hinfo["final_observation"]["image"], np.asarray(info["final_observation"]["image"])
        )
        ended += int((hterm | htrunc).sum())
    assert ended >= n  # the 12-step limit forced auto-resets: they were compared too
    assert (host_state.episodes >= 2).all()


def test_host_adapter_is_reproducible_from_its_key():
    def rollout():
        host = HostEnvAdapter(lambda: PySokoban(bank=default_bank((6, 6), 1, "train").levels), 3)
        obs, state = host.reset(jax.random.key(7))
        frames = [obs["image"]]
        for t in range(5):
            obs, state, *_ = host.step(jax.random.key(t), state, np.array([0, 1, 2]))
            frames.append(obs["image"])
        return np.stack(frames)

    np.testing.assert_array_equal(rollout(), rollout())


def test_host_adapter_rejects_bad_actions(one_level):
    host = HostEnvAdapter(lambda: PySokoban(bank=one_level.levels), num_envs=2)
    _, state = host.reset(jax.random.key(0))
    with pytest.raises(ValueError, match="action 4 out of range: valid ids are 0..3"):
        host.step(jax.random.key(1), state, np.array([0, 4]))
    with pytest.raises(ValueError, match="expected 2 actions"):
        host.step(jax.random.key(1), state, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        HostEnvAdapter(lambda: PySokoban(bank=one_level.levels), num_envs=0)
