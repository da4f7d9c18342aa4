"""Shared set-up for the update-step tests: a model smaller than `tiny`, and a hand-made batch."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gtr_turbo_jax.models import LoRAConfig, ValueHead, from_pretrained, get_config
from gtr_turbo_jax.rollout.batch import Batch
from gtr_turbo_jax.train.config import UpdateConfig
from gtr_turbo_jax.train.scoring import score_replies
from gtr_turbo_jax.train.state import ModelDefs, TrainState, init_train_state

MODEL_CONFIG = get_config("micro")
LORA = LoRAConfig(rank=4, alpha=8.0, dropout=0.0)
# The teacher-merge tests adapt two kernels (the decoder's q_proj, the vision tower's qkv): few
# leaves to compile.
TWO_KERNELS = dataclasses.replace(LORA, targets=("q_proj", "qkv"))
GRID = (1, 4, 4)  # 16 patches -> 4 merged image tokens
TURNS, ENVS, PROMPT_LEN, REPLY_LEN = 2, 2, 12, 6
THOUGHT_LEN = 3  # reply tokens [0, 3) are thoughts, [3, 5) the action span, 5 the EOS

# Shared by the test files: one config, one compilation of the step per process. The hand-made
# batches carry no sampler numbers, so the update re-scores them (`rescore`); the default path,
# which reads the rollout's, is checked against it in test_update_step.py.
KL_CONFIG = UpdateConfig(
    mode="turbo_kl",
    rescore=True,
    ppo_epochs=2,
    minibatch_size=2,
    grad_accum_steps=1,
    merge_interval=2,
    snapshot_capacity=4,
    learning_rate=1e-3,
    grad_clip=1.0,
)
PPO_CONFIG = KL_CONFIG.replace(mode="ppo", ppo_epochs=3)


def build_state(
    checkpoint: Path,
    config: UpdateConfig,
    seed: int = 0,
    lora: LoRAConfig = LORA,
    teacher: Path | None = None,
) -> tuple[ModelDefs, TrainState]:
    """A fresh model (random checkpoint: O(1) logits) and value head each time: the state is
    donated to the update step. `teacher`: an external teacher's checkpoint."""
    model = from_pretrained(checkpoint, lora=lora, seed=seed)
    value_head = ValueHead(MODEL_CONFIG.text.hidden_size, widths=(16,), rngs=nnx.Rngs(seed + 1))
    like = Batch.dummy(
        TURNS, ENVS, PROMPT_LEN, REPLY_LEN, MODEL_CONFIG.vision.patch_dim, GRID, REPLY_LEN
    )
    teacher_model = None if teacher is None else from_pretrained(teacher)
    return init_train_state(model, value_head, config, jax.random.key(seed), like, teacher_model)


def make_batch(seed: int = 0, reward: np.ndarray | None = None) -> Batch:
    """Left-padded prompts with one image each, random replies split thought / action / EOS,
    episodes of two turns (the second terminates)."""
    rng = np.random.default_rng(seed)
    c = MODEL_CONFIG
    image = [c.vision_start_token_id, *[c.image_token_id] * 4, c.vision_end_token_id]
    prompt_ids = np.zeros((TURNS, ENVS, PROMPT_LEN), np.int32)
    prompt_mask = np.zeros_like(prompt_ids)
    for t in range(TURNS):
        for e in range(ENVS):
            row = [1, *image, *rng.integers(8, 1024, 2 + (t + e) % 3)]
            prompt_ids[t, e, -len(row) :] = row
            prompt_mask[t, e, -len(row) :] = 1
    reply = rng.integers(8, 1024, (TURNS, ENVS, REPLY_LEN)).astype(np.int32)
    reply[..., -1] = c.text.eos_token_id
    positions = np.arange(REPLY_LEN)
    thought = np.broadcast_to(positions < THOUGHT_LEN, reply.shape)
    action = np.broadcast_to((positions >= THOUGHT_LEN) & (positions < REPLY_LEN - 1), reply.shape)
    terminated = np.zeros((TURNS, ENVS), bool)
    terminated[-1] = True
    batch = Batch.dummy(TURNS, ENVS, PROMPT_LEN, REPLY_LEN, c.vision.patch_dim, GRID, REPLY_LEN)
    return batch.replace(
        prompt_ids=jnp.asarray(prompt_ids),
        prompt_mask=jnp.asarray(prompt_mask),
        image_patches=jnp.asarray(
            rng.standard_normal(batch.image_patches.shape).astype(np.float32)
        ),
        response_ids=jnp.asarray(reply),
        response_mask=jnp.ones(reply.shape, bool),
        thought_mask=jnp.asarray(thought),
        action_mask=jnp.asarray(action),
        reward=jnp.asarray(
            rng.standard_normal((TURNS, ENVS)).astype(np.float32) if reward is None else reward
        ),
        terminated=jnp.asarray(terminated),
        teacher_ids=jnp.asarray(reply),
        teacher_label_mask=jnp.asarray(thought),
    )


@functools.cache
def make_scorer():
    """Jitted reply logits under given adapters:
    `scorer(graphdef, base, adapters, batch) -> [turns * envs, reply_len, vocab]`. One function
    per process, so the test files share its compilations."""

    @functools.partial(jax.jit, static_argnames=("graphdef",))
    def scorer(graphdef, base, adapters, batch: Batch) -> jax.Array:
        rows = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batch)
        return score_replies(
            graphdef,
            base,
            adapters,
            rows.prompt_ids,
            rows.prompt_mask,
            rows.image_patches,
            rows.response_ids,
            rows.response_mask,
            batch.image_grid_thw,
        ).logits

    return scorer


def reply_logp(logits: jax.Array, batch: Batch) -> np.ndarray:
    """Per-token log-probs of the batch's replies, in float64 numpy: `[turns * envs, reply_len]`."""
    logits = np.asarray(logits, np.float64)
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    ids = np.asarray(batch.response_ids).reshape(logits.shape[:2])
    return np.take_along_axis(logits, ids[..., None], -1)[..., 0] - log_z
