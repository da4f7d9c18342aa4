"""Group (GiGPO) advantages against a plain-Python transcription and a hand-worked case."""

import jax.numpy as jnp
import numpy as np
import pytest

from gtr_turbo_jax.rl import first_episode_mask, group_advantages, state_fingerprints


def group_reference(rewards, done, groups, states, gamma, step_weight):
    """Loops and dicts: first episodes, returns-to-go, group and same-state means."""
    turns, envs = rewards.shape
    alive = np.zeros((turns, envs), bool)
    for e in range(envs):
        for t in range(turns):
            alive[t, e] = True
            if done[t, e]:
                break
    to_go = np.zeros((turns, envs))
    for e in range(envs):
        later = 0.0
        for t in reversed(range(turns)):
            if alive[t, e]:
                later = rewards[t, e] + gamma * later
                to_go[t, e] = later
    episode_return = [sum(rewards[t, e] for t in range(turns) if alive[t, e]) for e in range(envs)]
    anchors = {}
    for t in range(turns):
        for e in range(envs):
            if alive[t, e]:
                anchors.setdefault((groups[e], states[t, e]), []).append(to_go[t, e])
    advantages = np.zeros((turns, envs))
    for e in range(envs):
        members = [episode_return[j] for j in range(envs) if groups[j] == groups[e]]
        episode = episode_return[e] - np.mean(members)
        for t in range(turns):
            if alive[t, e]:
                step = to_go[t, e] - np.mean(anchors[(groups[e], states[t, e])])
                advantages[t, e] = episode + step_weight * step
    return advantages, to_go, alive


def test_hand_worked_group_of_two():
    # One level, two tries from state 0: env 0 bumps (stays in 0) then solves (+10); env 1 solves
    # at once. Returns 9.9 and 10; state 0 is the anchor of three steps.
    rewards = np.array([[-0.1, 10.0], [10.0, 0.0]], np.float32)
    done = np.array([[False, True], [True, False]])
    states = np.array([[0, 0], [0, 7]])[..., None]
    mask = first_episode_mask(jnp.asarray(done), jnp.zeros_like(jnp.asarray(done)))
    np.testing.assert_array_equal(mask, [[True, True], [True, False]])
    adv, to_go = group_advantages(rewards, mask, jnp.array([0, 0]), states, 0.5, 1.0)
    np.testing.assert_allclose(to_go, [[4.9, 10.0], [10.0, 0.0]], rtol=1e-6)
    anchor = (4.9 + 10.0 + 10.0) / 3
    episode = np.array([9.9 - 9.95, 10.0 - 9.95])
    expected = [[episode[0] + 4.9 - anchor, episode[1] + 10.0 - anchor],
                [episode[0] + 10.0 - anchor, 0.0]]  # fmt: skip
    np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_transcription(seed):
    rng = np.random.default_rng(seed)
    turns, envs, group = 9, 8, 4
    rewards = rng.choice([-0.1, 1.0, 10.0], size=(turns, envs), p=[0.8, 0.1, 0.1])
    done = rng.random((turns, envs)) < 0.2
    done[-1] = True  # every first episode ends in the rollout
    groups = np.arange(envs) // group
    states = rng.integers(0, 4, size=(turns, envs))  # few states: anchors repeat
    gamma, weight = 0.9, 0.7
    expected, to_go, alive = group_reference(rewards, done, groups, states, gamma, weight)
    mask = first_episode_mask(jnp.asarray(done), jnp.zeros((turns, envs), bool))
    np.testing.assert_array_equal(mask, alive)
    adv, got_to_go = group_advantages(
        jnp.asarray(rewards),
        mask,
        jnp.asarray(groups),
        jnp.asarray(states)[..., None],
        gamma,
        weight,
    )
    np.testing.assert_allclose(got_to_go, to_go, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-5)


def test_a_group_that_agrees_gets_no_advantage():
    # Deterministic policy: every try of a level walks the same states to the same return.
    rewards = np.tile(np.array([[-0.1], [-0.1], [1.0]]), (1, 4))
    done = np.zeros((3, 4), bool)
    done[-1] = True
    states = np.tile(np.arange(3)[:, None, None], (1, 4, 1))
    adv, _ = group_advantages(rewards, jnp.ones((3, 4), bool), jnp.zeros(4, int), states, 0.9)
    np.testing.assert_allclose(adv, 0.0, atol=1e-6)


def test_fingerprints_tell_rows_apart_and_match_equal_rows():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1000, size=(6, 40)).astype(np.int32)
    patches = rng.random((6, 3, 5)).astype(np.float32)
    ids[3], patches[3] = ids[1], patches[1]  # row 3 repeats row 1
    ids[4, 17] += 1  # row 4 differs from row 0 in one token
    ids[4, :17], ids[4, 18:], patches[4] = ids[0, :17], ids[0, 18:], patches[0]
    patches[5], ids[5] = patches[2], ids[2]
    patches[5, 1, 2] = np.nextafter(patches[5, 1, 2], 2.0)  # one ulp of one pixel
    prints = np.asarray(state_fingerprints(jnp.asarray(ids), jnp.asarray(patches)))
    same = (prints[:, None] == prints[None]).all(-1)
    expected = np.eye(6, dtype=bool)
    expected[1, 3] = expected[3, 1] = True
    np.testing.assert_array_equal(same, expected)


def test_bad_arguments_get_one_line():
    with pytest.raises(ValueError, match="gamma"):
        group_advantages(jnp.zeros((2, 2)), jnp.ones((2, 2), bool), jnp.zeros(2, int),
                         jnp.zeros((2, 2, 1)), 1.5)  # fmt: skip
