"""Turn-level GAE against a direct-sum numpy transcription and hand-worked cases."""

from functools import partial

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gtr_turbo_jax.rl import gae

GAMMA, LAM = 0.9, 0.95
TURNS, ENVS = 7, 5


def gae_reference(rewards, values, next_values, terminated, truncated, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l}, the sum running to the end of the episode or rollout."""
    turns, envs = rewards.shape
    advantages = np.zeros((turns, envs))
    for e in range(envs):
        for t in range(turns):
            total, discount = 0.0, 1.0
            for u in range(t, turns):
                bootstrap = 0.0 if terminated[u, e] else next_values[u, e]
                delta = rewards[u, e] + gamma * bootstrap - values[u, e]
                total += discount * delta
                if terminated[u, e] or truncated[u, e]:
                    break
                discount *= gamma * lam
            advantages[t, e] = total
    return advantages


@pytest.fixture(scope="module")
def gae_jit():
    return jax.jit(partial(gae, gamma=GAMMA, lam=LAM))


def random_rollout(rng, done_prob=0.3):
    rewards = rng.normal(size=(TURNS, ENVS)).astype(np.float32)
    values = rng.normal(size=(TURNS, ENVS)).astype(np.float32)
    next_values = rng.normal(size=(TURNS, ENVS)).astype(np.float32)
    terminated = rng.random((TURNS, ENVS)) < done_prob
    truncated = (rng.random((TURNS, ENVS)) < done_prob) & ~terminated
    return rewards, values, next_values, terminated, truncated


@pytest.mark.parametrize("seed", range(4))
def test_gae_matches_reference_on_random_rollouts(gae_jit, seed):
    rollout = random_rollout(np.random.default_rng(seed))
    expected = gae_reference(*rollout, GAMMA, LAM)
    np.testing.assert_allclose(gae_jit(*rollout), expected, rtol=1e-5, atol=1e-5)


def test_gae_all_done_is_the_one_step_td_error(gae_jit):
    rewards, values, next_values, _, _ = random_rollout(np.random.default_rng(10))
    terminated = np.zeros((TURNS, ENVS), bool)
    terminated[:, :2] = True  # envs 0-1 terminate every turn, the others truncate every turn
    truncated = ~terminated
    advantages = np.asarray(gae_jit(rewards, values, next_values, terminated, truncated))
    np.testing.assert_allclose(advantages[:, :2], rewards[:, :2] - values[:, :2], rtol=1e-6)
    expected_truncated = rewards[:, 2:] + GAMMA * next_values[:, 2:] - values[:, 2:]
    np.testing.assert_allclose(advantages[:, 2:], expected_truncated, rtol=1e-5, atol=1e-6)


def test_gae_truncation_in_the_middle_bootstraps_and_cuts_the_recursion():
    # One env, 4 turns: step 1 is truncated (bootstrap from next_values[1]), step 3 terminates.
    rewards = np.array([[1.0], [2.0], [0.5], [3.0]], np.float32)
    values = np.array([[0.2], [0.4], [0.1], [0.3]], np.float32)
    next_values = np.array([[0.4], [5.0], [0.3], [7.0]], np.float32)
    terminated = np.array([[False], [False], [False], [True]])
    truncated = np.array([[False], [True], [False], [False]])
    g, gl = 0.5, 0.5 * 0.8
    a3 = 3.0 - 0.3  # terminated: no bootstrap from 7.0
    a2 = (0.5 + g * 0.3 - 0.1) + gl * a3
    a1 = 2.0 + g * 5.0 - 0.4  # truncated: bootstrap, and the recursion stops here
    a0 = (1.0 + g * 0.4 - 0.2) + gl * a1
    result = gae(rewards, values, next_values, terminated, truncated, gamma=g, lam=0.8)
    np.testing.assert_allclose(np.asarray(result)[:, 0], [a0, a1, a2, a3], rtol=1e-6)


def test_gae_with_gamma_and_lambda_one_is_the_monte_carlo_return_minus_value():
    rng = np.random.default_rng(3)
    rewards = rng.normal(size=(6, 2)).astype(np.float32)
    values = rng.normal(size=(6, 2)).astype(np.float32)
    next_values = rng.normal(size=(6, 2)).astype(np.float32)
    next_values[:-1] = values[1:]  # within an episode, the next observation's value is V(o_{t+1})
    no_done = np.zeros((6, 2), bool)
    result = gae(rewards, values, next_values, no_done, no_done, gamma=1.0, lam=1.0)
    # Telescoping: the intermediate values cancel, the last next_value bootstraps the cut rollout.
    expected = np.cumsum(rewards[::-1], axis=0)[::-1] + next_values[-1] - values
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    terminated=hnp.arrays(bool, (TURNS, ENVS)),
    truncated=hnp.arrays(bool, (TURNS, ENVS)),
    seed=st.integers(0, 2**16),
)
def test_gae_matches_reference_for_any_done_pattern(gae_jit, terminated, truncated, seed):
    rewards, values, next_values, _, _ = random_rollout(np.random.default_rng(seed))
    # Both flags at once can occur (a terminal step at the time limit): termination wins.
    expected = gae_reference(rewards, values, next_values, terminated, truncated, GAMMA, LAM)
    result = gae_jit(rewards, values, next_values, terminated, truncated)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "value"), [("gamma", 1.5), ("gamma", -0.1), ("lam", 2.0)])
def test_gae_rejects_out_of_range_discounts(name, value):
    zeros = np.zeros((2, 1), np.float32)
    kwargs = {"gamma": GAMMA, "lam": LAM, name: value}
    with pytest.raises(ValueError, match=rf"{name}={value} is out of range"):
        gae(zeros, zeros, zeros, zeros.astype(bool), zeros.astype(bool), **kwargs)
