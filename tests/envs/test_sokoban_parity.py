"""The JAX Sokoban and the pure-Python `PySokoban` agree step by step (rewards, terminated,
truncated, grids, player, images), on random action sequences mixed with solver plans so that
episodes also end by solving, and through automatic resets."""

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gtr_turbo_jax.envs.host import HostEnvAdapter
from gtr_turbo_jax.envs.sokoban import PySokoban, Sokoban, solve

NUM_PLANNED = 40  # levels per bank with a solver plan at hand


class Pair:
    def __init__(self, size, num_boxes):
        self.env = Sokoban(size=size, num_boxes=num_boxes)
        self.reset_to = jax.jit(self.env.reset_to)
        self.step = jax.jit(self.env.step)
        self.plans = [solve(level) for level in self.env.bank.levels[:NUM_PLANNED]]


@pytest.fixture(scope="module")
def small():
    return Pair((6, 6), 1)


@pytest.fixture(scope="module")
def hard():
    return Pair((8, 8), 2)


@st.composite
def episodes(draw):
    """(level, max_steps, blocked-move penalty, actions): a prefix of the level's plan (often all
    of it), then random moves, repeated segments so that play continues through resets."""
    index = draw(st.integers(0, NUM_PLANNED - 1))
    max_steps = draw(st.integers(3, 30))
    penalty = draw(st.sampled_from([0.0, -0.5]))
    segments = draw(
        st.lists(
            st.tuples(st.floats(0, 1), st.lists(st.integers(0, 3), max_size=12)),
            min_size=1,
            max_size=4,
        )
    )
    return index, max_steps, penalty, segments


def assert_same_observation(jax_obs, py_obs, what):
    for name in ("grid", "player", "image"):
        np.testing.assert_array_equal(np.asarray(jax_obs[name]), py_obs[name], err_msg=what)


def run_episode(pair, index, max_steps, penalty, segments, key_seed=0):
    params = pair.env.default_params.replace(
        max_steps_in_episode=max_steps, blocked_move_penalty=penalty
    )
    py = PySokoban(bank=pair.env.bank, max_steps_in_episode=max_steps, blocked_move_penalty=penalty)
    obs, state = pair.reset_to(index, params)
    assert_same_observation(obs, py.reset_to(index), "reset")
    t = 0
    for fraction, random_moves in segments:
        # Follow the current level's plan for a while (from its start, where it is valid).
        level = int(state.level)
        plan = pair.plans[level] if level < NUM_PLANNED and int(state.time) == 0 else []
        actions = plan[: round(fraction * len(plan))] + random_moves
        for action in actions:
            key = jax.random.key(key_seed + t)
            t += 1
            obs, state, reward, terminated, truncated, info = pair.step(key, state, action, params)
            py_obs, py_reward, py_terminated, py_truncated, py_info = py.step(action)
            what = f"level {level}, step {t}, action {action}"
            assert float(reward) == pytest.approx(py_reward, abs=1e-5), what
            assert (bool(terminated), bool(truncated)) == (py_terminated, py_truncated), what
            assert_same_observation(info["final_observation"], py_obs, what)
            if py_terminated or py_truncated:
                # The JAX env drew a new level; the reference restarts the same one.
                assert int(state.time) == 0
                assert_same_observation(obs, py.reset_to(int(state.level)), what + " reset")
                break


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(episode=episodes())
def test_jax_and_python_envs_agree(small, episode):
    run_episode(small, *episode)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(episode=episodes())
def test_jax_and_python_envs_agree_two_boxes_few(hard, episode):
    run_episode(hard, *episode)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(episode=episodes(), seed=st.integers(0, 2**16))
def test_jax_and_python_envs_agree_many(small, episode, seed):
    run_episode(small, *episode, key_seed=seed)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(episode=episodes(), seed=st.integers(0, 2**16))
def test_jax_and_python_envs_agree_two_boxes(hard, episode, seed):
    run_episode(hard, *episode, key_seed=seed)


def test_solver_plan_gives_the_same_return_in_both_envs(small):
    plan = small.plans[0]
    py = PySokoban(bank=small.env.bank)
    py.reset_to(0)
    rewards = [py.step(a)[1] for a in plan]
    assert py.done and rewards[-1] == pytest.approx(10.9)
    assert sum(rewards) == pytest.approx(-0.1 * len(plan) + 11.0)


def test_python_env_rejects_bad_actions_and_steps_before_reset(small):
    py = PySokoban(bank=small.env.bank)
    with pytest.raises(RuntimeError, match="call reset"):
        py.step(0)
    py.reset(seed=0)
    for bad in (-1, 4, 1.0, "Up"):
        with pytest.raises(ValueError, match=r"action .* out of range: valid ids are 0..3 \(Up"):
            py.step(bad)
    with pytest.raises(ValueError, match="level index 99999 out of range"):
        py.reset_to(99999)


def test_python_env_reset_by_seed_is_deterministic(small):
    py = PySokoban(bank=small.env.bank, render_image=False)
    firsts = [py.reset(seed)["grid"].tobytes() for seed in (1, 2, 3)]
    assert [py.reset(seed)["grid"].tobytes() for seed in (1, 2, 3)] == firsts
    assert len(set(firsts)) > 1
    assert set(py.reset(0)) == {"grid", "player"}


def test_python_env_runs_behind_the_host_adapter(small):
    adapter = HostEnvAdapter(
        lambda: PySokoban(bank=small.env.bank, max_steps_in_episode=2), num_envs=3
    )
    obs, state = adapter.reset(jax.random.key(0))
    assert obs["image"].shape == (3, 168, 168, 3) and obs["grid"].shape == (3, 6, 6)
    for i in range(2):
        obs, state, reward, terminated, truncated, info = adapter.step(
            jax.random.key(i + 1), state, np.array([0, 1, 2])
        )
    assert truncated.all() and np.all(state.time == 0)
    assert info["final_observation"]["grid"].shape == (3, 6, 6)
