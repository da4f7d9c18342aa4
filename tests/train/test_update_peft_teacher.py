"""The PEFT teacher (`UpdateConfig.merge_space="peft"`, the authors' arithmetic): after snapshots
taken by `push_snapshot`, its adapters are PEFT's `add_weighted_adapter` of the snapshots'
adapters (`rl.merge_lora(mode="factored", peft_compat=True)`, itself checked against a numpy
transcription of PEFT in tests/rl), over the ring or over every snapshot of the run; one update
step runs; a model without LoRA or an EMA merge is one clear error."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _train_cases import KL_CONFIG, LORA, MODEL_CONFIG, TWO_KERNELS, build_state, make_batch

from gtr_turbo_jax.models.random_checkpoint import write_random_checkpoint
from gtr_turbo_jax.rl import merge_lora
from gtr_turbo_jax.train.teacher import lora_pairs, merge_teacher, push_snapshot
from gtr_turbo_jax.train.update import update_step

PEFT_CONFIG = KL_CONFIG.replace(
    merge_space="peft", merge_density=0.5, snapshot_capacity=4, merge_interval=1
)
merge_teacher_jit = jax.jit(merge_teacher, static_argnames="config")
push_jit = jax.jit(push_snapshot, static_argnames="config")
merge_lora_peft = jax.jit(
    merge_lora, static_argnames=("mode", "scaling", "density", "method", "scale", "peft_compat")
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("peft") / "ckpt", MODEL_CONFIG, 7)


def random_adapters(like, rng):
    return jax.tree.map(lambda x: jnp.asarray(rng.normal(scale=0.1, size=x.shape), x.dtype), like)


def assert_peft_merge(teacher, snapshots: list, config, scaling: float) -> None:
    """Each adapted kernel's teacher delta equals PEFT's over the snapshots, SMA weights."""
    weights = jnp.full((len(snapshots),), 1.0 / len(snapshots), jnp.float32)
    stacks = [lora_pairs(s) for s in snapshots]
    merged = lora_pairs(teacher)
    assert sorted(merged) == sorted(stacks[0])
    for path, (a, b) in merged.items():
        want_a, want_b = merge_lora_peft(
            jnp.stack([s[path][0] for s in stacks]),
            jnp.stack([s[path][1] for s in stacks]),
            weights,
            mode="factored",
            scaling=scaling,
            method=config.merge_method,
            density=config.merge_density,
            peft_compat=True,
        )
        got = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
        want = np.asarray(want_a, np.float64) @ np.asarray(want_b, np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=str(path))


@pytest.mark.parametrize(
    ("window", "method", "pushes"), [("ring", "ties", 3), ("all", "ties", 6), ("all", "linear", 5)]
)
def test_the_peft_teacher_is_peft_over_the_snapshots_adapters(checkpoint, window, method, pushes):
    config = PEFT_CONFIG.replace(merge_window=window, merge_method=method)
    defs, state = build_state(checkpoint, config, lora=TWO_KERNELS)
    rng = np.random.default_rng(pushes)
    snapshots, valid, count = state.snapshots, state.snapshot_valid, state.snapshot_count
    policies = []
    for _ in range(pushes):  # the adapters themselves are snapshotted (b != 0: not task vectors)
        policies.append(random_adapters(state.policy, rng))
        snapshots, valid, count = push_jit(state, snapshots, valid, count, policies[-1], config)
    state = state.replace(snapshots=snapshots, snapshot_valid=valid, snapshot_count=count)
    teacher = merge_teacher_jit(state, state.policy, config)
    kept = policies[-config.snapshot_capacity :] if window == "ring" else policies
    assert_peft_merge(teacher, kept, config, state.lora_scale)


def test_n_identical_snapshots_give_a_teacher_of_one_nth_the_delta(checkpoint):
    """Hand-worked: N equal snapshots all agree; PEFT's factor weights sqrt(1/N) with count
    normalisation give each factor sqrt(1/N) times the adapter's, so the delta is 1/N of it (what
    METHOD.md 4.1 calls the authors' quarter: 4 snapshots an update)."""
    config = PEFT_CONFIG.replace(merge_window="all", merge_density=1.0)
    defs, state = build_state(checkpoint, config, lora=TWO_KERNELS)
    adapters = random_adapters(state.policy, np.random.default_rng(0))
    snapshots, valid, count = state.snapshots, state.snapshot_valid, state.snapshot_count
    for _ in range(4):
        snapshots, valid, count = push_jit(state, snapshots, valid, count, adapters, config)
    state = state.replace(snapshots=snapshots, snapshot_valid=valid, snapshot_count=count)
    teacher = lora_pairs(merge_teacher_jit(state, state.policy, config))
    for path, (a, b) in lora_pairs(adapters).items():
        want = np.asarray(a, np.float64) @ np.asarray(b, np.float64) / 4
        got = np.asarray(teacher[path][0], np.float64) @ np.asarray(teacher[path][1], np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


# an option off by default (~8 s): its merge is tested above
@pytest.mark.slow
def test_an_update_with_the_peft_teacher_runs_and_remerges(checkpoint):
    defs, state = build_state(checkpoint, PEFT_CONFIG, lora=LORA)
    state, metrics = update_step(state, make_batch(0), defs, PEFT_CONFIG)
    assert float(metrics["finite"]) == 1.0 and float(metrics["merged"]) == 1.0
    assert int(state.snapshot_count) == PEFT_CONFIG.ppo_epochs
    assert float(metrics["teacher_policy_distance"]) > 0.0


def test_peft_without_lora_or_with_ema_is_one_clear_error(checkpoint):
    with pytest.raises(ValueError, match="merge_space='peft' merges LoRA adapters"):
        build_state(checkpoint, PEFT_CONFIG, lora=None)
    with pytest.raises(ValueError, match="merge_method='ema' is not supported"):
        PEFT_CONFIG.replace(merge_method="ema")
