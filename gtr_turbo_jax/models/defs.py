"""`ModelDefs`: the static graph definitions of the policy model, its value head and an external
teacher, and the vision tokens a blind teacher pass masks."""

from __future__ import annotations

from typing import NamedTuple

from flax import nnx


class ModelDefs(NamedTuple):
    """The static graph definitions (a `jax.jit` static argument, hashable)."""

    model: nnx.GraphDef
    value_head: nnx.GraphDef
    # A teacher of its own architecture (`teacher_source="external"`); None: the policy's graph.
    teacher: nnx.GraphDef | None = None
    # (vision start, image, vision end): the prompt tokens a `kl_context="blind"` pass masks.
    vision_token_ids: tuple[int, ...] = ()
