"""The epochs' minibatch orders (`rl.shuffled_steps`, `rl.packed_steps`) against numpy."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from gtr_turbo_jax import rl


def test_shuffled_steps_are_the_permutation_every_step_active():
    key = jax.random.key(3)
    indices, active = rl.shuffled_steps(key, 12, 3, 2, 2)
    want = np.asarray(jax.random.permutation(key, 12)).reshape(3, 2, 2)
    np.testing.assert_array_equal(indices, want)
    assert np.asarray(active).all() and active.shape == (3,)


@pytest.mark.parametrize("seed", range(6))
def test_packed_steps_take_the_trained_samples_first_and_skip_the_rest(seed):
    rng = np.random.default_rng(seed)
    steps, accum, micro = 6, 2, 2
    trained = rng.random(steps * accum * micro) < rng.uniform(0.0, 1.0)
    indices, active = jax.device_get(
        rl.packed_steps(jax.random.key(seed), jax.numpy.asarray(trained), steps, accum, micro)
    )
    flat = indices.reshape(-1)
    assert indices.shape == (steps, accum, micro)
    assert sorted(flat.tolist()) == list(range(trained.size))  # every sample once
    count = int(trained.sum())
    assert set(flat[:count].tolist()) == set(np.flatnonzero(trained).tolist())
    needed = -(-count // (accum * micro))  # ceil
    np.testing.assert_array_equal(active, np.arange(steps) < needed)
    # an active step holds a trained sample; an inactive one none
    holds = trained[indices].reshape(steps, -1).any(axis=1)
    np.testing.assert_array_equal(holds, active)


def test_packed_orders_differ_by_key_within_the_trained_part():
    trained = jax.numpy.asarray(np.arange(16) % 3 != 0)
    orders = {
        tuple(np.asarray(rl.packed_steps(jax.random.key(k), trained, 4, 1, 4)[0]).ravel()[:10])
        for k in range(5)
    }
    assert len(orders) > 1
