"""Random draws for the card games, from one block of random bits per reset or step.

Each `jax.random.randint` call is its own threefry kernel (about a second of XLA compile time on a
small CPU); a deal needs a handful of draws, so the envs take one `jax.random.bits` block and map
words to ranges here. Modulo mapping: the bias is below `high / 2^32` (3e-9 for 13 ranks).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def random_words(key: jax.Array, count: int) -> jax.Array:
    """uint32[count] random words."""
    return jax.random.bits(key, (count,), jnp.uint32)


def below(words: jax.Array, high: int) -> jax.Array:
    """int32 uniform in [0, high) from uint32 words."""
    if not 1 <= high <= 2**16:
        raise ValueError(f"high must be in [1, 65536] to keep the modulo bias small, got {high}")
    return (words % jnp.uint32(high)).astype(jnp.int32)


def coin(words: jax.Array) -> jax.Array:
    """bool, true with chance 1/2."""
    return (words & 1).astype(bool)
