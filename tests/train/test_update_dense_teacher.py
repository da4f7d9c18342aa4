"""The dense teacher (`UpdateConfig.merge_space="dense"`, the paper's merge of LoRA products):
its merge against `rl.merge_lora(mode="dense")` and a numpy transcription, its forward (base
kernels + dense deltas, zero adapters) against the LoRA forward, and the lean state: no teacher
parts in the modes that have no teacher, DAgger images in the compute dtype."""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _train_cases import (
    GRID,
    KL_CONFIG,
    LORA,
    MODEL_CONFIG,
    PROMPT_LEN,
    REPLY_LEN,
    TURNS,
    TWO_KERNELS,
    build_state,
    make_batch,
    make_scorer,
    reply_logp,
)
from flax import nnx

from gtr_turbo_jax.models import ValueHead, from_pretrained
from gtr_turbo_jax.models.random_checkpoint import write_random_checkpoint
from gtr_turbo_jax.rl import merge_lora
from gtr_turbo_jax.rollout.batch import Batch
from gtr_turbo_jax.train.config import UpdateConfig
from gtr_turbo_jax.train.run_config import load_config, update_config
from gtr_turbo_jax.train.state import init_train_state
from gtr_turbo_jax.train.teacher import (
    kernel_deltas,
    kernel_path,
    lora_pairs,
    merge_teacher,
    push_snapshot,
    teacher_weights,
)
from gtr_turbo_jax.train.update import update_step

DENSE_CONFIG = KL_CONFIG.replace(merge_space="dense", merge_density=0.5, merge_window="ring")
# The merge tests adapt two kernels (`TWO_KERNELS`); the step and forward tests every linear
# layer (`LORA`).
# Jitted once per test module: eagerly, each small op and each leaf's TIES would compile alone.
merge_teacher_jit = jax.jit(merge_teacher, static_argnames="config")
merge_lora_dense = jax.jit(
    merge_lora, static_argnames=("mode", "scaling", "density", "method", "scale", "peft_compat")
)


@functools.partial(jax.jit, static_argnames="config")
def dense_view(state, adapters, config):
    """The dense deltas of `adapters` and the teacher weights of a state holding them."""
    deltas = kernel_deltas(adapters, state.base, state.lora_scale)
    return deltas, teacher_weights(state.replace(teacher=deltas), config)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("dense") / "ckpt", MODEL_CONFIG, 7)


def ties_reference(stack: np.ndarray, weights: np.ndarray, density: float) -> np.ndarray:
    """TIES on one `[S, ...]` stack in float64: trim to the top ceil(density * size) magnitudes per
    snapshot, elect the sign of the weighted sum (0 -> +), weighted mean of the agreeing entries."""
    flat = stack.reshape(stack.shape[0], -1).astype(np.float64)
    keep = math.ceil(Fraction(str(density)) * flat.shape[1])
    kth = -np.sort(-np.abs(flat), axis=1)[:, keep - 1]
    trimmed = np.where(np.abs(flat) >= kth[:, None], flat, 0.0)
    sign = np.where((weights[:, None] * trimmed).sum(0) >= 0, 1.0, -1.0)
    agree = (trimmed != 0) & (np.sign(trimmed) == sign)
    total = (weights[:, None] * trimmed * agree).sum(0)
    norm = (weights[:, None] * agree).sum(0)
    merged = np.where(norm > 0, total / np.where(norm > 0, norm, 1.0), 0.0)
    return merged.reshape(stack.shape[1:])


def dense_teacher_reference(state, density: float) -> dict[tuple, np.ndarray]:
    """`theta_0 + TIES(tau_i)` per kernel with `tau_i = (a0 + da_i)(b0 + db_i) - a0 b0` (times
    the LoRA scale), SMA weights over the valid slots, in the kernel's `[out, in]` layout."""
    valid = np.asarray(state.snapshot_valid, np.float64)
    weights = valid / max(valid.sum(), 1.0)
    initial, snapshots, scale = (
        lora_pairs(state.initial),
        lora_pairs(state.snapshots),
        state.lora_scale,
    )
    out = {}
    for path, (delta_a, delta_b) in snapshots.items():
        a0, b0 = (np.asarray(x, np.float64) for x in initial[path])
        da, db = np.asarray(delta_a, np.float64), np.asarray(delta_b, np.float64)
        taus = scale * ((a0 + da) @ (b0 + db) - a0 @ b0)
        out[(*path, "weight")] = (scale * a0 @ b0 + ties_reference(taus, weights, density)).T
    return out


