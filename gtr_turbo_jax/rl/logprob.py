"""Per-token log-probs, the lambda-weighted reply log-prob (RL4VLM), and the thought entropy.

Alignment convention: `logits[b, l]` is the distribution the model gave to `tokens[b, l]` (the caller
shifts by one position). Masks are boolean (or 0/1) with the shape of the tokens.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from gtr_turbo_jax.rl._checks import check_range


def token_logprobs(logits: jax.Array, tokens: jax.Array, temperature: float = 1.0) -> jax.Array:
    """`log softmax(logits / temperature)[tokens]`, in float32: `[B, L, V], [B, L] -> [B, L]`."""
    chex.assert_rank([logits, tokens], [3, 2])
    chex.assert_equal_shape_prefix([logits, tokens], 2)
    check_range("temperature", temperature, 0.0, float("inf"), low_open=True)
    scaled = logits.astype(jnp.float32) / temperature
    chosen = jnp.take_along_axis(scaled, tokens[..., None], axis=-1)[..., 0]
    return chosen - jax.nn.logsumexp(scaled, axis=-1)


def lambda_logprob(
    token_logp: jax.Array, thought_mask: jax.Array, action_mask: jax.Array, lam: float
) -> jax.Array:
    """`log pi(a|o) = lam * sum(thought log-probs) + sum(action log-probs)`: `[B, L] -> [B]`.

    Thought tokens come before the `"action":` marker, action tokens are the marker and what follows;
    `lam` (0.5 card games, 0.2 ALFWorld) down-weights the long chain of thought in the PPO ratio.
    """
    chex.assert_rank(token_logp, 2)
    chex.assert_equal_shape([token_logp, thought_mask, action_mask])
    check_range("lam", lam, 0.0, 1.0)
    token_logp = token_logp.astype(jnp.float32)
    # where, not multiply: padded positions may hold -inf and 0 * -inf is NaN.
    thought = jnp.sum(jnp.where(thought_mask.astype(bool), token_logp, 0.0), axis=-1)
    action = jnp.sum(jnp.where(action_mask.astype(bool), token_logp, 0.0), axis=-1)
    return lam * thought + action


def skip_leading_tokens(mask: jax.Array, count: int) -> jax.Array:
    """`mask [B, L]` without its first `count` positions (the authors' thought sum starts at the
    reply's third token: `count=2`)."""
    if count < 0:
        raise ValueError(f"count={count!r}: need an int >= 0")
    return mask.astype(bool) & (jnp.arange(mask.shape[-1]) >= count)


def lambda_token_weights(thought_mask: jax.Array, action_mask: jax.Array, lam: float) -> jax.Array:
    """Each token's weight in `lambda_logprob`: `lam` on thought tokens, 1 on action tokens, 0
    elsewhere (`[B, L]`, float32), so `lambda_logprob == sum(weights * token_logp)`."""
    chex.assert_equal_shape([thought_mask, action_mask])
    check_range("lam", lam, 0.0, 1.0)
    thought = jnp.where(thought_mask.astype(bool), lam, 0.0)
    return jnp.where(action_mask.astype(bool), 1.0, thought).astype(jnp.float32)


def masked_token_mean(per_token: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `per_token` over the masked positions of each row, 0 for a row with none: `-> [B]`."""
    mask = mask.astype(bool)
    total = jnp.sum(jnp.where(mask, per_token, 0.0), axis=-1)
    return total / jnp.maximum(jnp.sum(mask, axis=-1), 1)


def token_entropy(logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Entropy (nats) of `softmax(logits / temperature)` at each position: `[..., V] -> [...]`."""
    check_range("temperature", temperature, 0.0, float("inf"), low_open=True)
    probs = jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.sum(jax.scipy.special.entr(probs), axis=-1)  # entr: 0 where p = 0 (masked logits)


def thought_entropy(
    logits: jax.Array, thought_mask: jax.Array, temperature: float = 1.0
) -> jax.Array:
    """Mean entropy (nats) of the policy over each reply's thought tokens, 0 without any: `[B]`.

    A metric for thought collapse: templated thoughts drive it towards 0.
    """
    chex.assert_rank([logits, thought_mask], [3, 2])
    chex.assert_equal_shape_prefix([logits, thought_mask], 2)
    return masked_token_mean(token_entropy(logits, temperature), thought_mask)
