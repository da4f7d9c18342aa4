"""Where rows go in a bounded buffer that keeps a uniform sample of everything pushed so far.

GTR's DAgger buffer is never cleared: its SFT draws are uniform over every correction of the run.
With `capacity` slots that is reservoir sampling (Vitter's Algorithm R): row number `n` (0-based,
over the whole run) fills slot `n` while `n < capacity`, afterwards it replaces slot `j`, `j`
uniform in `[0, n]`, when `j < capacity`. Every row pushed so far is then in the buffer with the
same probability `capacity / count`. A ring (`ring_slots`) keeps only the last `capacity` rows.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def ring_slots(count: jax.Array, pushed: jax.Array, capacity: int) -> jax.Array:
    """int32[N]: the slot of each pushed row (`pushed` bool[N]) in a ring holding `count` rows so
    far; `capacity` (out of bounds: dropped) for rows not pushed."""
    order = count + jnp.cumsum(pushed) - 1
    return jnp.where(pushed, order % capacity, capacity).astype(jnp.int32)


def reservoir_slots(
    count: jax.Array, pushed: jax.Array, capacity: int, uniforms: jax.Array
) -> jax.Array:
    """int32[N]: Algorithm R's slot for each pushed row, in row order, `capacity` for the rows
    that are dropped (not pushed, not drawn into the reservoir, or replaced by a later row of the
    same call). `count`: rows pushed before this call; `uniforms` float[N] in [0, 1): the draws."""
    chex.assert_equal_shape([pushed, uniforms])
    pushed = pushed.astype(bool)
    order = count + jnp.cumsum(pushed) - 1  # each pushed row's number over the run
    drawn = jnp.floor(uniforms * (order + 1).astype(jnp.float32)).astype(jnp.int32)
    slot = jnp.where(order < capacity, order, jnp.minimum(drawn, order))
    keep = pushed & (slot < capacity)
    index = jnp.arange(pushed.shape[0])
    replaced = jnp.any(
        (slot[None, :] == slot[:, None]) & (index[None, :] > index[:, None]) & keep[None, :], axis=1
    )
    return jnp.where(keep & ~replaced, slot, capacity).astype(jnp.int32)
