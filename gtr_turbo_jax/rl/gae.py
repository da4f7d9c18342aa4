"""Turn-level generalised advantage estimation (RL4VLM: gamma 0.9, lambda 0.95)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from gtr_turbo_jax.rl._checks import check_range


def gae(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    gamma: float,
    lam: float,
) -> jax.Array:
    """Advantages `[turns, envs]` by a reverse `lax.scan` over turns.

    `next_values[t]` is the value of the observation reached by step t (the final observation, before
    any automatic reset). It bootstraps the TD error unless the episode terminated there, so a
    truncated episode, and the last turn of the rollout, bootstrap from it. The recursion
    `A_t = delta_t + gamma * lam * A_{t+1}` stops at `terminated | truncated`: the next row belongs
    to a new episode.
    """
    chex.assert_equal_shape([rewards, values, next_values, terminated, truncated])
    chex.assert_rank(rewards, {1, 2})
    check_range("gamma", gamma, 0.0, 1.0)
    check_range("lam", lam, 0.0, 1.0)

    rewards, values, next_values = (x.astype(jnp.float32) for x in (rewards, values, next_values))
    terminated = terminated.astype(bool)
    episode_continues = ~(terminated | truncated.astype(bool))
    deltas = rewards + gamma * jnp.where(terminated, 0.0, next_values) - values

    def backward_step(next_advantage, turn):
        delta, continues = turn
        advantage = delta + gamma * lam * jnp.where(continues, next_advantage, 0.0)
        return advantage, advantage

    _, advantages = jax.lax.scan(
        backward_step, jnp.zeros_like(deltas[0]), (deltas, episode_continues), reverse=True
    )
    return advantages
