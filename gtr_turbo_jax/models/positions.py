"""Qwen2.5-VL's 3-D rotary position ids, computed with fixed shapes (jit-friendly).

Rules (as transformers' `get_rope_index` for images): text tokens advance all three axes by one;
the tokens of an image with merged grid (t, h, w) starting at position p get (p + t_i, p + h_i,
p + w_i); the text after the image continues at p + max(h, w). Padding tokens (attention_mask 0) get
position 0 and do not advance the count, so any padding pattern (left padding for the rollout) gives
every row the positions it would have unpadded.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gtr_turbo_jax.models.vision import Grid


def mrope_positions(
    input_ids: jax.Array,
    attention_mask: jax.Array,
    grids: Sequence[Grid],
    *,
    image_token_id: int,
    spatial_merge_size: int,
) -> jax.Array:
    """input_ids, attention_mask [B, T]; grids: one static (t, h, w) patch grid per image, in the
    order the images' tokens appear (row by row). Returns int32 positions [3, B, T]."""
    valid = attention_mask.astype(bool)
    text = valid & (input_ids != image_token_id)
    if not grids:
        base = jnp.cumsum(text, axis=1) - text
        return jnp.broadcast_to(jnp.where(valid, base, 0), (3, *input_ids.shape)).astype(jnp.int32)
    merged = np.asarray(grids, np.int64) // np.array([1, spatial_merge_size, spatial_merge_size])
    tokens = merged.prod(axis=1)
    ends = np.cumsum(tokens)
    starts = ends - tokens
    advance = merged[:, 1:].max(axis=1)

    is_image = valid & (input_ids == image_token_id)
    flat = is_image.reshape(-1)
    ordinal = (jnp.cumsum(flat) - 1).reshape(input_ids.shape)  # image-token index over the batch
    ordinal = jnp.clip(ordinal, 0, ends[-1] - 1)
    image = jnp.searchsorted(jnp.asarray(ends), ordinal, side="right")
    local = ordinal - jnp.asarray(starts)[image]
    grid_h, grid_w = jnp.asarray(merged[:, 1])[image], jnp.asarray(merged[:, 2])[image]
    offset_t = local // (grid_h * grid_w)
    offset_h = (local // grid_w) % grid_h
    offset_w = local % grid_w
    closes_image = is_image & (local == jnp.asarray(tokens)[image] - 1)
    step = text.astype(jnp.int32) + jnp.where(closes_image, jnp.asarray(advance)[image], 0)
    base = jnp.cumsum(step, axis=1) - step  # exclusive: what came before this token
    offsets = jnp.stack([offset_t, offset_h, offset_w]) * is_image[None]
    return jnp.where(valid[None], base[None] + offsets, 0).astype(jnp.int32)


def count_image_tokens(grids: Sequence[Grid], spatial_merge_size: int) -> int:
    return int(sum(t * h * w for t, h, w in grids) // spatial_merge_size**2)


def scatter_image_embeds(
    embeds: jax.Array, input_ids: jax.Array, image_embeds: jax.Array, image_token_id: int
) -> jax.Array:
    """Replaces the image-token embeddings of embeds [B, T, D] by image_embeds [M, D], taken in
    order over the batch (row by row, left to right), like transformers' `masked_scatter`."""
    is_image = input_ids == image_token_id
    ordinal = jnp.cumsum(is_image.reshape(-1)).reshape(input_ids.shape) - 1
    ordinal = jnp.clip(ordinal, 0, image_embeds.shape[0] - 1)
    return jnp.where(is_image[..., None], image_embeds[ordinal].astype(embeds.dtype), embeds)
