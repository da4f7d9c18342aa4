"""`TrainState`: everything an update reads and writes, as one pytree (donated to the step).

With LoRA the policy and the teacher share the frozen base weights: `base` holds the non-LoRA
parameters once; `policy` and `initial` (theta_0, the starting adapters, for task vectors) are
LoRA states of the same structure. Without LoRA the trainable part is every parameter and `base`
is empty (full fine-tuning; memory-hungry).

The teacher's part (`teacher`, `initial`, the snapshots) is read and written by `train.teacher`.

Which parts exist depends on the mode, so the pytree structure is static per config: `teacher`
only in the turbo modes; `initial` and the snapshot ring only for the TIES / linear merges; the
DAgger buffer only in the SFT modes. Absent parts are empty states (no bytes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from gtr_turbo_jax import rl
from gtr_turbo_jax.models import Qwen25VL, ValueHead
from gtr_turbo_jax.models.defs import ModelDefs
from gtr_turbo_jax.rollout.batch import Batch
from gtr_turbo_jax.train.config import UpdateConfig, make_optimizer
from gtr_turbo_jax.train.teacher import initial_teacher, is_dense, kernel_deltas


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

    @property
    def filled(self) -> jax.Array:
        """() int32: rows that hold a pair (at least 1, so draws from an empty buffer are valid
        indices; their loss is masked by `count > 0`)."""
        return jnp.minimum(self.count, max(self.capacity, 1))

    def rows(self, index: jax.Array) -> DaggerBuffer:
        """The rows at `index` (the count is kept)."""
        count = self.count
        return jax.tree.map(lambda x: x[index], self.replace(count=None)).replace(count=count)

    @classmethod
    def empty(
        cls, capacity: int, batch: Batch, patch_dtype: jnp.dtype | None = None
    ) -> DaggerBuffer:
        """`patch_dtype`: the images' storage dtype (the model's compute dtype is lossless: the
        vision tower casts its input patches to it first); default the batch's."""
        rows = lambda x, dtype=None: jnp.zeros((capacity, *x.shape[2:]), dtype or x.dtype)
        return cls(
            prompt_ids=rows(batch.prompt_ids),
            prompt_mask=rows(batch.prompt_mask),
            image_patches=rows(batch.image_patches, patch_dtype),
            reply_ids=rows(batch.teacher_ids),
            label_mask=rows(batch.teacher_label_mask),
            count=jnp.zeros((), jnp.int32),
        )


@struct.dataclass
class TrainState:
    base: nnx.State  # frozen parameters shared by policy and teacher
    policy: nnx.State  # trainable: LoRA adapters (or every parameter without LoRA)
    value_head: nnx.State  # trainable
    # turbo modes: kernel deltas (dense), adapters like `policy` (peft, factored), or an external
    # model's parameters (not in checkpoints: `Learner.checkpoint_tree` leaves it out)
    teacher: nnx.State
    initial: nnx.State  # TIES / linear merges: theta_0, the policy's starting adapters
    opt_state: optax.OptState  # over (policy, value_head)
    # Task vectors theta_i - theta_0, leaves [S, ...]: the ring of the last S snapshots
    # (`merge_window="ring"`), or their running sums (`"all"`: `rl.running_sums_push`, S = 4).
    snapshots: nnx.State
    snapshot_valid: jax.Array  # [S] bool: the ring's filled slots ([0] with running sums)
    snapshot_count: jax.Array  # () int32: snapshots pushed so far
    dagger: DaggerBuffer
    key: jax.Array  # PRNG key for permutations, LoRA dropout and SFT pairing
    update_count: jax.Array  # () int32: updates done
    lora_scale: float = struct.field(pytree_node=False, default=0.0)  # alpha / r; 0: no LoRA

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


def model_defs(
    model: Qwen25VL, value_head: ValueHead, teacher: Qwen25VL | None = None
) -> ModelDefs:
    """The graph definitions of the modules (an external `teacher` has its own), and the
    policy's vision token ids."""
    config = model.config
    return ModelDefs(
        model=split_model(model)[0],
        value_head=nnx.split(value_head, nnx.Param)[0],
        teacher=None if teacher is None else nnx.graphdef(teacher),
        vision_token_ids=(
            config.vision_start_token_id,
            config.image_token_id,
            config.vision_end_token_id,
        ),
    )


def init_train_state(
    model: Qwen25VL,
    value_head: ValueHead,
    config: UpdateConfig,
    key: jax.Array,
    batch_like: Batch,
    teacher: Qwen25VL | None = None,
) -> tuple[ModelDefs, TrainState]:
    """Splits the modules into the state pytree. `batch_like` (e.g. `Batch.dummy(...)` of the
    rollout's shapes) sizes the DAgger buffer (its images in the model's compute dtype); the
    teacher and theta_0 start as the policy, or the teacher is the external model `teacher`
    (`teacher_source="external"`: every parameter; None: an empty teacher, for readers of the
    policy). Parts the mode does not use are empty."""
    _, trainable, base = split_model(model)
    value_params = nnx.split(value_head, nnx.Param)[1]
    copy = lambda tree: jax.tree.map(jnp.array, tree)  # distinct buffers: the state is donated
    empty = nnx.State({})
    capacity = config.snapshot_capacity if config.uses_snapshots else 0
    running = config.uses_snapshots and config.merge_window == "all"
    lora_scale = (
        float(model.lora.scale)
        if model.lora is not None and nnx.state(model, nnx.LoRAParam)
        else 0.0
    )
    if running and is_dense(lora_scale, config):  # 4 float32 sums per adapted kernel entry
        products = jax.eval_shape(lambda: kernel_deltas(trainable, base, lora_scale))
        snapshots = rl.running_sums_init(products)
    elif running:
        snapshots = rl.running_sums_init(trainable)
    elif capacity:
        snapshots = jax.tree.map(lambda x: jnp.zeros((capacity, *x.shape), x.dtype), trainable)
    else:
        snapshots = empty
    state = TrainState(
        base=base,
        policy=copy(trainable),
        value_head=value_params,
        teacher=empty,
        initial=copy(trainable) if capacity else empty,
        opt_state=make_optimizer(config).init((trainable, value_params)),
        snapshots=snapshots,
        snapshot_valid=jnp.zeros((0 if running else capacity,), bool),
        snapshot_count=jnp.zeros((), jnp.int32),
        dagger=DaggerBuffer.empty(
            config.dagger_capacity if config.uses_sft else 0,
            batch_like,
            model.config.compute_dtype,
        ),
        key=key,
        update_count=jnp.zeros((), jnp.int32),
        lora_scale=lora_scale,
    )
    if config.external_teacher:
        state = state.replace(teacher=empty if teacher is None else nnx.state(teacher))
    elif config.uses_teacher:
        state = state.replace(teacher=initial_teacher(trainable, base, lora_scale, config))
    return model_defs(model, value_head, teacher if config.uses_teacher else None), state
