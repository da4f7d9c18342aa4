"""The free teacher: its weights, the snapshots it is merged from, the merge, its distance.

GTR-Turbo's teacher is the policy's own past checkpoints merged (METHOD.md 3). After every PPO
epoch the task vector `tau_i = theta_i - theta_0` is snapshotted (`push_snapshot`); every
`merge_interval` updates the teacher is re-merged from them (`remerge`: TIES / linear with SMA
weights, or EMA of the policy). By `UpdateConfig.merge_space` the teacher is
- `dense` (the default, the paper's semantics, LoRA only): one float32 delta per adapted kernel,
  in the kernel's `[out, in]` layout at the kernel's path (`.../q_proj/weight`); its forward
  (`teacher_weights`) is the model with zero adapters on a base whose adapted kernels are
  `W + delta`. With a bfloat16 base, deltas below half an ulp of a kernel entry round away;
- `peft` (the authors' arithmetic, LoRA only): an adapter set of the policy's structure, merged by
  PEFT's `add_weighted_adapter` from the snapshots' adapters themselves (not task vectors); its
  forward is the model with the teacher's adapters on the shared base;
- `factored`: adapters like `peft`, merged leaf by leaf from the `a` / `b` task vectors (an
  adapter-sized approximation of `dense`).
Without LoRA `dense` and `factored` merge the full weights alike (the teacher has the policy's
structure); `peft` needs adapters.

The functions read the teacher's part of the train state through `TeacherFields` (the
`TrainState` has them), so this module sits below `train.state`.
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from gtr_turbo_jax import rl
from gtr_turbo_jax.train.config import UpdateConfig


class TeacherFields(Protocol):
    base: nnx.State  # frozen parameters shared by policy and teacher
    policy: nnx.State  # the policy's adapters (or every parameter without LoRA)
    teacher: nnx.State  # kernel deltas (dense) or adapters like `policy` (peft, factored)
    initial: nnx.State  # theta_0 (TIES / linear merges)
    snapshots: nnx.State  # task vectors: a ring `[S, ...]` or running sums
    snapshot_valid: jax.Array
    snapshot_count: jax.Array
    lora_scale: float  # alpha / r; 0: no LoRA


# ------------------------------------------------------------------------ LoRA as kernels
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


# ------------------------------------------------------------------------------ weights
def is_dense(lora_scale: float, config: UpdateConfig) -> bool:
    """Dense merge space on a LoRA model (without LoRA, both spaces merge the full weights)."""
    return config.uses_teacher and config.merge_space == "dense" and lora_scale > 0.0


def is_peft(config: UpdateConfig) -> bool:
    """PEFT's merge of the snapshots' adapters (the authors' code)."""
    return config.uses_teacher and config.merge_space == "peft"


def initial_teacher(trainable: nnx.State, base: nnx.State, lora_scale: float, config) -> nnx.State:
    """The teacher at the start: the policy itself, as adapters or as kernel deltas."""
    if is_peft(config) and config.teacher_source == "merged" and not lora_scale > 0.0:
        raise ValueError(
            "rl.merge_space='peft' merges LoRA adapters as PEFT does: the model has none "
            "(set model.lora_rank, or use merge_space='factored')"
        )
    if is_dense(lora_scale, config):
        return kernel_deltas(trainable, base, lora_scale)
    return jax.tree.map(jnp.array, trainable)  # distinct buffers: the state is donated


def teacher_weights(state: TeacherFields, config: UpdateConfig) -> tuple[nnx.State, nnx.State]:
    """`(adapters, base)` of the teacher's forward, for `nnx.merge(defs.model, adapters, base)`
    (an external teacher: `defs.teacher`).

    Factored: the teacher's adapters on the shared base. Dense: zero adapters (the LoRA branch
    then adds nothing) on a base whose adapted kernels are `W + delta`, in the kernel's dtype.
    External: the teacher's own parameters, nothing shared.
    """
    if not config.uses_teacher:
        raise ValueError(f"mode={config.mode!r} has no teacher: use turbo_sft or turbo_kl")
    if config.external_teacher:
        return state.teacher, nnx.State({})
    if not is_dense(state.lora_scale, config):
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


# ---------------------------------------------------------------------- snapshot and merge
def push_snapshot(
    state: TeacherFields,
    snapshots: nnx.State,
    valid: jax.Array,
    count: jax.Array,
    policy: nnx.State,
    config: UpdateConfig,
) -> tuple[nnx.State, jax.Array, jax.Array]:
    """Records the task vector `policy - theta_0` (`state` gives theta_0, and the base kernels
    of a dense merge; `peft`: the adapters themselves, what PEFT merges): into the running sums
    (`merge_window="all"`, TIES's trimmed signs and magnitudes included; dense: of the kernel
    products) or the ring of the last S."""
    peft = is_peft(config)
    if config.merge_window == "all":
        task_vector = policy if peft else running_task_vector(state, policy, config)
        density = config.merge_density if config.merge_method == "ties" else None
        snapshots = rl.running_sums_push(snapshots, task_vector, density, peft_compat=peft)
    else:
        task_vector = policy if peft else jax.tree.map(jnp.subtract, policy, state.initial)
        snapshots, valid = rl.push_snapshot(snapshots, valid, count, task_vector)
    return snapshots, valid, count + 1


def running_task_vector(state: TeacherFields, policy: nnx.State, config: UpdateConfig) -> nnx.State:
    """What the running sums add up: `policy - theta_0`, leaf by leaf, or with a dense merge
    the change of each adapted kernel's product, `(a b - a_0 b_0) * scale` (`[out, in]`)."""
    if not is_dense(state.lora_scale, config):
        return jax.tree.map(jnp.subtract, policy, state.initial)
    now = kernel_deltas(policy, state.base, state.lora_scale)
    start = kernel_deltas(state.initial, state.base, state.lora_scale)
    return jax.tree.map(jnp.subtract, now, start)


def merge_teacher(state: TeacherFields, policy: nnx.State, config: UpdateConfig) -> nnx.State:
    """The re-merged teacher, in the structure of `state.teacher`.

    EMA: `alpha * policy + (1 - alpha) * teacher`. TIES / linear: `theta_0 + merge(tau_i)` with SMA
    weights, over every snapshot so far (`merge_window="all"`, from the running sums) or the ring;
    factored, on the LoRA `a` / `b` task vectors leaf by leaf;
    dense, on the per-kernel products (`rl.merge.lora_task_products`, an `[S, in, out]` stack per
    kernel while it merges), stored as `[out, in]` kernel deltas.
    """
    if is_peft(config):
        return peft_teacher(state, config)
    dense = is_dense(state.lora_scale, config)
    if config.merge_method == "ema":
        target = kernel_deltas(policy, state.base, state.lora_scale) if dense else policy
        return rl.ema_merge(state.teacher, target, config.ema_alpha)
    plus_initial = lambda merged: jax.tree.map(
        lambda theta0, tau: theta0 + tau.astype(theta0.dtype), state.initial, merged
    )
    if config.merge_window == "all":
        merged = rl.running_sums_merge(
            state.snapshots, state.snapshot_count, config.merge_method, config.merge_scale
        )
        if dense:  # the starting product plus the merged change of each kernel's product
            start = kernel_deltas(state.initial, state.base, state.lora_scale)
            return jax.tree.map(jnp.add, start, merged)
        return plus_initial(merged)
    weights = rl.sma_weights(state.snapshot_valid)
    merge = lambda deltas: rl.merge_deltas(
        deltas, weights, config.merge_method, config.merge_density, config.merge_scale
    )
    if not dense:
        return plus_initial(merge(state.snapshots))
    initial, snapshots, scale = (
        lora_pairs(state.initial),
        lora_pairs(state.snapshots),
        state.lora_scale,
    )
    # Keyed by strings: pytree dict keys are sorted, and paths mix ints and strings.
    names = {"/".join(map(str, path)): path for path in snapshots}
    taus = {
        name: rl.lora_task_products(*snapshots[path], *initial[path], scale)
        for name, path in names.items()
    }
    merged = merge(taus)
    initial_deltas = dict(nnx.to_flat_state(kernel_deltas(state.initial, state.base, scale)))
    return nnx.from_flat_state(
        {
            kernel_path(path): initial_deltas[kernel_path(path)].replace(
                initial_deltas[kernel_path(path)][...] + merged[name].T
            )
            for name, path in names.items()
        }
    )


def peft_teacher(state: TeacherFields, config: UpdateConfig) -> nnx.State:
    """PEFT's `add_weighted_adapter(snapshots, SMA weights, combination_type)` as the authors'
    code calls it: each LoRA factor merged apart, from the snapshots' adapters, with PEFT's TIES
    (or weighted sum) and factor weights `sqrt(w_i)` (PEFT: `sqrt(w_i * scaling)` at a merged
    scaling of 1, the same delta). Over every snapshot so far (the running sums) or the ring."""
    if config.merge_window == "all":
        merged = rl.running_sums_merge(
            state.snapshots, state.snapshot_count, config.merge_method, config.merge_scale,
            peft_compat=True,
        )  # fmt: skip
    else:
        weights = jnp.sqrt(rl.sma_weights(state.snapshot_valid))
        merged = rl.merge_deltas(
            state.snapshots, weights, config.merge_method, config.merge_density,
            config.merge_scale, peft_compat=True,
        )  # fmt: skip
    return jax.tree.map(lambda m, p: m.astype(p.dtype), merged, state.policy)


def remerge(
    state: TeacherFields, policy: nnx.State, update_count: jax.Array, config: UpdateConfig
) -> tuple[nnx.State, jax.Array, jax.Array | None]:
    """`(teacher, merged_now, distance)` after update `update_count` (0-based): re-merged every
    `merge_interval` updates (`lax.cond`: one program for both), and the global L2 distance of the
    new teacher to the policy in the teacher's space. `teacher_source="initial"` (the paper's
    static-teacher ablation) never re-merges; an external teacher neither, and has no distance to
    the policy (a different model: None)."""
    if not config.uses_teacher:
        return state.teacher, jnp.zeros((), bool), jnp.zeros((), jnp.float32)
    if config.external_teacher:
        return state.teacher, jnp.zeros((), bool), None
    merged_now = (update_count + 1) % config.merge_interval == 0
    merged_now = merged_now & (config.teacher_source == "merged")
    teacher = jax.lax.cond(
        merged_now, lambda: merge_teacher(state, policy, config), lambda: state.teacher
    )
    dense = is_dense(state.lora_scale, config)
    as_teacher = kernel_deltas(policy, state.base, state.lora_scale) if dense else policy
    squares = jax.tree.map(lambda x, y: jnp.sum(jnp.square(x - y)), teacher, as_teacher)
    distance = jnp.sqrt(sum(jax.tree.leaves(squares), jnp.zeros((), jnp.float32)))
    return teacher, merged_now, distance
