"""PPO on the sequence-level ratio of the lambda-weighted reply log-prob (RL4VLM's recipe), and
its token-level form (each token's ratio clipped on its own, a weighted token mean: current LLM PPO)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from gtr_turbo_jax.rl._checks import check_range


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def _as_mask(mask: jax.Array | None, like: jax.Array) -> jax.Array:
    if mask is None:
        return jnp.ones(like.shape, bool)
    chex.assert_equal_shape([mask, like])
    return mask.astype(bool)


def normalize_advantages(
    advantages: jax.Array, mask: jax.Array | None = None, eps: float = 1e-5
) -> jax.Array:
    """`(A - mean) / (std + eps)` over all entries where `mask` holds; masked-out entries become 0.

    The std is the population one (ddof 0); the reference code's `torch.std` uses ddof 1, a factor
    `sqrt(n / (n - 1))` that is negligible at the paper's batch of 1024.
    """
    mask = _as_mask(mask, advantages)
    advantages = advantages.astype(jnp.float32)
    mean = _masked_mean(advantages, mask)
    std = jnp.sqrt(_masked_mean(jnp.square(advantages - mean), mask))
    return jnp.where(mask, (advantages - mean) / (std + eps), 0.0)


def ppo_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    mask: jax.Array | None = None,
    *,
    clip_eps: float = 0.1,
    value_clip_eps: float | None = 0.1,
    value_coef: float = 0.5,
    ratio_guard: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped surrogate + clipped value loss over a minibatch `[B]`; returns `(loss, metrics)`.

    `logp`/`values` come from the model being trained, `old_*` from the rollout, `advantages` are
    already normalised. `loss = policy_loss + value_coef * value_loss` with, as in RL4VLM's code,
    `value_loss = 0.5 * mean(max((v - R)^2, (v_clipped - R)^2))` (`value_clip_eps=None`: unclipped).
    `ratio_guard` (code behaviour, off by default): when any ratio exceeds it, the policy loss uses
    the clipped term alone, so a stale, exploding ratio cannot push the update through the min.
    `mask` excludes padding rows from every mean (and from the guard). No entropy bonus.
    """
    chex.assert_rank(logp, 1)
    chex.assert_equal_shape([logp, old_logp, advantages, values, old_values, returns])
    _check(clip_eps, value_clip_eps, value_coef, ratio_guard)
    mask = _as_mask(mask, logp)
    logp, old_logp, advantages, values, old_values, returns = (
        x.astype(jnp.float32) for x in (logp, old_logp, advantages, values, old_values, returns)
    )
    surrogate, ratio, log_ratio, guard_hit = _clipped_surrogate(
        logp - old_logp, advantages, mask, clip_eps, ratio_guard
    )
    policy_loss = -_masked_mean(surrogate, mask)
    value_loss = _value_loss(values, old_values, returns, mask, value_clip_eps)
    loss = policy_loss + value_coef * value_loss
    metrics = _metrics(loss, policy_loss, value_loss, log_ratio, ratio, mask, clip_eps, guard_hit)
    return loss, jax.lax.stop_gradient(metrics)


