"""`TrainState`: everything an update reads and writes, as one pytree (donated to the step).

With LoRA the policy and the teacher share the frozen base weights: `base` holds the non-LoRA
parameters once; `policy` and `initial` (theta_0, the starting adapters, for task vectors) are
LoRA states of the same structure. Without LoRA the trainable part is every parameter and `base`
is empty (full fine-tuning; memory-hungry).

The teacher, by `UpdateConfig.merge_space`:
- `factored` (the authors' PEFT code): an adapter set of the policy's structure, merged leaf by
  leaf; its forward is the model with the teacher's adapters on the shared base.
- `dense` (the paper's semantics, LoRA only): one dense delta per adapted kernel, stored in the
  kernel's `[out, in]` layout at the kernel's path (`.../q_proj/weight`), float32. Its forward
  (`teacher_weights`) is the model with zero adapters on a base whose adapted kernels are
  `W + delta`, built inside the step: a second copy of the adapted kernels while the teacher
  scores (and the dense teacher itself: one more), which is fine for small models and LoRA-small
  budgets, not for 7B. With a bfloat16 base, deltas below half an ulp of a kernel entry round
  away in `W + delta`; a model-side hook (`y = x W^T + x delta`) would keep them.

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
    teacher: nnx.State  # turbo modes: adapters like `policy` (factored) or kernel deltas (dense)
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


def lora_pairs(adapters: nnx.State) -> dict[tuple, tuple[jax.Array, jax.Array]]:
    """`{linear path: (a, b)}` of a LoRA state (leaves may carry leading axes, e.g. snapshots)."""
    flat = dict(nnx.to_flat_state(adapters))
    return {
        path[:-1]: (variable[...], flat[(*path[:-1], "lora_b")][...])
        for path, variable in flat.items()
        if path[-1] == "lora_a"
    }


def kernel_path(linear_path: tuple) -> tuple:
    """Where a linear layer's kernel (`[out, in]`) sits in the base state."""
    return (*linear_path, "weight")


def kernel_deltas(adapters: nnx.State, base: nnx.State, scale: float) -> nnx.State:
    """The dense delta `(a @ b * scale)^T` of each adapted kernel, float32, in the kernel's
    `[out, in]` layout at the kernel's path (the dense teacher's structure)."""
    kernels = dict(nnx.to_flat_state(base))
    return nnx.from_flat_state(
        {
            kernel_path(path): kernels[kernel_path(path)].replace(
                scale * jnp.matmul(a, b, preferred_element_type=jnp.float32).T
            )
            for path, (a, b) in lora_pairs(adapters).items()
        }
    )


def teacher_weights(state: TrainState, config: UpdateConfig) -> tuple[nnx.State, nnx.State]:
    """`(adapters, base)` of the teacher's forward, for `nnx.merge(defs.model, adapters, base)`.

    Factored: the teacher's adapters on the shared base. Dense: zero adapters (the LoRA branch
    then adds nothing) on a base whose adapted kernels are `W + delta`, in the kernel's dtype.
    """
    if not config.uses_teacher:
        raise ValueError(f"mode={config.mode!r} has no teacher: use turbo_sft or turbo_kl")
    if not is_dense_teacher(state, config):
        return state.teacher, state.base
    zero_adapters = jax.tree.map(jnp.zeros_like, state.policy)
    kernels = dict(nnx.to_flat_state(state.base))
    shifted = nnx.from_flat_state(
        {
            path: kernels[path].replace(
                (kernels[path][...].astype(jnp.float32) + delta[...]).astype(
                    kernels[path][...].dtype
                )
            )
            for path, delta in nnx.to_flat_state(state.teacher)
        }
    )
    return zero_adapters, nnx.merge_state(state.base, shifted)


def is_dense_teacher(state: TrainState, config: UpdateConfig) -> bool:
    """Dense merge space on a LoRA model (without LoRA, both spaces merge the full weights)."""
    return config.uses_teacher and config.merge_space == "dense" and state.lora_scale > 0.0


def init_train_state(
    model: Qwen25VL,
    value_head: ValueHead,
    config: UpdateConfig,
    key: jax.Array,
    batch_like: Batch,
) -> tuple[ModelDefs, TrainState]:
    """Splits the modules into the state pytree. `batch_like` (e.g. `Batch.dummy(...)` of the
    rollout's shapes) sizes the DAgger buffer (its images in the model's compute dtype); the
    teacher and theta_0 start as the policy. Parts the mode does not use are empty states."""
    graphdef, trainable, base = split_model(model)
    value_graphdef, value_params = nnx.split(value_head, nnx.Param)
    copy = lambda tree: jax.tree.map(jnp.array, tree)  # distinct buffers: the state is donated
    empty = nnx.State({})
    capacity = config.snapshot_capacity if config.uses_snapshots else 0
    running = config.uses_snapshots and config.merge_window == "all"
    lora_scale = (
        float(model.lora.scale)
        if model.lora is not None and nnx.state(model, nnx.LoRAParam)
        else 0.0
    )
    if running and config.merge_space == "dense" and lora_scale > 0.0:
        raise ValueError(
            "merge_window='all' with merge_space='dense' would keep 4 float32 copies of every "
            "adapted kernel: use merge_window='ring' (or merge_space='factored')"
        )
    if running:
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
    if config.uses_teacher:
        dense = is_dense_teacher(state, config)
        teacher = kernel_deltas(trainable, base, lora_scale) if dense else copy(trainable)
        state = state.replace(teacher=teacher)
    return ModelDefs(graphdef, value_graphdef), state
