"""The merged teacher (GTR-Turbo section 4.1): EMA, SMA and TIES over policy snapshots.

Snapshots live in a fixed-capacity ring buffer: a pytree whose leaves carry a leading snapshot axis
`[S, ...]`, with a `valid [S]` mask, so shapes never change inside jit. Merges work on *deltas*
(task vectors `theta_i - theta_0`, or LoRA factors/products) and return a merged delta; the teacher
is `theta_0 + merged`.

LoRA (Flax layout: `a [in, r]`, `b [r, out]`, delta kernel `a @ b * scaling`, scaling = alpha / r):
- "dense" (the paper's semantics; `merge_lora`'s default mode): merge the products `a_i @ b_i * scaling`; the result
  is a dense `[in, out]` delta per adapted kernel, to be added to the base kernel. (With the usual
  `b = 0` initialisation the product itself is the snapshot's task vector.)
- "factored" (the authors' code, through PEFT): merge the `a` and `b` stacks separately as ordinary
  leaves; the result is a LoRA pair `(a_m, b_m)` whose delta is `a_m @ b_m * scaling`, which is not
  the merge of the products (it is smaller: disagreeing factors cancel twice, and PEFT's TIES
  normalises by counts, not weights). `peft_compat=True` reproduces PEFT's arithmetic exactly.
Full-weight deltas (no LoRA) go straight to `merge_deltas` / `ties_merge`.
"""

from __future__ import annotations

import math
from functools import partial, reduce
from typing import Any

import chex
import jax
import jax.numpy as jnp

from gtr_turbo_jax.rl._checks import check_choice, check_range

PyTree = Any
MERGE_METHODS = ("ties", "linear")
LORA_MERGE_MODES = ("dense", "factored")


def ema_merge(teacher: PyTree, policy: PyTree, alpha: float) -> PyTree:
    """`alpha * policy + (1 - alpha) * teacher`, leaf by leaf, in the teacher's dtypes."""
    check_range("alpha", alpha, 0.0, 1.0)
    return jax.tree.map(
        lambda t, p: (alpha * p.astype(jnp.float32) + (1.0 - alpha) * t.astype(jnp.float32)).astype(
            t.dtype
        ),
        teacher,
        policy,
    )


def sma_weights(valid: jax.Array) -> jax.Array:
    """Equal weights over the filled slots of the snapshot buffer (all zero while it is empty)."""
    chex.assert_rank(valid, 1)
    valid = valid.astype(jnp.float32)
    return valid / jnp.maximum(jnp.sum(valid), 1.0)


def push_snapshot(
    snapshots: PyTree, valid: jax.Array, count: jax.Array, snapshot: PyTree
) -> tuple[PyTree, jax.Array]:
    """Writes `snapshot` into slot `count % S` of the ring buffer (overwriting the oldest when full).

    `count` is the number of snapshots pushed so far; the caller increments it. Start from a
    zero-filled stack: empty slots get weight 0, and 0 * NaN would still poison a merge.
    """
    chex.assert_rank(valid, 1)
    slot = jnp.asarray(count) % valid.shape[0]
    snapshots = jax.tree.map(
        lambda stack, x: jnp.asarray(stack).at[slot].set(jnp.asarray(x, stack.dtype)),
        snapshots,
        snapshot,
    )
    return snapshots, jnp.asarray(valid).at[slot].set(True)


def linear_merge(deltas: PyTree, weights: jax.Array) -> PyTree:
    """`sum_i w_i * delta_i` per leaf (weights used as given: SMA weights sum to 1)."""
    chex.assert_rank(weights, 1)
    weights = weights.astype(jnp.float32)
    return jax.tree.map(
        lambda stack: jnp.tensordot(weights, stack.astype(jnp.float32), axes=1).astype(stack.dtype),
        deltas,
    )


def _trim_count(density: float, size: int, peft_compat: bool) -> int:
    if peft_compat:  # PEFT: int(density * numel), which can be 0 (then everything is trimmed)
        return int(density * size)
    # round() first: 0.8 * 10 is 8.000000000000002 in floating point, and ceil of that would be 9.
    return max(1, math.ceil(round(float(density) * size, 9)))


_MAGNITUDE_BITS = 31  # a non-negative float32's bit pattern is an int32 below 2**31
_EXACT_FLOAT_COUNT = 1 << 24  # float32 counts 0/1 flags exactly up to here, in any order


