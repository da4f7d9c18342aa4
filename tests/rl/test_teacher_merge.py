"""TIES / linear / EMA / SMA merges of snapshot deltas vs entry-by-entry numpy transcriptions."""

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gtr_turbo_jax import rl
from gtr_turbo_jax.rl import (
    ema_merge,
    linear_merge,
    lora_product,
    merge_deltas,
    merge_lora,
    push_snapshot,
    sma_weights,
    ties_merge,
)
from gtr_turbo_jax.rl import merge as merge_module
from gtr_turbo_jax.rl.merge import kth_largest_magnitude, lora_task_products


def ties_reference(stack, weights, density, scale=1.0):
    """TIES on one `[S, ...]` stack, looping over snapshots and entries."""
    snapshots = [np.asarray(s, np.float64).ravel() for s in stack]
    size = snapshots[0].size
    k = math.ceil(Fraction(str(density)) * size)
    trimmed = []
    for snap in snapshots:
        kth_largest = sorted(abs(x) for x in snap)[::-1][k - 1]
        trimmed.append([x if abs(x) >= kth_largest else 0.0 for x in snap])
    merged = []
    for j in range(size):
        weighted_sum = sum(w * t[j] for w, t in zip(weights, trimmed))
        sign = 1.0 if weighted_sum >= 0 else -1.0
        num = den = 0.0
        for w, t in zip(weights, trimmed):
            if t[j] != 0 and math.copysign(1.0, t[j]) == sign:
                num += w * t[j]
                den += w
        merged.append(scale * num / den if den > 0 else 0.0)
    return np.array(merged).reshape(np.shape(stack)[1:])


def random_deltas(seed, num_snapshots=4):
    rng = np.random.default_rng(seed)
    return {
        "kernel": rng.normal(size=(num_snapshots, 6, 5)).astype(np.float32),
        "bias": rng.normal(size=(num_snapshots, 7)).astype(np.float32),
        "scalar": rng.normal(size=(num_snapshots,)).astype(np.float32),
    }


