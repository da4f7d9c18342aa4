"""The teachers the paper compares against and the authors' image-free KL context
(`UpdateConfig.teacher_source="external"`, `kl_context="blind"`): a blind pass against a prompt
rebuilt without its image block; the update's thought KL to an external teacher of another size
against a numpy transcription of the clipped k1 over both models' own forwards."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _train_cases import (
    GRID,
    KL_CONFIG,
    MODEL_CONFIG,
    THOUGHT_LEN,
    build_state,
    make_batch,
    make_scorer,
    reply_logp,
)
from flax import nnx

from gtr_turbo_jax.models import from_pretrained
from gtr_turbo_jax.models.random_checkpoint import write_random_checkpoint
from gtr_turbo_jax.rollout.batch import Batch
from gtr_turbo_jax.train.scoring import blind_prompt_mask, score_replies
from gtr_turbo_jax.train.update import update_step

VISION_IDS = (
    MODEL_CONFIG.vision_start_token_id,
    MODEL_CONFIG.image_token_id,
    MODEL_CONFIG.vision_end_token_id,
)
# Another size (twice as wide, two layers), the same token ids and image patches.
TEACHER_CONFIG = MODEL_CONFIG.replace(
    text=dataclasses.replace(
        MODEL_CONFIG.text,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),  # fmt: skip
    vision=dataclasses.replace(MODEL_CONFIG.vision, out_hidden_size=64),
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("external")
    policy = write_random_checkpoint(root / "policy", MODEL_CONFIG, 3)
    teacher = write_random_checkpoint(root / "teacher", TEACHER_CONFIG, 11)
    return policy, teacher


def rows_of(batch: Batch) -> Batch:
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batch)


@functools.partial(jax.jit, static_argnames=("graphdef", "blind"))
def teacher_logits(graphdef, params, batch: Batch, blind: bool) -> jax.Array:
    """A full model's reply logits (no adapters), with the image or blind."""
    rows = rows_of(batch)
    mask = blind_prompt_mask(rows.prompt_ids, rows.prompt_mask, VISION_IDS) if blind else None
    return score_replies(
        graphdef, params, nnx.State({}), rows.prompt_ids,
        rows.prompt_mask if mask is None else mask, None if blind else rows.image_patches,
        rows.response_ids, rows.response_mask, GRID,
    ).logits  # fmt: skip


@functools.partial(jax.jit, static_argnames="graphdef")
def rebuilt_logits(graphdef, params, batch: Batch) -> jax.Array:
    """The reference of a blind pass: each prompt with its vision tokens dropped and left-padded
    again (a prompt that never had an image), read without images."""
    rows = rows_of(batch)
    keep = (rows.prompt_mask > 0) & ~jnp.isin(rows.prompt_ids, jnp.asarray(VISION_IDS))
    order = jnp.argsort(keep, axis=1, stable=True)  # the dropped tokens first: left padding
    mask = jnp.sort(keep, axis=1)
    ids = jnp.where(mask, jnp.take_along_axis(rows.prompt_ids, order, axis=1), 0)
    return score_replies(
        graphdef, params, nnx.State({}), ids, mask.astype(jnp.int32), None,
        rows.response_ids, rows.response_mask, GRID,
    ).logits  # fmt: skip


def test_a_blind_pass_reads_the_prompt_as_if_it_had_no_image(checkpoints):
    graphdef, params = nnx.split(from_pretrained(checkpoints[0]))
    batch = make_batch(seed=4)
    blind = np.asarray(teacher_logits(graphdef, params, batch, blind=True))
    np.testing.assert_allclose(
        blind, np.asarray(rebuilt_logits(graphdef, params, batch)), atol=2e-5, rtol=1e-5
    )
    seeing = np.asarray(teacher_logits(graphdef, params, batch, blind=False))
    assert np.abs(seeing - blind).max() > 1e-3  # the image is what the blind pass leaves out


@pytest.mark.parametrize("context", ["image", "blind"])
def test_the_kl_to_an_external_teacher_matches_both_models_forwards(checkpoints, context):
    """clip(log pi - log pi_teacher, 0, 10) over the thought tokens, from the policy's and the
    teacher's own forwards (numpy); the teacher never changes, nothing is merged."""
    policy_dir, teacher_dir = checkpoints
    config = KL_CONFIG.replace(
        teacher_source="external", teacher_path=str(teacher_dir), kl_context=context
    )
    defs, state = build_state(policy_dir, config, teacher=teacher_dir)
    assert defs.teacher is not None and defs.teacher != defs.model
    assert not state.initial and not state.snapshots  # no theta_0, no snapshots
    batch = make_batch(seed=5)
    policy_logp = reply_logp(make_scorer()(defs.model, state.base, state.policy, batch), batch)
    logits = teacher_logits(defs.teacher, state.teacher, batch, blind=context == "blind")
    k1 = np.clip(policy_logp - reply_logp(logits, batch), 0.0, 10.0)
    expected = k1[:, :THOUGHT_LEN].mean(axis=1)
    assert expected.mean() > 1e-3  # two random models: not trivially 0
    before = jax.tree.map(np.array, state.teacher)

    new_state, metrics = update_step(state, batch, defs, config)
    np.testing.assert_allclose(float(metrics["kl_mean"]), expected.mean(), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["kl_max"]), expected.max(), rtol=1e-4)
    assert "teacher_policy_distance" not in metrics and float(metrics["merged"]) == 0.0
    assert float(metrics["finite"]) == 1.0
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, new_state.teacher))
