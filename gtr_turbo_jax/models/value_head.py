"""The critic: an MLP `hidden -> 1024 -> 512 -> 1` (ReLU) on the last prompt token's final hidden
state, sharing the backbone (and its LoRA) with the policy."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import nnx


class ValueHead(nnx.Module):
    def __init__(
        self, hidden_size: int, *, widths: tuple[int, ...] = (1024, 512), rngs: nnx.Rngs
    ) -> None:
        sizes = (hidden_size, *widths, 1)
        self.layers = nnx.List(
            [nnx.Linear(n_in, n_out, rngs=rngs) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
        )

    def __call__(self, hidden: jax.Array) -> jax.Array:
        """hidden [B, D] -> values [B] (float32)."""
        x = hidden.astype(jnp.float32)
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)[..., 0]


def last_prompt_hidden(hidden_states: jax.Array, prompt_mask: jax.Array) -> jax.Array:
    """hidden_states [B, T, D], prompt_mask [B, T] (1 on prompt tokens) -> the hidden state of each
    row's last prompt token [B, D]; with left-padded prompts that is index T-1."""
    chex.assert_rank(hidden_states, 3)
    chex.assert_shape(prompt_mask, hidden_states.shape[:2])
    positions = jnp.arange(prompt_mask.shape[1])
    last = jnp.max(jnp.where(prompt_mask > 0, positions, -1), axis=1)
    return jnp.take_along_axis(hidden_states, jnp.maximum(last, 0)[:, None, None], axis=1)[:, 0]