@pytest.mark.parametrize(("seed", "density"), [(0, 0.8), (1, 0.5), (2, 1.0), (3, 0.1)])
def test_ties_matches_reference(seed, density):
    deltas = random_deltas(seed)
    weights = np.random.default_rng(seed).uniform(0.1, 1.0, size=4).astype(np.float32)
    merged = ties_merge(deltas, weights, density, scale=1.3)
    for name, stack in deltas.items():
        expected = ties_reference(stack, weights, density, 1.3)
        np.testing.assert_allclose(merged[name], expected, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize(("seed", "density", "count"), [(0, 0.8, 1), (1, 0.5, 6), (2, 1.0, 3)])
def test_running_sums_merge_is_ties_and_linear_over_every_snapshot(seed, density, count):
    """The SMA over the whole run from four running sums equals the numpy TIES transcription
    (and the plain mean, `linear`) over the stack of every snapshot pushed so far."""
    deltas = random_deltas(seed, num_snapshots=count)
    deltas["scalar"][0] = 0.0  # a zero entry counts on neither side
    one = jax.tree.map(lambda x: x[0], deltas)
    sums = {"ties": rl.running_sums_init(one), "linear": rl.running_sums_init(one)}
    push = jax.jit(rl.running_sums_push, static_argnames="density")
    for i in range(count):
        snapshot = jax.tree.map(lambda x, i=i: x[i], deltas)
        sums = {
            "ties": push(sums["ties"], snapshot, density),
            "linear": push(sums["linear"], snapshot, None),
        }
    ties = rl.running_sums_merge(sums["ties"], jnp.int32(count), "ties", scale=1.3)
    linear = rl.running_sums_merge(sums["linear"], jnp.int32(count), "linear")
    weights = np.full(count, 1.0 / count)
    for name, stack in deltas.items():
        expected = ties_reference(stack, weights, density, 1.3)
        np.testing.assert_allclose(ties[name], expected, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(linear[name], stack.mean(0), rtol=1e-5, atol=1e-6)
    assert all(leaf.shape[0] == rl.RUNNING_ROWS for leaf in jax.tree.leaves(sums["ties"]))
    empty = rl.running_sums_merge(rl.running_sums_init(one), jnp.int32(0), "ties")
    for leaf in jax.tree.leaves(empty):  # before the first snapshot the teacher is the start
        np.testing.assert_array_equal(leaf, np.zeros_like(leaf))


def test_ties_hand_worked_example():
    # Three snapshots of four entries, equal weights, density 0.5 (keep the top 2 per snapshot).
    stack = np.array(
        [[3.0, -1.0, 2.0, 0.5], [-4.0, 1.0, 0.1, 2.0], [1.0, -2.0, -3.0, 0.2]], np.float32
    )
    # trimmed:       [3, 0, 2, 0],           [-4, 0, 0, 2],          [0, -2, -3, 0]
    # weighted sums: [-1, -2, -1, 2] -> elected signs [-, -, -, +]
    # disjoint means: [-4, -2, -3, 2]
    merged = ties_merge(stack, np.ones(3, np.float32), density=0.5)
    np.testing.assert_allclose(merged, [-4.0, -2.0, -3.0, 2.0])


def test_ties_trims_exactly_ceil_density_times_size():
    # Distinct magnitudes 1..10; density 0.8 keeps 8 entries (0.8 * 10 is 8.000000000000002 in
    # floating point: the trim count must not become 9).
    stack = np.arange(1.0, 11.0, dtype=np.float32)[None]
    merged = np.asarray(ties_merge(stack, np.ones(1, np.float32), density=0.8))
    np.testing.assert_array_equal(merged, [0, 0] + list(range(3, 11)))
    merged = np.asarray(ties_merge(stack, np.ones(1, np.float32), density=0.25))  # ceil(2.5) = 3
    np.testing.assert_array_equal(merged, [0] * 7 + [8, 9, 10])


def test_ties_density_one_is_the_sign_aware_weighted_mean():
    deltas = random_deltas(4)["kernel"]
    weights = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    merged = np.asarray(ties_merge(deltas, weights, density=1.0))
    elected = np.sign(np.einsum("s,sij->ij", weights, deltas))
    agree = np.sign(deltas) == elected
    expected = np.einsum("s,sij->ij", weights, deltas * agree) / np.einsum(
        "s,sij->ij", weights, agree
    )
    np.testing.assert_allclose(merged, expected, rtol=1e-5, atol=1e-6)
    # Where every snapshot has the same sign, that is the weighted mean itself.
    same_sign = np.all(agree, axis=0)
    assert same_sign.any()
    weighted_mean = np.einsum("s,sij->ij", weights / weights.sum(), deltas)
    np.testing.assert_allclose(merged[same_sign], weighted_mean[same_sign], rtol=1e-5)


@pytest.mark.parametrize("method", ["ties", "linear"])
def test_merging_identical_snapshots_is_the_identity(method):
    snapshot = random_deltas(5, num_snapshots=1)
    identical = jax.tree.map(lambda x: np.repeat(x, 3, axis=0), snapshot)
    merged = merge_deltas(identical, sma_weights(np.ones(3, bool)), method=method, density=1.0)
    for name in snapshot:
        np.testing.assert_allclose(merged[name], snapshot[name][0], rtol=1e-6, err_msg=name)


def test_ties_ignores_empty_slots_of_the_ring_buffer():
    deltas = random_deltas(6, num_snapshots=5)
    valid = np.array([True, False, True, True, False])
    merged = ties_merge(deltas, sma_weights(valid), density=0.8)
    only_valid = ties_merge(
        jax.tree.map(lambda x: x[valid], deltas), sma_weights(valid[valid]), 0.8
    )
    for name in deltas:
        np.testing.assert_allclose(merged[name], only_valid[name], rtol=1e-6, err_msg=name)
    empty = ties_merge(deltas, sma_weights(np.zeros(5, bool)), density=0.8)
    for leaf in jax.tree.leaves(empty):  # before the first merge the teacher is the start model
        np.testing.assert_array_equal(leaf, np.zeros_like(leaf))


def test_ties_keeps_leaf_dtypes():
    deltas = {"w": jnp.asarray(random_deltas(7)["kernel"], jnp.bfloat16)}
    merged = ties_merge(deltas, jnp.ones(4), density=0.8)
    assert merged["w"].dtype == jnp.bfloat16 and merged["w"].shape == (6, 5)


def test_linear_merge_and_sma_weights():
    deltas = random_deltas(8)
    valid = np.array([True, True, False, True])
    weights = np.asarray(sma_weights(valid))
    np.testing.assert_allclose(weights, [1 / 3, 1 / 3, 0, 1 / 3], rtol=1e-6)
    merged = linear_merge(deltas, weights)
    for name, stack in deltas.items():
        expected = sum(stack[i] for i in range(4) if valid[i]) / 3
        np.testing.assert_allclose(merged[name], expected, rtol=1e-5, atol=1e-6)


def test_push_snapshot_fills_the_ring_buffer_then_overwrites_the_oldest():
    snapshots, valid = {"w": np.zeros((3, 2), np.float32)}, np.zeros(3, bool)
    push = jax.jit(push_snapshot)  # count traced: one compilation for all five pushes
    for count in range(5):
        snapshots, valid = push(snapshots, valid, count, {"w": np.full(2, count + 1.0)})
        if count == 1:
            np.testing.assert_array_equal(valid, [True, True, False])
    np.testing.assert_array_equal(valid, [True, True, True])
    np.testing.assert_array_equal(snapshots["w"][:, 0], [4.0, 5.0, 3.0])


@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.5, 0.3])
def test_ema_merge(alpha):
    rng = np.random.default_rng(9)
    teacher = {
        "a": rng.normal(size=(3, 2)).astype(np.float32),
        "b": rng.normal(size=4).astype(np.float32),
    }
    policy = {
        "a": rng.normal(size=(3, 2)).astype(np.float32),
        "b": rng.normal(size=4).astype(np.float32),
    }
    merged = ema_merge(teacher, policy, alpha)
    for name in teacher:
        expected = alpha * policy[name] + (1 - alpha) * teacher[name]
        np.testing.assert_allclose(merged[name], expected, rtol=1e-6, err_msg=name)
    if alpha in (0.0, 1.0):  # exact, not approximately
        source = policy if alpha == 1.0 else teacher
        for name in teacher:
            np.testing.assert_array_equal(merged[name], source[name])