def token_ppo_loss(
    token_logp: jax.Array,
    old_token_logp: jax.Array,
    token_weights: jax.Array,
    advantages: jax.Array,
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    mask: jax.Array | None = None,
    *,
    clip_eps: float = 0.1,
    value_clip_eps: float | None = 0.1,
    value_coef: float = 0.5,
    ratio_guard: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`ppo_loss` with a ratio per token: `[B, L]` log-probs and weights, `[B]` the rest.

    Each token's surrogate `min(r_l A, clip(r_l) A)` (its reply's advantage) is weighted by
    `token_weights` (RL4VLM's lambda on thought tokens, 1 on action tokens, 0 on padding) and the
    policy loss is their weighted mean over all tokens of the minibatch. At ratio 1 its gradient
    is the sequence form's divided by the mean weighted length; the difference is the trust
    region: the sequence ratio sums ~40 tokens' changes, so a small change per token already
    clips the whole reply, and the replies still inside the clip carry the step. Here a token
    stops pulling once it has moved by `clip_eps` itself. The value loss is `ppo_loss`'s.
    `ratio_guard` looks at token ratios. Metrics are token means.
    """
    chex.assert_rank([token_logp, advantages], [2, 1])
    chex.assert_equal_shape([token_logp, old_token_logp, token_weights])
    chex.assert_equal_shape([advantages, values, old_values, returns])
    chex.assert_equal_shape_prefix([token_logp, advantages], 1)
    _check(clip_eps, value_clip_eps, value_coef, ratio_guard)
    rows = _as_mask(mask, advantages)
    weights = jnp.where(rows[:, None], token_weights.astype(jnp.float32), 0.0)
    tokens = weights > 0
    surrogate, ratio, log_ratio, guard_hit = _clipped_surrogate(
        token_logp.astype(jnp.float32) - old_token_logp.astype(jnp.float32),
        advantages.astype(jnp.float32)[:, None],
        tokens,
        clip_eps,
        ratio_guard,
    )
    policy_loss = -jnp.sum(jnp.where(tokens, weights * surrogate, 0.0)) / jnp.maximum(
        jnp.sum(weights), 1e-8
    )
    values, old_values, returns = (x.astype(jnp.float32) for x in (values, old_values, returns))
    value_loss = _value_loss(values, old_values, returns, rows, value_clip_eps)
    loss = policy_loss + value_coef * value_loss
    metrics = _metrics(loss, policy_loss, value_loss, log_ratio, ratio, tokens, clip_eps, guard_hit)
    return loss, jax.lax.stop_gradient(metrics)


def _check(clip_eps, value_clip_eps, value_coef, ratio_guard) -> None:
    check_range("clip_eps", clip_eps, 0.0, float("inf"))
    if value_clip_eps is not None:
        check_range("value_clip_eps", value_clip_eps, 0.0, float("inf"))
    check_range("value_coef", value_coef, 0.0, float("inf"))
    if ratio_guard is not None:
        check_range("ratio_guard", ratio_guard, 1.0, float("inf"), low_open=True)


def _clipped_surrogate(log_ratio, advantages, mask, clip_eps, ratio_guard):
    """`min(r A, clip(r) A)` elementwise; with `ratio_guard`, the clipped term alone once any
    ratio under `mask` exceeds it. Returns (surrogate, ratio, log_ratio, guard_hit)."""
    ratio = jnp.exp(log_ratio)
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    surrogate = jnp.minimum(ratio * advantages, clipped)
    guard_hit = jnp.array(False)
    if ratio_guard is not None:
        guard_hit = jnp.any(mask & (ratio > ratio_guard))
        surrogate = jnp.where(guard_hit, clipped, surrogate)
    return surrogate, ratio, log_ratio, guard_hit


def _value_loss(values, old_values, returns, mask, value_clip_eps):
    """RL4VLM's `0.5 * mean(max((v - R)^2, (v_clipped - R)^2))` (unclipped when `None`)."""
    value_error = jnp.square(values - returns)
    if value_clip_eps is not None:
        values_clipped = old_values + jnp.clip(values - old_values, -value_clip_eps, value_clip_eps)
        value_error = jnp.maximum(value_error, jnp.square(values_clipped - returns))
    return 0.5 * _masked_mean(value_error, mask)


def _metrics(loss, policy_loss, value_loss, log_ratio, ratio, mask, clip_eps, guard_hit):
    """Logging only (no gradient): losses and the ratio's statistics over `mask`."""
    log_ratio, ratio = jax.lax.stop_gradient((log_ratio, ratio))
    return {
        "loss": loss,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        # Schulman's k3 estimate of KL(old || new) on the rollout's samples: >= 0, low variance.
        "approx_kl": _masked_mean(jnp.expm1(log_ratio) - log_ratio, mask),
        "clip_fraction": _masked_mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32), mask),
        "ratio_mean": _masked_mean(ratio, mask),
        "ratio_max": jnp.max(jnp.where(mask, ratio, 0.0)),  # ratios are > 0
        "ratio_guard_hit": guard_hit.astype(jnp.float32),
    }