def kth_largest_magnitude(magnitude: jax.Array, keep: int) -> jax.Array:
    """The `keep`-th largest entry of each row of `magnitude [S, n]` (non-negative float32, NaN
    counting as the largest), exactly `jnp.sort(magnitude, axis=1)[:, n - keep]`, without a sort.

    Non-negative floats order as their int32 bit patterns, so the answer is the largest bit pattern
    `t` with `count(bits >= t) >= keep` (it is always an entry's); that count only falls as `t`
    grows, so `t` is built bit by bit from the top: 31 counting passes over the row instead of a
    sort (XLA's CPU sort is some 20x slower on the tiny models' leaves).
    """
    chex.assert_rank(magnitude, 2)
    bits = jax.lax.bitcast_convert_type(magnitude.astype(jnp.float32), jnp.int32)
    # XLA:CPU sums float32 about twice as fast as int32.
    count_dtype = jnp.float32 if bits.shape[1] <= _EXACT_FLOAT_COUNT else jnp.int32

    def try_bit(step: jax.Array, found: jax.Array) -> jax.Array:
        candidate = found | jnp.left_shift(jnp.int32(1), _MAGNITUDE_BITS - 1 - step)
        enough = jnp.sum((bits >= candidate[:, None]).astype(count_dtype), axis=1) >= keep
        return jnp.where(enough, candidate, found)

    found = jax.lax.fori_loop(0, _MAGNITUDE_BITS, try_bit, jnp.zeros(bits.shape[:1], jnp.int32))
    return jax.lax.bitcast_convert_type(found, jnp.float32)


def _sum_snapshots(stack: jax.Array) -> jax.Array:
    """`jnp.sum(stack, axis=0)` as adds of the rows in slot order: XLA:CPU reduces over a leading
    axis some 30x slower than it adds `S` rows (and its order of adds depends on the shape)."""
    return reduce(jnp.add, list(stack), jnp.zeros(stack.shape[1:], stack.dtype))


def _trim_rows(flat: jax.Array, density: float, peft_compat: bool) -> jax.Array:
    """TIES's trim of each row of `flat [S, n]`: the entries at or above the row's k-th largest
    magnitude (`_trim_count`), the others 0."""
    keep = _trim_count(density, flat.shape[1], peft_compat)
    if keep == 0:
        return jnp.zeros_like(flat)
    magnitude = jnp.abs(flat)
    kth_largest = kth_largest_magnitude(magnitude, keep)
    return jnp.where(magnitude >= kth_largest[:, None], flat, 0.0)


# jit: one compiled program per leaf shape, also when called eagerly (inlined inside an outer jit).
@partial(jax.jit, static_argnames=("density", "scale", "peft_compat"))
def _ties_leaf(
    stack: jax.Array, weights: jax.Array, density: float, scale: float, peft_compat: bool
) -> jax.Array:
    num_snapshots = stack.shape[0]
    flat = stack.reshape(num_snapshots, -1).astype(jnp.float32)
    # 1. Trim: per snapshot, keep entries at or above the k-th largest magnitude.
    trimmed = _trim_rows(flat, density, peft_compat)
    # 2. Elect a sign per entry from the weighted sum (PEFT: the unweighted sum), 0 counting as +.
    weighted = weights[:, None] * trimmed
    elected_sign = jnp.where(_sum_snapshots(trimmed if peft_compat else weighted) >= 0, 1.0, -1.0)
    # 3. Disjoint mean over the snapshots whose non-zero entry has the elected sign: normalised by
    # their weights (PEFT: by their count, so the result shrinks with the weights).
    agrees = (trimmed != 0) & (jnp.sign(trimmed) == elected_sign)
    total = _sum_snapshots(jnp.where(agrees, weighted, 0.0))
    if peft_compat:
        norm = _sum_snapshots(agrees.astype(jnp.int32)).astype(jnp.float32)
    else:
        norm = _sum_snapshots(jnp.where(agrees, weights[:, None], 0.0))
    merged = jnp.where(norm > 0, total / jnp.where(norm > 0, norm, 1.0), 0.0)
    return (scale * merged).reshape(stack.shape[1:]).astype(stack.dtype)