def test_merge_lora_dense_merges_the_products_and_factored_the_factors():
    rng = np.random.default_rng(10)
    lora_a = {"q": rng.normal(size=(3, 5, 2)).astype(np.float32)}
    lora_b = {"q": rng.normal(size=(3, 2, 4)).astype(np.float32)}
    weights = sma_weights(np.ones(3, bool))
    products = np.stack([lora_a["q"][i] @ lora_b["q"][i] * 2.0 for i in range(3)])
    np.testing.assert_allclose(lora_product(lora_a, lora_b, 2.0)["q"], products, rtol=1e-5)

    dense = merge_lora(lora_a, lora_b, weights, mode="dense", scaling=2.0, density=0.8)
    np.testing.assert_allclose(
        dense["q"], ties_reference(products, weights, 0.8), rtol=1e-5, atol=1e-6
    )

    merged_a, merged_b = merge_lora(
        lora_a, lora_b, weights, mode="factored", scaling=2.0, density=0.8
    )
    np.testing.assert_allclose(merged_a["q"], ties_reference(lora_a["q"], weights, 0.8), rtol=1e-5)
    np.testing.assert_allclose(merged_b["q"], ties_reference(lora_b["q"], weights, 0.8), rtol=1e-5)
    assert merged_a["q"].shape == (5, 2) and merged_b["q"].shape == (2, 4)


def ties_peft_reference(stack, weights, density):
    """PEFT's `ties` (magnitude prune to int(density * n), unweighted sign, count-normalised)."""
    snapshots = [np.asarray(s, np.float64).ravel() for s in stack]
    size = snapshots[0].size
    keep = size if density >= 1 else int(density * size)
    trimmed = []
    for snap in snapshots:
        order = sorted(range(size), key=lambda j: -abs(snap[j]))[:keep]
        trimmed.append([snap[j] if j in order else 0.0 for j in range(size)])
    merged = []
    for j in range(size):
        sign = 1.0 if sum(t[j] for t in trimmed) >= 0 else -1.0
        agreeing = [
            (w, t[j]) for w, t in zip(weights, trimmed) if t[j] != 0 and np.sign(t[j]) == sign
        ]
        merged.append(sum(w * x for w, x in agreeing) / max(len(agreeing), 1))
    return np.array(merged).reshape(np.shape(stack)[1:])