def with_random_snapshots(state, seed: int, nonzero_b0: bool):
    """Random factor task vectors in 3 of 4 slots (the fourth empty), and optionally a theta_0
    whose `b` is not zero (a warm-started adapter)."""
    rng = np.random.default_rng(seed)
    valid = np.array([True, True, True, False])
    snapshots = jax.tree.map(
        lambda x: jnp.asarray(
            rng.normal(scale=0.1, size=x.shape) * valid.reshape(-1, *[1] * (x.ndim - 1)), x.dtype
        ),
        state.snapshots,
    )
    initial = state.initial
    if nonzero_b0:
        initial = jax.tree.map(
            lambda x: jnp.asarray(rng.normal(scale=0.2, size=x.shape), x.dtype), initial
        )
    return state.replace(snapshots=snapshots, snapshot_valid=jnp.asarray(valid), initial=initial)


def test_dense_merge_matches_merge_lora_and_the_transcription(checkpoint):
    defs, state = build_state(checkpoint, DENSE_CONFIG, lora=TWO_KERNELS)
    assert state.lora_scale == LORA.scale
    # b0 = 0 (the LoRA initialisation): the task vectors are the products of the snapshots'
    # factors, what `rl.merge_lora(mode="dense")` merges.
    fresh = with_random_snapshots(state, 0, nonzero_b0=False)
    merged = dict(nnx.to_flat_state(merge_teacher_jit(fresh, fresh.policy, DENSE_CONFIG)))
    weights = fresh.snapshot_valid.astype(jnp.float32) / 3.0
    stacks = lora_pairs(fresh.snapshots)
    initial = lora_pairs(fresh.initial)
    paths = sorted(stacks)
    expected = merge_lora_dense(
        [initial[p][0] + stacks[p][0] for p in paths],
        [initial[p][1] + stacks[p][1] for p in paths],
        weights,
        mode="dense",
        scaling=state.lora_scale,
        density=DENSE_CONFIG.merge_density,
    )
    assert [path[-1] for path in paths] == ["q_proj", "qkv"]
    for path, want in zip(paths, expected, strict=True):
        got = merged[(*path, "weight")][...]
        np.testing.assert_allclose(got, np.asarray(want).T, rtol=1e-5, atol=1e-6, err_msg=path)
    reference = dense_teacher_reference(fresh, DENSE_CONFIG.merge_density)
    for path, want in reference.items():
        np.testing.assert_allclose(merged[path][...], want, rtol=1e-4, atol=1e-6, err_msg=path)

    # A warm-started theta_0 (b0 != 0): the task vectors subtract a0 @ b0, the teacher adds it.
    warm = with_random_snapshots(state, 1, nonzero_b0=True)
    merged = dict(nnx.to_flat_state(merge_teacher_jit(warm, warm.policy, DENSE_CONFIG)))
    for path, want in dense_teacher_reference(warm, DENSE_CONFIG.merge_density).items():
        np.testing.assert_allclose(merged[path][...], want, rtol=1e-4, atol=1e-5, err_msg=path)


def test_dense_ema_merge_mixes_the_products(checkpoint):
    config = DENSE_CONFIG.replace(merge_method="ema", ema_alpha=0.3)
    defs, state = build_state(checkpoint, config, lora=TWO_KERNELS)
    assert jax.tree.leaves(state.snapshots) == [] and jax.tree.leaves(state.initial) == []
    rng = np.random.default_rng(2)
    policy = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), state.policy)
    teacher = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), state.teacher)
    state = state.replace(teacher=teacher)
    merged = dict(nnx.to_flat_state(merge_teacher_jit(state, policy, config)))
    before = dict(nnx.to_flat_state(teacher))
    for path, (a, b) in lora_pairs(policy).items():
        product = (np.asarray(a, np.float64) @ np.asarray(b, np.float64) * state.lora_scale).T
        want = 0.3 * product + 0.7 * np.asarray(before[(*path, "weight")][...], np.float64)
        np.testing.assert_allclose(merged[(*path, "weight")][...], want, rtol=1e-5, atol=1e-5)


