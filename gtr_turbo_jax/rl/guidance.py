"""GTR-Turbo's guidance from the merged teacher: thought-token KL (variant b), SFT (variant a).

Per-token log-probs are those of the agent's own sampled tokens, aligned as in `logprob.py`.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from gtr_turbo_jax.rl._checks import check_choice, check_range
from gtr_turbo_jax.rl.logprob import masked_token_mean

KL_ESTIMATORS = ("k1_clipped", "k1", "abs", "k3")
KL_SCOPES = ("thought", "thought_action")


def kl_scope_mask(
    thought_mask: jax.Array, action_mask: jax.Array, scope: str = "thought"
) -> jax.Array:
    """The tokens the KL covers: the thoughts (the paper's choice) or thoughts and action."""
    check_choice("scope", scope, KL_SCOPES)
    thought_mask = thought_mask.astype(bool)
    return thought_mask if scope == "thought" else thought_mask | action_mask.astype(bool)


def thought_kl(
    agent_logp: jax.Array,
    teacher_logp: jax.Array,
    thought_mask: jax.Array,
    valid: jax.Array,
    estimator: str = "k1_clipped",
    clip: float = 10.0,
    invalid_value: float = 100.0,
) -> jax.Array:
    """`KL_t`: the per-token estimate of KL(agent || teacher), averaged over the thought tokens: `[B]`.

    With `k1 = log pi_agent - log pi_teacher` on the agent's sampled tokens, the estimators are
    `k1_clipped` = clip(k1, 0, clip) (the paper's best), `k1`, `abs` = |k1| and
    `k3 = (r - 1) - log r` with `r = pi_teacher / pi_agent`. A valid reply without thought tokens
    gets 0, an invalid reply `invalid_value`. The result is a constant for the gradient.
    """
    chex.assert_rank(agent_logp, 2)
    chex.assert_equal_shape([agent_logp, teacher_logp, thought_mask])
    chex.assert_shape(valid, agent_logp.shape[:1])
    check_choice("estimator", estimator, KL_ESTIMATORS)
    check_range("clip", clip, 0.0, float("inf"))

    k1 = agent_logp.astype(jnp.float32) - teacher_logp.astype(jnp.float32)
    if estimator == "k1_clipped":
        per_token = jnp.clip(k1, 0.0, clip)
    elif estimator == "k1":
        per_token = k1
    elif estimator == "abs":
        per_token = jnp.abs(k1)
    else:  # k3, with log r = -k1
        per_token = jnp.expm1(-k1) + k1
    kl = jnp.where(valid.astype(bool), masked_token_mean(per_token, thought_mask), invalid_value)
    return jax.lax.stop_gradient(kl)


def forward_kl(
    agent_logits: jax.Array,
    teacher_logits: jax.Array,
    thought_mask: jax.Array,
    valid: jax.Array,
    invalid_value: float = 100.0,
) -> jax.Array:
    """Exact forward KL(teacher || agent) over the full vocabulary, averaged over thought tokens.

    `[B, L, V]` logits at temperature 1 -> `[B]`; same conventions as `thought_kl` (0 without
    thought tokens, `invalid_value` for invalid replies, no gradient).
    """
    chex.assert_rank([agent_logits, thought_mask], [3, 2])
    chex.assert_equal_shape([agent_logits, teacher_logits])
    chex.assert_equal_shape_prefix([agent_logits, thought_mask], 2)
    chex.assert_shape(valid, agent_logits.shape[:1])
    agent_log_p = jax.nn.log_softmax(agent_logits.astype(jnp.float32), axis=-1)
    teacher_log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), axis=-1)
    teacher_p = jnp.exp(teacher_log_p)
    # where: a token the teacher rules out (p = 0) contributes 0, even where the agent also has -inf.
    per_token = jnp.sum(
        jnp.where(teacher_p > 0, teacher_p * (teacher_log_p - agent_log_p), 0.0), -1
    )
    kl = jnp.where(valid.astype(bool), masked_token_mean(per_token, thought_mask), invalid_value)
    return jax.lax.stop_gradient(kl)


def shaped_advantages(
    advantages: jax.Array, format_reward: jax.Array, kl: jax.Array, beta: float = 1.0
) -> jax.Array:
    """`A' = A + format - beta * KL`, added after GAE (so the value target `A' + V` includes it)."""
    chex.assert_equal_shape([advantages, format_reward, kl])
    check_range("beta", beta, 0.0, float("inf"))
    return advantages + format_reward - beta * jax.lax.stop_gradient(kl)


def sft_loss(logits: jax.Array, labels: jax.Array, label_mask: jax.Array) -> jax.Array:
    """Token-mean cross-entropy of `logits [B, L, V]` on `labels [B, L]` where `label_mask` holds.

    For GTR's SFT guidance the mask covers the teacher's reply minus its action span (and excludes
    prompt and padding). A batch without labelled tokens gives 0.
    """
    chex.assert_rank([logits, labels], [3, 2])
    chex.assert_equal_shape([labels, label_mask])
    chex.assert_equal_shape_prefix([logits, labels], 2)
    logits = logits.astype(jnp.float32)
    chosen = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - chosen
    label_mask = label_mask.astype(bool)
    return jnp.sum(jnp.where(label_mask, nll, 0.0)) / jnp.maximum(jnp.sum(label_mask), 1)
