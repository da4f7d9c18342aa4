"""`TrainState`: everything an update reads and writes, as one pytree (donated to the step).

With LoRA the policy and the teacher share the frozen base weights and differ only in their
adapters: `base` holds the non-LoRA parameters once; `policy`, `teacher` and `initial` (theta_0, the
starting adapters, for task vectors) are LoRA states of the same structure. Without LoRA the
trainable part is every parameter and `base` is empty (full fine-tuning; memory-hungry).

The teacher merge is done "factored" in this version: TIES / linear / EMA act on the LoRA `a` and
`b` leaves as ordinary leaves (`rl.merge_deltas` per leaf), like the authors' PEFT code. The
paper's dense semantics (`rl.merge_lora(mode="dense")`) returns `[in, out]` kernel deltas, which the
teacher would have to carry as dense per-layer additions to the base (a model-side hook).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from gtr_turbo_jax.models import Qwen25VL, ValueHead
from gtr_turbo_jax.rollout.batch import Batch
from gtr_turbo_jax.train.config import UpdateConfig, make_optimizer


class ModelDefs(NamedTuple):
    """The static graph definitions (a `jax.jit` static argument, hashable)."""

    model: nnx.GraphDef
    value_head: nnx.GraphDef


@struct.dataclass
class DaggerBuffer:
    """Fixed-capacity, never-cleared buffer of SFT targets (GTR's DAgger buffer), a ring of `[D]`
    rows: the prompt and image of a turn and the teacher's reply with its label mask."""

    prompt_ids: jax.Array  # [D, P] int32
    prompt_mask: jax.Array  # [D, P] int32
    image_patches: jax.Array  # [D, N, patch_dim]
    reply_ids: jax.Array  # [D, R_teacher] int32
    label_mask: jax.Array  # [D, R_teacher] bool
    count: jax.Array  # () int32: rows pushed so far (slots [0, min(count, D)) are filled)

    @property
    def capacity(self) -> int:
        return self.reply_ids.shape[0]

    def rows(self, index: jax.Array) -> DaggerBuffer:
        """The rows at `index` (the count is kept)."""
        count = self.count
        return jax.tree.map(lambda x: x[index], self.replace(count=None)).replace(count=count)

    @classmethod
    def empty(cls, capacity: int, batch: Batch) -> DaggerBuffer:
        rows = lambda x: jnp.zeros((capacity, *x.shape[2:]), x.dtype)
        return cls(
            prompt_ids=rows(batch.prompt_ids),
            prompt_mask=rows(batch.prompt_mask),
            image_patches=rows(batch.image_patches),
            reply_ids=rows(batch.teacher_ids),
            label_mask=rows(batch.teacher_label_mask),
            count=jnp.zeros((), jnp.int32),
        )


@struct.dataclass
class TrainState:
    base: nnx.State  # frozen parameters shared by policy and teacher
    policy: nnx.State  # trainable: LoRA adapters (or every parameter without LoRA)
    value_head: nnx.State  # trainable
    teacher: nnx.State  # the merged teacher's adapters (same structure as `policy`)
    initial: nnx.State  # theta_0: the policy's starting adapters
    opt_state: optax.OptState  # over (policy, value_head)
    snapshots: nnx.State  # ring buffer of task vectors theta_i - theta_0, leaves [S, ...]
    snapshot_valid: jax.Array  # [S] bool
    snapshot_count: jax.Array  # () int32: snapshots pushed so far
    dagger: DaggerBuffer
    key: jax.Array  # PRNG key for permutations, LoRA dropout and SFT pairing
    update_count: jax.Array  # () int32: updates done

    @property
    def trainable(self) -> tuple[nnx.State, nnx.State]:
        return self.policy, self.value_head


def split_model(model: Qwen25VL) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """`(graphdef, trainable, base)`: LoRA adapters vs the rest, or every parameter if no LoRA."""
    if nnx.state(model, nnx.LoRAParam):
        graphdef, trainable, base = nnx.split(model, nnx.LoRAParam, ...)
    else:
        graphdef, trainable, base = nnx.split(model, nnx.Param, ...)
    return graphdef, trainable, base


def init_train_state(
    model: Qwen25VL,
    value_head: ValueHead,
    config: UpdateConfig,
    key: jax.Array,
    batch_like: Batch,
) -> tuple[ModelDefs, TrainState]:
    """Splits the modules into the state pytree. `batch_like` (e.g. `Batch.dummy(...)` of the
    rollout's shapes) sizes the DAgger buffer; the teacher and theta_0 start as the policy."""
    graphdef, trainable, base = split_model(model)
    value_graphdef, value_params = nnx.split(value_head, nnx.Param)
    copy = lambda tree: jax.tree.map(jnp.array, tree)  # distinct buffers: the state is donated
    # Snapshots exist only for the merges that read them (TIES / linear over the ring buffer).
    capacity = (
        config.snapshot_capacity if config.uses_teacher and config.merge_method != "ema" else 0
    )
    snapshots = jax.tree.map(lambda x: jnp.zeros((capacity, *x.shape), x.dtype), trainable)
    dagger = DaggerBuffer.empty(config.dagger_capacity if config.uses_sft else 0, batch_like)
    state = TrainState(
        base=base,
        policy=copy(trainable),
        value_head=value_params,
        teacher=copy(trainable),
        initial=copy(trainable),
        opt_state=make_optimizer(config).init((trainable, value_params)),
        snapshots=snapshots,
        snapshot_valid=jnp.zeros((capacity,), bool),
        snapshot_count=jnp.zeros((), jnp.int32),
        dagger=dagger,
        key=key,
        update_count=jnp.zeros((), jnp.int32),
    )
    return ModelDefs(graphdef, value_graphdef), state