@pytest.mark.parametrize("density", [0.8, 0.5, 1.0, 0.05])
def test_ties_peft_compat_matches_peft_semantics(density):
    deltas = random_deltas(12)
    weights = np.array([0.1, 0.5, 0.2, 0.2], np.float32)
    merged = ties_merge(deltas, weights, density, peft_compat=True)
    for (
        name,
        stack,
    ) in deltas.items():  # "scalar" (size 1) at density 0.5: int(0.5) = 0, all trimmed
        expected = ties_peft_reference(stack, weights, density)
        np.testing.assert_allclose(merged[name], expected, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize(("seed", "density", "count"), [(4, 0.8, 1), (5, 0.5, 6), (6, 1.0, 3)])
def test_running_sums_peft_compat_is_peft_over_every_snapshot(seed, density, count):
    """Running sums with `peft_compat` equal PEFT's `ties` (and `linear`: the weighted sum) over
    every snapshot pushed, with PEFT's factor weights sqrt(1/N) for the SMA."""
    deltas = random_deltas(seed, num_snapshots=count)
    one = jax.tree.map(lambda x: x[0], deltas)
    sums = {"ties": rl.running_sums_init(one), "linear": rl.running_sums_init(one)}
    push = jax.jit(rl.running_sums_push, static_argnames=("density", "peft_compat"))
    for i in range(count):
        snapshot = jax.tree.map(lambda x, i=i: x[i], deltas)
        sums = {
            "ties": push(sums["ties"], snapshot, density, peft_compat=True),
            "linear": push(sums["linear"], snapshot, None, peft_compat=True),
        }
    merged = {
        method: rl.running_sums_merge(sums[method], jnp.int32(count), method, peft_compat=True)
        for method in ("ties", "linear")
    }
    weights = np.full(count, np.sqrt(1.0 / count))
    for name, stack in deltas.items():
        expected = ties_peft_reference(stack, weights, density)
        np.testing.assert_allclose(merged["ties"][name], expected, rtol=1e-5, atol=1e-6)
        weighted_sum = np.tensordot(weights, stack.astype(np.float64), axes=1)
        np.testing.assert_allclose(merged["linear"][name], weighted_sum, rtol=1e-5, atol=1e-6)


def test_factored_peft_compat_reproduces_peft_weighted_adapter():
    rng = np.random.default_rng(13)
    lora_a = {"q": rng.normal(size=(4, 6, 3)).astype(np.float32)}
    lora_b = {"q": rng.normal(size=(4, 3, 5)).astype(np.float32)}
    weights, scaling = np.full(4, 0.25, np.float32), 2.0
    # PEFT: factor weights sqrt(w * scaling), merged adapter applied with scaling 1.
    factor_weights = np.sqrt(weights * scaling)
    peft_delta = ties_peft_reference(lora_a["q"], factor_weights, 0.8) @ ties_peft_reference(
        lora_b["q"], factor_weights, 0.8
    )
    merged_a, merged_b = merge_lora(
        lora_a, lora_b, weights, mode="factored", scaling=scaling, density=0.8, peft_compat=True
    )
    ours = np.asarray(merged_a["q"]) @ np.asarray(merged_b["q"]) * scaling
    np.testing.assert_allclose(ours, peft_delta, rtol=1e-4, atol=1e-5)
    # The factored teacher is much smaller than the dense merge of the products (METHOD.md 4.1).
    dense = merge_lora(lora_a, lora_b, weights, mode="dense", scaling=scaling, density=0.8)
    assert np.linalg.norm(ours) < 0.5 * np.linalg.norm(np.asarray(dense["q"]))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d, w: ties_merge(d, w, density=0.0), r"density=0.0 is out of range: .* \(0, 1\]"),
        (lambda d, w: ties_merge(d, w, density=1.5), r"density=1.5 is out of range"),
        (lambda d, w: ema_merge(d, d, alpha=1.1), r"alpha=1.1 is out of range: .* \[0, 1\]"),
        (lambda d, w: ema_merge(d, d, alpha=-0.5), r"alpha=-0.5 is out of range"),
        (lambda d, w: merge_deltas(d, w, method="dare"), r"method='dare' is not supported"),
        (lambda d, w: merge_lora(d, d, w, mode="sparse"), r"mode='sparse' is not supported"),
    ],
)
def test_merges_reject_bad_config(call, message):
    with pytest.raises(ValueError, match=message):
        call(random_deltas(11), np.ones(4, np.float32))


def test_lora_task_products_are_the_dense_task_vectors():
    rng = np.random.default_rng(11)
    delta_a, delta_b = rng.normal(size=(3, 5, 2)), rng.normal(size=(3, 2, 4))
    a0, b0 = rng.normal(size=(5, 2)), rng.normal(size=(2, 4))
    got = lora_task_products(
        {"k": delta_a.astype(np.float32)},
        {"k": delta_b.astype(np.float32)},
        {"k": a0.astype(np.float32)},
        {"k": b0.astype(np.float32)},
        scaling=2.0,
    )["k"]
    want = [2.0 * ((a0 + da) @ (b0 + db) - a0 @ b0) for da, db in zip(delta_a, delta_b)]
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-5)
    # With b0 = 0 they are the products of the snapshots' factors (what `merge_lora` merges).
    zero = lora_task_products(delta_a, delta_b, a0, np.zeros_like(b0), 2.0)
    np.testing.assert_allclose(zero, lora_product(a0 + delta_a, delta_b, 2.0), rtol=1e-5, atol=1e-5)


