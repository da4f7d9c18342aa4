"""Which samples each optimizer step of a PPO epoch trains on.

An epoch visits every sample once, in a fresh random order, `accum * micro` samples a step. Under
group advantages part of the batch is played but never trained (an env's turns after its first
episode: their loss weight is 0), yet each costs a forward and a backward in every epoch.
`packed_steps` takes the trained samples first, each part in random order, so that every step
past `ceil(trained / (accum * micro))` holds untrained samples only and is skipped: the same
samples trained in fewer, fuller steps.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def shuffled_steps(key: jax.Array, num_samples: int, steps: int, accum: int, micro: int):
    """`(indices int32[steps, accum, micro], active bool[steps])`: a permutation of the samples,
    every step active."""
    indices = jax.random.permutation(key, num_samples).reshape(steps, accum, micro)
    return indices, jnp.ones((steps,), bool)


def packed_steps(key: jax.Array, trained: jax.Array, steps: int, accum: int, micro: int):
    """`(indices int32[steps, accum, micro], active bool[steps])`: the trained samples (`trained`
    bool[N], N = steps * accum * micro) in random order, then the others in random order; a step
    is active while it holds a trained sample."""
    chex.assert_rank(trained, 1)
    chex.assert_axis_dimension(trained, 0, steps * accum * micro)
    uniforms = jax.random.uniform(key, trained.shape)
    order = jnp.argsort(jnp.where(trained, uniforms, uniforms + 2.0))
    per_step = accum * micro
    needed = (jnp.sum(trained, dtype=jnp.int32) + per_step - 1) // per_step
    return order.astype(jnp.int32).reshape(steps, accum, micro), jnp.arange(steps) < needed
