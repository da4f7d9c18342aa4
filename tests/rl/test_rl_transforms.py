"""The pure functions compose with jit and vmap, and agree with their eager results."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from gtr_turbo_jax.rl import ema_merge, gae, lambda_logprob, sma_weights, thought_kl, ties_merge


def test_gae_vmaps_over_independent_rollouts_and_takes_traced_discounts():
    rng = np.random.default_rng(0)
    shape = (3, 6, 4)  # [rollouts, turns, envs]
    rewards, values, next_values = (rng.normal(size=shape).astype(np.float32) for _ in range(3))
    terminated, truncated = rng.random(shape) < 0.2, rng.random(shape) < 0.2
    # gamma and lam as traced arguments: no Python check runs, the values are taken as valid.
    batched = jax.jit(jax.vmap(gae, in_axes=(0, 0, 0, 0, 0, None, None)))
    result = batched(rewards, values, next_values, terminated, truncated, 0.9, 0.95)
    single_rollout = jax.jit(gae)
    for i in range(shape[0]):
        single = single_rollout(
            rewards[i], values[i], next_values[i], terminated[i], truncated[i], 0.9, 0.95
        )
        np.testing.assert_allclose(result[i], single, rtol=1e-6, atol=1e-6)


def test_lambda_logprob_and_thought_kl_vmap_over_minibatches():
    rng = np.random.default_rng(1)
    agent = -rng.exponential(size=(2, 3, 5)).astype(np.float32)
    teacher = -rng.exponential(size=(2, 3, 5)).astype(np.float32)
    thought = rng.random((2, 3, 5)) < 0.5
    action = ~thought
    valid = rng.random((2, 3)) < 0.7

    @jax.jit
    @jax.vmap
    def per_minibatch(agent, teacher, thought, action, valid):
        return lambda_logprob(agent, thought, action, 0.5), thought_kl(
            agent, teacher, thought, valid
        )

    logp, kl = per_minibatch(agent, teacher, thought, action, valid)
    for i in range(2):
        np.testing.assert_allclose(
            logp[i], lambda_logprob(agent[i], thought[i], action[i], 0.5), rtol=1e-6
        )
        np.testing.assert_allclose(
            kl[i], thought_kl(agent[i], teacher[i], thought[i], valid[i]), rtol=1e-6
        )


def test_merges_run_inside_jit_with_traced_weights():
    rng = np.random.default_rng(2)
    deltas = {"w": rng.normal(size=(4, 3, 2)).astype(np.float32)}
    teacher = {"w": rng.normal(size=(3, 2)).astype(np.float32)}
    valid = np.array([True, True, False, True])

    @jax.jit
    def refresh_teacher(deltas, valid, teacher):
        merged = ties_merge(deltas, sma_weights(valid), density=0.8)
        return ema_merge(teacher, merged, alpha=0.5)

    result = refresh_teacher(deltas, valid, teacher)
    eager = ema_merge(teacher, ties_merge(deltas, sma_weights(valid), density=0.8), alpha=0.5)
    np.testing.assert_allclose(result["w"], eager["w"], rtol=1e-6)
    assert jnp.all(jnp.isfinite(result["w"]))


def test_thought_kl_jits_with_a_static_estimator():
    rng = np.random.default_rng(3)
    agent, teacher = (-rng.exponential(size=(2, 4)).astype(np.float32) for _ in range(2))
    mask, valid = np.ones((2, 4), bool), np.ones(2, bool)
    jitted = jax.jit(partial(thought_kl, estimator="k3"))
    np.testing.assert_allclose(
        jitted(agent, teacher, mask, valid),
        thought_kl(agent, teacher, mask, valid, "k3"),
        rtol=1e-6,
    )
