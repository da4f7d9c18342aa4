"""Next-token logits processing, as transformers' `generate` orders it: repetition penalty (a
logits processor) first, then the warpers temperature -> top-k -> top-p.

All functions take and return float32 logits `[B, V]`; removed tokens get `-inf`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def seen_tokens(token_ids: jax.Array, mask: jax.Array, vocab_size: int) -> jax.Array:
    """`bool[B, V]`: which ids occur among the masked-in `token_ids [B, T]` of each row."""
    rows = jnp.arange(token_ids.shape[0])[:, None]
    ids = jnp.where(mask.astype(bool), token_ids, vocab_size)  # out of range: dropped
    return jnp.zeros((token_ids.shape[0], vocab_size), bool).at[rows, ids].set(True, mode="drop")


def mark_seen(seen: jax.Array, tokens: jax.Array, valid: jax.Array) -> jax.Array:
    """Adds `tokens [B]` (where `valid [B]`) to the `seen [B, V]` bitmap."""
    ids = jnp.where(valid, tokens, seen.shape[1])
    return seen.at[jnp.arange(seen.shape[0]), ids].set(True, mode="drop")


def repetition_penalty(logits: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
    """HF's `RepetitionPenaltyLogitsProcessor`: for tokens already seen, positive logits are divided
    by `penalty` and negative ones multiplied by it (both lower the token's odds when > 1)."""
    penalized = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalized, logits)


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Keeps the logits >= the k-th largest (ties at the threshold are kept, as HF does)."""
    k = min(k, logits.shape[-1])
    threshold = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < threshold, NEG_INF, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
    """Nucleus filter: keeps the smallest set of most likely tokens whose probability sums to >= p.

    HF removes a token when the ascending cumulative probability up to it is <= 1 - p; equivalently
    a token stays when the mass of the tokens ranked strictly above it is < p (the top one always
    stays). Ties are ranked by index, as a stable sort does.
    """
    order = jnp.argsort(-logits, axis=-1, stable=True)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_above = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = (mass_above < p).at[..., 0].set(True)
    keep = (
        jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    )
    return jnp.where(keep, logits, NEG_INF)
