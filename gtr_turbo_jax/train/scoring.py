"""Scoring replies with the model: one forward over prompt + reply per sample.

The prompt is left-padded and the reply right-padded, so the logits that predict the reply sit at
positions `P-1 .. P+R-2` and the last prompt token (the value head's input) at `P-1`. Only the
reply positions go through the LM head (the vocabulary projection is the big one).

A blind pass (`blind_prompt_mask`, `kl_context="blind"`) masks the prompt's vision tokens and
skips the vision tower: padding may sit anywhere (positions count the unmasked tokens only), so
the rest of the prompt is read exactly as a prompt without the image block.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from gtr_turbo_jax.models import last_prompt_hidden
from gtr_turbo_jax.rollout.batch import ImageGrid


class Scores(NamedTuple):
    logits: jax.Array  # [B, R, vocab] float32: the distributions of the reply tokens
    prompt_hidden: jax.Array  # [B, hidden]: the last prompt token's final hidden state


def blind_prompt_mask(
    prompt_ids: jax.Array, prompt_mask: jax.Array, vision_token_ids: tuple[int, ...]
) -> jax.Array:
    """`prompt_mask` with the vision tokens (start, image pads, end) masked out."""
    if not vision_token_ids:
        raise ValueError("a blind pass needs the model's vision token ids (ModelDefs)")
    vision = jnp.isin(prompt_ids, jnp.asarray(vision_token_ids, prompt_ids.dtype))
    return jnp.where(vision, 0, prompt_mask).astype(prompt_mask.dtype)


def score_replies(
    graphdef: nnx.GraphDef,
    base: nnx.State,
    adapters: nnx.State,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    image_patches: jax.Array | None,
    reply_ids: jax.Array,
    reply_mask: jax.Array,
    image_grid_thw: ImageGrid,
    dropout_key: jax.Array | None = None,
) -> Scores:
    """Runs `graphdef` with `adapters` (policy or teacher) on `base` over prompt + reply
    (`image_patches=None`: a prompt whose image tokens are masked out)."""
    chex.assert_rank([prompt_ids, reply_ids], [2, 2])
    chex.assert_equal_shape([prompt_ids, prompt_mask])
    chex.assert_equal_shape([reply_ids, reply_mask])
    model = nnx.merge(graphdef, adapters, base)
    prompt_len = prompt_ids.shape[1]
    ids = jnp.concatenate([prompt_ids, reply_ids], axis=1)
    mask = jnp.concatenate([prompt_mask.astype(jnp.int32), reply_mask.astype(jnp.int32)], axis=1)
    out = model.forward(
        ids,
        mask,
        image_patches=image_patches,
        image_grid_thw=image_grid_thw,
        dropout_key=dropout_key,
        return_logits=False,
    )
    hidden = out.hidden_states
    logits = model.logits(hidden[:, prompt_len - 1 : -1])
    return Scores(logits, last_prompt_hidden(hidden[:, :prompt_len], prompt_mask))