def tied_stack(seed, shape):
    """Few distinct values, zeros and -0.0 among them: most entries tie with the k-th largest."""
    values = np.array([0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0], np.float32)
    return np.random.default_rng(seed).choice(values, size=shape)


@pytest.mark.parametrize("float_counts", [True, False])
def test_kth_largest_magnitude_is_the_sorted_entry_bit_for_bit(float_counts, monkeypatch):
    if not float_counts:  # the int32 counts of rows longer than float32 counts exactly
        monkeypatch.setattr(merge_module, "_EXACT_FLOAT_COUNT", 4)
    rng = np.random.default_rng(14)
    subnormal = np.finfo(np.float32).smallest_subnormal
    rows = np.stack(
        [
            np.abs(tied_stack(15, 12)),
            np.abs(rng.normal(size=12)).astype(np.float32),
            np.zeros(12, np.float32),
            np.array([0, 1, 1, np.inf, np.nan, 3e38, 5, 0, np.inf, 2, 1e-30, 0.5], np.float32),
            np.array([0, subnormal, 2 * subnormal, 1e-38, 1e-37, 0, 7, 7, 0, 1, 2, 3], np.float32),
        ]
    )
    # The trim as before: entries at or above the k-th of a sort (XLA's sort and comparisons
    # treat subnormals as 0, so only the trim, not the threshold, is comparable on that row).
    trim = jax.jit(lambda m, kth: m >= kth[:, None])
    for keep in range(1, 13):
        got = kth_largest_magnitude(jnp.asarray(rows), keep)
        expected = np.sort(rows, axis=1)[:, 12 - keep]  # NaN sorts last, as in jnp.sort
        assert np.asarray(got).tobytes() == expected.tobytes(), keep
        by_sort = jnp.sort(jnp.asarray(rows), axis=1)[:, 12 - keep]
        np.testing.assert_array_equal(trim(rows, got), trim(rows, by_sort), err_msg=str(keep))


@pytest.mark.parametrize("density", [0.1, 0.3, 0.5, 0.8, 1.0])
def test_ties_keeps_every_entry_tied_with_the_threshold(density):
    deltas = {"tied": tied_stack(16, (4, 5, 6)), "zeros": np.zeros((4, 7), np.float32)}
    deltas["tied"][2] = 0.0  # a snapshot of zeros: everything ties at 0
    weights = np.array([0.25, 0.5, 0.125, 0.125], np.float32)
    merged = ties_merge(deltas, weights, density, scale=1.5)
    for name, stack in deltas.items():
        expected = ties_reference(stack, weights, density, 1.5)
        np.testing.assert_allclose(merged[name], expected, rtol=1e-6, atol=0, err_msg=name)


def ties_float32_reference(stack, weights, density):
    """TIES in float32 numpy with a sorted threshold and the snapshot sums in slot order."""
    flat = stack.reshape(len(stack), -1).astype(np.float32)
    keep = math.ceil(Fraction(str(density)) * flat.shape[1])
    kth = np.sort(np.abs(flat), axis=1)[:, flat.shape[1] - keep]
    trimmed = np.where(np.abs(flat) >= kth[:, None], flat, np.float32(0))
    weighted = weights[:, None] * trimmed
    in_order = lambda rows: sum(rows, np.zeros(flat.shape[1], np.float32))
    sign = np.where(in_order(weighted) >= 0, np.float32(1), np.float32(-1))
    agrees = (trimmed != 0) & (np.sign(trimmed) == sign)
    total = in_order(np.where(agrees, weighted, np.float32(0)))
    norm = in_order(np.where(agrees, weights[:, None], np.float32(0)))
    merged = np.where(norm > 0, total / np.where(norm > 0, norm, np.float32(1)), np.float32(0))
    return merged.reshape(stack.shape[1:])


@pytest.mark.parametrize("num_snapshots", [1, 4, 8])
def test_ties_matches_a_float32_transcription_bit_for_bit(num_snapshots):
    rng = np.random.default_rng(17)
    deltas = {
        "normal": rng.normal(size=(num_snapshots, 64, 256)).astype(np.float32),
        "tied": tied_stack(18, (num_snapshots, 300)),
    }
    weights = rng.uniform(0.1, 1.0, num_snapshots).astype(np.float32)
    merged = ties_merge(deltas, weights, density=0.8)
    for name, stack in deltas.items():
        expected = ties_float32_reference(stack, weights, 0.8)
        assert np.asarray(merged[name]).tobytes() == expected.tobytes(), name
