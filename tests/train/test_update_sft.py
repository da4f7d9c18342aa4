"""The SFT variants: labelled teacher replies enter the DAgger buffer, and the paired SFT loss
falls on a fixed teacher buffer."""

from __future__ import annotations

import numpy as np
from _train_cases import ENVS, MODEL_CONFIG, TURNS, build_state, make_batch

from gtr_turbo_jax.models.random_checkpoint import write_random_checkpoint
from gtr_turbo_jax.train.config import UpdateConfig
from gtr_turbo_jax.train.update import update_step

SFT_CONFIG = UpdateConfig(
    mode="turbo_sft",
    ppo_epochs=2,
    minibatch_size=2,
    grad_accum_steps=1,
    merge_interval=2,
    snapshot_capacity=4,
    dagger_capacity=6,
    learning_rate=1e-3,
    grad_clip=1.0,
)


def test_sft_loss_falls_on_a_fixed_teacher_buffer(tmp_path):
    checkpoint = write_random_checkpoint(tmp_path / "ckpt", MODEL_CONFIG, 7)
    defs, state = build_state(checkpoint, SFT_CONFIG, seed=2)
    batch = make_batch(0, reward=np.zeros((TURNS, ENVS), np.float32))
    # Only env 0's turns carry a correction: 2 labelled rows per update.
    label_mask = np.array(batch.teacher_label_mask)
    label_mask[:, 1] = False
    batch = batch.replace(teacher_label_mask=label_mask)
    losses, sizes = [], []
    for _ in range(4):
        state, metrics = update_step(state, batch, defs, SFT_CONFIG)
        assert metrics["finite"] == 1.0
        losses.append(float(metrics["sft_loss"]))
        sizes.append(float(metrics["dagger_size"]))
    assert sizes == [2.0, 4.0, 6.0, 6.0]  # a ring of 6 slots, never cleared
    assert int(state.dagger.count) == 8
    # The first rows pushed were overwritten by the fourth update (slots 0, 1 again).
    np.testing.assert_array_equal(state.dagger.reply_ids[:2], batch.teacher_ids[:, 0])
    assert all(np.diff(losses) < 0) and losses[-1] < losses[0] - 0.3, losses