def ties_merge(
    deltas: PyTree,
    weights: jax.Array,
    density: float,
    scale: float = 1.0,
    *,
    peft_compat: bool = False,
) -> PyTree:
    """TIES merge (trim, elect sign, disjoint mean) of each leaf's `[S, ...]` stack -> `[...]`.

    Per leaf and snapshot, trimming keeps the entries whose magnitude is at or above the k-th largest,
    `k = ceil(density * size)`; the elected sign is that of `sum_i w_i * trimmed_i` (0 counts as +);
    the result is `scale * sum_i w_i trimmed_i agree_i / sum_i w_i agree_i`, with `agree_i` marking
    the non-zero entries of the elected sign, and 0 where no snapshot (of positive weight) agrees.
    Weights are non-negative and need not sum to 1; empty buffer slots get weight 0.

    `peft_compat=True` follows PEFT's `ties` (what the authors' code ran): `k = int(density * size)`,
    the sign of the unweighted sum, and `sum_i w_i trimmed_i agree_i / max(sum_i agree_i, 1)`.
    (Entries tied with the k-th largest magnitude are all kept; PEFT's top-k keeps exactly k.)
    """
    chex.assert_rank(weights, 1)
    check_range("density", density, 0.0, 1.0, low_open=True)
    check_range("scale", scale, 0.0, float("inf"))
    weights = weights.astype(jnp.float32)

    def merge_leaf(stack: jax.Array) -> jax.Array:
        chex.assert_axis_dimension(stack, 0, weights.shape[0])
        return _ties_leaf(stack, weights, float(density), float(scale), bool(peft_compat))

    return jax.tree.map(merge_leaf, deltas)


def merge_deltas(
    deltas: PyTree,
    weights: jax.Array,
    method: str = "ties",
    density: float = 0.8,
    scale: float = 1.0,
    *,
    peft_compat: bool = False,
) -> PyTree:
    """`ties_merge` or the plain weighted sum (`linear`, TIES's ablation baseline), times `scale`."""
    check_choice("method", method, MERGE_METHODS)
    if method == "ties":
        return ties_merge(deltas, weights, density, scale, peft_compat=peft_compat)
    check_range("scale", scale, 0.0, float("inf"))
    return jax.tree.map(
        lambda leaf: (scale * leaf).astype(leaf.dtype), linear_merge(deltas, weights)
    )


# --- SMA over every snapshot of the run, in bounded memory ----------------------------------------
# With equal weights TIES needs, per entry, only four running sums over the snapshots: the sum of
# the trimmed entries that are positive, of those that are negative, and how many of each. The
# elected sign is that of their total, the disjoint mean the matching sum over its count. So the
# paper's SMA over every snapshot so far costs four copies of the trainable parameters (a leading
# axis of `RUNNING_ROWS`), whatever the run's length; `linear` keeps the same sums untrimmed.
RUNNING_ROWS = 4  # positive sum, negative sum, positive count, negative count


def running_sums_init(like: PyTree) -> PyTree:
    """Zero running sums `[RUNNING_ROWS, ...]` for deltas shaped like `like`, in float32."""
    return jax.tree.map(lambda x: jnp.zeros((RUNNING_ROWS, *x.shape), jnp.float32), like)


@partial(jax.jit, static_argnames=("density", "peft_compat"))
def _running_push_leaf(
    sums: jax.Array, delta: jax.Array, density: float | None, peft_compat: bool
) -> jax.Array:
    flat = delta.reshape(1, -1).astype(jnp.float32)
    if density is not None:  # TIES step 1, as `ties_merge` trims each snapshot
        flat = _trim_rows(flat, density, peft_compat)
    flat = flat.reshape(delta.shape)
    rows = (
        jnp.maximum(flat, 0.0),
        jnp.minimum(flat, 0.0),
        (flat > 0).astype(jnp.float32),
        (flat < 0).astype(jnp.float32),
    )
    return sums + jnp.stack(rows)


def running_sums_push(
    sums: PyTree, delta: PyTree, density: float | None, *, peft_compat: bool = False
) -> PyTree:
    """Adds one snapshot's task vector to the running sums, trimmed to its top `density` entries
    by magnitude (TIES) or untrimmed (`None`: the linear merge); `peft_compat`: PEFT's trim count
    `int(density * size)` (`ties_merge`)."""
    if density is not None:
        check_range("density", density, 0.0, 1.0, low_open=True)
    density = None if density is None else float(density)
    push = lambda acc, x: _running_push_leaf(acc, x, density, bool(peft_compat))
    return jax.tree.map(push, sums, delta)