def test_dense_teacher_forward_equals_the_lora_forward(checkpoint):
    """Zero adapters on `W + (a b s)^T` give the logits of the adapters `(a, b)` on `W`."""
    defs, state = build_state(checkpoint, DENSE_CONFIG)
    rng = np.random.default_rng(3)
    adapters = jax.tree.map(
        lambda x: jnp.asarray(rng.normal(scale=0.3, size=x.shape), x.dtype), state.policy
    )
    deltas, (teacher_adapters, teacher_base) = dense_view(state, adapters, DENSE_CONFIG)
    flat = dict(nnx.to_flat_state(deltas))
    for path, (a, b) in lora_pairs(adapters).items():
        want = (np.asarray(a, np.float64) @ np.asarray(b, np.float64) * LORA.scale).T
        np.testing.assert_allclose(flat[(*path, "weight")][...], want, rtol=1e-5, atol=1e-6)
    assert all(not np.any(x) for x in jax.tree.leaves(teacher_adapters))
    scorer, batch = make_scorer(), make_batch(0)
    lora_logits = scorer(defs.model, state.base, adapters, batch)
    dense_logits = scorer(defs.model, teacher_base, teacher_adapters, batch)
    base_logits = scorer(defs.model, state.base, teacher_adapters, batch)
    assert np.abs(np.asarray(lora_logits - base_logits)).max() > 1e-2  # the adapters matter
    np.testing.assert_allclose(dense_logits, lora_logits, rtol=1e-4, atol=1e-4)


def _parts(state) -> dict[str, int]:
    return {
        name: len(jax.tree.leaves(getattr(state, name)))
        for name in ("teacher", "initial", "snapshots")
    }


def test_modes_without_a_teacher_hold_no_teacher_parts(checkpoint):
    policy_leaves = 28  # 14 adapted linears x (a, b)
    expected = {
        ("ppo", "factored", "ties"): (0, 0, 0),
        ("gtr", "factored", "ties"): (0, 0, 0),
        ("turbo_kl", "factored", "ema"): (policy_leaves, 0, 0),
        ("turbo_sft", "factored", "ties"): (policy_leaves, policy_leaves, policy_leaves),
        ("turbo_kl", "dense", "ties"): (14, policy_leaves, policy_leaves),
    }
    for (mode, space, method), counts in expected.items():
        window = "ring" if space == "dense" else "all"
        config = KL_CONFIG.replace(
            mode=mode, merge_space=space, merge_method=method, merge_window=window
        )
        _, state = build_state(checkpoint, config)
        assert tuple(_parts(state).values()) == counts, (mode, space, method)
        if not config.uses_teacher:
            with pytest.raises(ValueError, match=f"mode='{mode}' has no teacher"):
                teacher_weights(state, config)


def test_the_default_merge_space_is_the_papers(checkpoint):
    """TIES on the `B A` products is the default (the paper's semantics), the real presets'
    included: a LoRA run's teacher is one float32 delta per adapted kernel in the kernel's
    layout, and the whole-run SMA sums the products (four rows of the kernel's shape)."""
    assert UpdateConfig().merge_space == "dense"
    for preset in ("points24:qwen2.5-vl-3b", "sokoban:qwen2.5-vl-7b"):
        config = load_config(preset, ["--config.model.path=/models/qwen"])
        assert update_config(config).merge_space == "dense", preset
    config = KL_CONFIG  # merge_space and merge_window at their defaults
    assert config.merge_space == "dense" and config.merge_window == "all"
    _, state = build_state(checkpoint, config, lora=TWO_KERNELS)
    kernels = dict(nnx.to_flat_state(state.base))
    teacher = dict(nnx.to_flat_state(state.teacher))
    assert set(teacher) == {kernel_path(path) for path in lora_pairs(state.policy)}
    for path, delta in teacher.items():
        assert delta[...].shape == kernels[path][...].shape and delta[...].dtype == jnp.float32
    for path, sums in nnx.to_flat_state(state.snapshots):
        assert sums[...].shape == (4, *kernels[path][...].shape), path


def test_the_whole_run_sma_keeps_four_sums(checkpoint):
    config = KL_CONFIG.replace(merge_space="factored")  # merge_window="all"
    _, state = build_state(checkpoint, config)
    for sums, adapter in zip(jax.tree.leaves(state.snapshots), jax.tree.leaves(state.policy)):
        assert sums.shape == (4, *adapter.shape) and sums.dtype == jnp.float32


push_jit = jax.jit(push_snapshot, static_argnames="config")


