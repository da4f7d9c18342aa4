"""PPO on the sequence-level ratio of the lambda-weighted reply log-prob (RL4VLM's recipe)."""

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
    check_range("clip_eps", clip_eps, 0.0, float("inf"))
    if value_clip_eps is not None:
        check_range("value_clip_eps", value_clip_eps, 0.0, float("inf"))
    check_range("value_coef", value_coef, 0.0, float("inf"))
    if ratio_guard is not None:
        check_range("ratio_guard", ratio_guard, 1.0, float("inf"), low_open=True)
    mask = _as_mask(mask, logp)
    logp, old_logp, advantages, values, old_values, returns = (
        x.astype(jnp.float32) for x in (logp, old_logp, advantages, values, old_values, returns)
    )

    log_ratio = logp - old_logp
    ratio = jnp.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    surrogate = jnp.minimum(unclipped, clipped)
    guard_hit = jnp.array(False)
    if ratio_guard is not None:
        guard_hit = jnp.any(mask & (ratio > ratio_guard))
        surrogate = jnp.where(guard_hit, clipped, surrogate)
    policy_loss = -_masked_mean(surrogate, mask)

    value_error = jnp.square(values - returns)
    if value_clip_eps is not None:
        values_clipped = old_values + jnp.clip(values - old_values, -value_clip_eps, value_clip_eps)
        value_error = jnp.maximum(value_error, jnp.square(values_clipped - returns))
    value_loss = 0.5 * _masked_mean(value_error, mask)

    loss = policy_loss + value_coef * value_loss
    # Metrics carry no gradient: they are for logging.
    log_ratio, ratio = jax.lax.stop_gradient((log_ratio, ratio))
    metrics = {
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
    return loss, jax.lax.stop_gradient(metrics)