def running_sums_merge(
    sums: PyTree,
    num_snapshots: jax.Array,
    method: str = "ties",
    scale: float = 1.0,
    *,
    peft_compat: bool = False,
) -> PyTree:
    """The merge with SMA weights over the `num_snapshots` pushed snapshots, in float32 (0 before
    the first).

    `ties`: `ties_merge` of the pushed stack exactly: the elected sign is that of `positive +
    negative` (0 counts as +), the result the elected side's sum over its count (0 where no
    snapshot has an entry of that sign). `linear`: `(positive + negative) / num_snapshots`.

    `peft_compat=True`: one factor of PEFT's `add_weighted_adapter` over the N snapshots with SMA
    weights (`merge_lora(mode="factored", peft_compat=True)`: weights `sqrt(1/N)`, TIES normalised
    by counts): `ties` is then `sqrt(1/N)` times the result above, `linear` `sqrt(N)` times it
    (the pushes trimmed with `peft_compat` too)."""
    check_choice("method", method, MERGE_METHODS)
    check_range("scale", scale, 0.0, float("inf"))
    snapshots = jnp.maximum(jnp.asarray(num_snapshots, jnp.float32), 1.0)
    if peft_compat:  # PEFT's weights w = sqrt(1/N) enter un-normalised: w * sum, w * sum / count
        scale = scale * (jnp.sqrt(snapshots) if method == "linear" else jax.lax.rsqrt(snapshots))

    def merge_leaf(leaf: jax.Array) -> jax.Array:
        positive, negative, positives, negatives = leaf
        if method == "linear":
            return scale * (positive + negative) / snapshots
        plus = positive + negative >= 0
        total, count = jnp.where(plus, positive, negative), jnp.where(plus, positives, negatives)
        return scale * jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)

    return jax.tree.map(merge_leaf, sums)


def lora_product(lora_a: PyTree, lora_b: PyTree, scaling: float) -> PyTree:
    """Dense LoRA deltas `a @ b * scaling` leaf by leaf (`[..., in, r] x [..., r, out]`, leading axes
    such as the snapshot axis broadcast)."""
    return jax.tree.map(
        lambda a, b: (scaling * jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32))).astype(
            a.dtype
        ),
        lora_a,
        lora_b,
    )


def lora_task_products(
    delta_a: PyTree, delta_b: PyTree, initial_a: PyTree, initial_b: PyTree, scaling: float
) -> PyTree:
    """Dense task vectors of LoRA snapshots stored as factor task vectors, leaf by leaf:
    `((a0 + da) @ (b0 + db) - a0 @ b0) * scaling`, computed as `(da @ (b0 + db) + a0 @ db) *
    scaling` (no cancellation). `delta_*` leaves carry a leading snapshot axis (`[S, in, r]`,
    `[S, r, out]`), `initial_*` do not; float32 `[S, in, out]` out. With the usual `b0 = 0` this is
    `lora_product` of the snapshots' factors."""
    f32 = lambda x: x.astype(jnp.float32)
    return jax.tree.map(
        lambda da, db, a0, b0: (
            scaling * (jnp.matmul(f32(da), f32(b0) + f32(db)) + jnp.matmul(f32(a0), f32(db)))
        ),
        delta_a,
        delta_b,
        initial_a,
        initial_b,
    )


def merge_lora(
    lora_a: PyTree,
    lora_b: PyTree,
    weights: jax.Array,
    *,
    mode: str = "dense",
    scaling: float = 1.0,
    method: str = "ties",
    density: float = 0.8,
    scale: float = 1.0,
    peft_compat: bool = False,
) -> PyTree | tuple[PyTree, PyTree]:
    """Merges stacked LoRA snapshots `[S, in, r]`, `[S, r, out]` (same tree structure).

    `mode="dense"` returns the merged dense deltas `[in, out]` (add to the base kernels);
    `mode="factored"` returns `(a_m, b_m)`, the factors merged separately; apply them as a LoRA pair
    with the same `scaling`. See the module docstring for the difference. With `peft_compat=True`
    the factored mode reproduces PEFT's `add_weighted_adapter(combination_type="ties")`: each factor
    merged by PEFT's TIES with weights `sqrt(w_i)` (PEFT uses `sqrt(w_i * scaling)` and a merged
    scaling of 1; both TIES variants are linear in the weights, so the delta is the same).
    """
    check_choice("mode", mode, LORA_MERGE_MODES)
    if mode == "dense":
        products = lora_product(lora_a, lora_b, scaling)
        return merge_deltas(products, weights, method, density, scale, peft_compat=peft_compat)
    if peft_compat:
        weights = jnp.sqrt(weights.astype(jnp.float32))
    merged_a = merge_deltas(lora_a, weights, method, density, scale, peft_compat=peft_compat)
    merged_b = merge_deltas(lora_b, weights, method, density, scale, peft_compat=peft_compat)
    return merged_a, merged_b
