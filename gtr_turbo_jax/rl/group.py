"""Critic-free advantages from groups of episodes on the same level (GiGPO, arXiv 2505.10978).

The rollout plays each level `K` times from the same start. An episode's advantage is its return
minus the mean return of its group (GRPO's episode level); a step's is its discounted return-to-go
minus the mean over the group's steps taken from the same state (GiGPO's anchor states: the step
level). Near-deterministic policies follow the same path until they part, so the step term puts
the signal on the states where the replies differed, and no value estimate enters. Baselines are
means (no division by the group's std: GiGPO's `mean_norm`); the batch normalisation after them is
the update's. Only each env's first episode of the rollout counts (`first_episode_mask`).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from gtr_turbo_jax.rl._checks import check_range

# Fixed odd multipliers of the state fingerprint (uint32 arithmetic wraps: a polynomial hash).
_HASH_SEEDS = (0x9E3779B1, 0x85EBCA77)


def first_episode_mask(terminated: jax.Array, truncated: jax.Array) -> jax.Array:
    """bool[T, E]: the turns of each env's first episode in the rollout (up to its end, included)."""
    chex.assert_equal_shape([terminated, truncated])
    done = terminated.astype(bool) | truncated.astype(bool)
    ended_before = jnp.cumsum(done, axis=0) - done.astype(jnp.int32)
    return ended_before == 0


def state_fingerprints(*features: jax.Array) -> jax.Array:
    """uint32[N, 2]: two polynomial hashes of each row's features (each `[N, ...]`, any dtype of 4
    bytes or fewer; floats are hashed by their bits). Equal rows get equal fingerprints; different
    rows collide with probability ~2^-64 per pair."""
    words = []
    for x in features:
        x = x.reshape(x.shape[0], -1)
        if jnp.issubdtype(x.dtype, jnp.floating):
            x = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
        words.append(x.astype(jnp.uint32))
    words = jnp.concatenate(words, axis=1)
    out = []
    for seed in _HASH_SEEDS:
        powers = jnp.asarray(_powers(seed, words.shape[1]))
        out.append(jnp.sum(words * powers, axis=1, dtype=jnp.uint32))
    return jnp.stack(out, axis=1)


def _powers(seed: int, count: int) -> np.ndarray:
    return np.cumprod(np.full(count, seed, np.uint64)).astype(np.uint32)  # mod 2^32


def group_advantages(
    rewards: jax.Array,
    mask: jax.Array,
    groups: jax.Array,
    fingerprints: jax.Array,
    gamma: float,
    step_weight: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """`(advantages, returns)`, both `[T, E]` and 0 outside `mask`.

    rewards, mask `[T, E]`: each env's rewards and its first episode's turns (the episode must have
    ended inside the rollout: its return is the sum of its rewards). groups int[E]: the group of each
    env (envs of one group play the same level from the same start). fingerprints `[T, E, F]`:
    steps of one group with equal fingerprints start from the same state. `returns` is the
    discounted return-to-go `G_t` (gamma); the advantage is
    `(R_e - mean_group R) + step_weight * (G_t - mean_{same group, same state} G)`.
    """
    chex.assert_rank([rewards, groups, fingerprints], [2, 1, 3])
    chex.assert_equal_shape([rewards, mask])
    chex.assert_equal_shape_prefix([rewards, fingerprints], 2)
    chex.assert_shape(groups, rewards.shape[1:])
    check_range("gamma", gamma, 0.0, 1.0)
    check_range("step_weight", step_weight, 0.0, float("inf"))
    turns, envs = rewards.shape
    mask = mask.astype(bool)
    rewards = jnp.where(mask, rewards.astype(jnp.float32), 0.0)

    def backward(later, turn):
        reward, alive = turn
        to_go = jnp.where(alive, reward + gamma * later, 0.0)
        return to_go, to_go

    _, returns = jax.lax.scan(
        backward, jnp.zeros((envs,), jnp.float32), (rewards, mask), reverse=True
    )

    same_group = groups[:, None] == groups[None, :]  # [E, E]
    episode_return = jnp.sum(rewards, axis=0)
    episode = episode_return - _masked_mean_over(same_group, episode_return)

    flat_groups = jnp.broadcast_to(groups, (turns, envs)).reshape(-1)
    flat_mask = mask.reshape(-1)
    prints = fingerprints.reshape(turns * envs, -1)
    same_state = (
        jnp.all(prints[:, None, :] == prints[None, :, :], axis=-1)
        & (flat_groups[:, None] == flat_groups[None, :])
        & flat_mask[None, :]
    )
    flat_returns = returns.reshape(-1)
    step = (flat_returns - _masked_mean_over(same_state, flat_returns)).reshape(turns, envs)
    advantages = episode[None, :] + step_weight * step
    return jnp.where(mask, advantages, 0.0), returns


def _masked_mean_over(members: jax.Array, values: jax.Array) -> jax.Array:
    """Row i: the mean of `values[j]` over the j with `members[i, j]` (0 when there is none)."""
    counts = jnp.sum(members, axis=1)
    totals = jnp.sum(jnp.where(members, values[None, :], 0.0), axis=1)
    return totals / jnp.maximum(counts, 1)