def test_dense_whole_run_sma_is_ties_over_every_snapshots_products(checkpoint):
    """`merge_space=dense, merge_window=all`: four float32 sums per adapted kernel entry; after
    five pushed policies the teacher is `a0 b0 s + TIES(a_i b_i s - a0 b0 s)` over all five,
    SMA weights (the numpy transcription), from a warm-started theta_0 (b0 != 0)."""
    config = DENSE_CONFIG.replace(merge_window="all")
    _, state = build_state(checkpoint, config, lora=TWO_KERNELS)
    kernels = dict(nnx.to_flat_state(state.base))
    for path, sums in nnx.to_flat_state(state.snapshots):
        assert sums[...].shape == (4, *kernels[path][...].shape), path
    rng = np.random.default_rng(4)
    noise = lambda tree, scale: jax.tree.map(
        lambda x: jnp.asarray(rng.normal(scale=scale, size=x.shape), x.dtype), tree
    )
    state = state.replace(initial=noise(state.initial, 0.2))
    policies = [jax.tree.map(jnp.add, state.initial, noise(state.initial, 0.1)) for _ in range(5)]
    sums, valid, count = state.snapshots, state.snapshot_valid, state.snapshot_count
    for policy in policies:
        sums, valid, count = push_jit(state, sums, valid, count, policy, config)
    state = state.replace(snapshots=sums, snapshot_valid=valid, snapshot_count=count)
    merged = dict(nnx.to_flat_state(merge_teacher_jit(state, policies[-1], config)))
    initial = lora_pairs(state.initial)
    scale = state.lora_scale
    for path, (a0, b0) in initial.items():
        a0, b0 = np.asarray(a0, np.float64), np.asarray(b0, np.float64)
        taus = np.stack([
            scale * (np.asarray(p[0], np.float64) @ np.asarray(p[1], np.float64) - a0 @ b0)
            for p in (lora_pairs(policy)[path] for policy in policies)
        ])  # fmt: skip
        want = (scale * a0 @ b0 + ties_reference(taus, np.full(5, 0.2), config.merge_density)).T
        got = merged[(*path, "weight")][...]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=str(path))


def test_dagger_buffer_stores_images_in_the_compute_dtype(checkpoint):
    model = from_pretrained(checkpoint, dtype="bfloat16", lora=LORA)
    head = ValueHead(MODEL_CONFIG.text.hidden_size, widths=(16,), rngs=nnx.Rngs(1))
    like = Batch.dummy(TURNS, 2, PROMPT_LEN, REPLY_LEN, MODEL_CONFIG.vision.patch_dim, GRID, 4)
    config = KL_CONFIG.replace(mode="gtr", dagger_capacity=5)
    _, state = init_train_state(model, head, config, jax.random.key(0), like)
    assert state.dagger.image_patches.dtype == jnp.bfloat16  # half of float32 patches
    assert state.dagger.image_patches.shape == (5, 16, MODEL_CONFIG.vision.patch_dim)
    assert state.dagger.prompt_ids.dtype == jnp.int32


@pytest.mark.slow
def test_dense_turbo_kl_step_merges_and_scores_with_the_dense_teacher(checkpoint):
    config = DENSE_CONFIG.replace(merge_interval=1)
    defs, state = build_state(checkpoint, config, seed=1)
    state, metrics = update_step(state, make_batch(0), defs, config)
    assert metrics["finite"] == 1.0 and metrics["merged"] == 1.0
    # The teacher is the dense TIES of the snapshots the update took (2 epochs -> 2 slots).
    assert np.asarray(state.snapshot_valid).tolist() == [True, True, False, False]
    teacher = dict(nnx.to_flat_state(state.teacher))
    for path, want in dense_teacher_reference(state, config.merge_density).items():
        np.testing.assert_allclose(teacher[path][...], want, rtol=1e-4, atol=1e-6, err_msg=path)
    # The next update's KL is the clipped k1 between the policy and that dense teacher.
    batch = make_batch(1)
    scorer = make_scorer()
    teacher_adapters, teacher_base = teacher_weights(state, config)
    policy_logp = reply_logp(scorer(defs.model, state.base, state.policy, batch), batch)
    teacher_logp = reply_logp(scorer(defs.model, teacher_base, teacher_adapters, batch), batch)
    k1 = np.clip(policy_logp - teacher_logp, 0.0, 10.0)
    thought = np.asarray(batch.thought_mask).reshape(k1.shape)
    kl = (k1 * thought).sum(1) / thought.sum(1)
    compilations = update_step._cache_size()
    state, metrics = update_step(state, batch, defs, config)
    assert update_step._cache_size() == compilations  # merge and no-merge: one program
    np.testing.assert_allclose(metrics["kl_mean"], kl.mean(), rtol=1e-4, atol=1e-6)
    assert metrics["kl_mean"] > 1e-4, metrics["kl_mean"]  # the teacher is not the policy
