"""Turbo-SFT's teacher labels: the authors' retries of unparseable teacher replies, and labels only
where both the agent's and the teacher's replies parse."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gtr_turbo_jax.rollout.sampler import SamplingConfig
from gtr_turbo_jax.train.sft_targets import retry_temperatures, sample_with_retries, sft_labels


def test_retry_temperatures_grow_by_a_tenth_up_to_0_9():
    np.testing.assert_allclose(retry_temperatures(0.2, 3), [0.22, 0.242, 0.2662])
    np.testing.assert_allclose(retry_temperatures(0.85, 2), [0.9, 0.9])
    assert retry_temperatures(0.2, 0) == ()


def test_failed_rows_are_sampled_again_and_parsed_rows_kept():
    # A fake sampler: row 0 parses from temperature 0.24 on, row 1 never, row 2 always. Each
    # reply's tokens record the temperature it was drawn at.
    calls = []

    def sample(sampling, key):
        del key
        calls.append(sampling.temperature)
        t = sampling.temperature
        tokens = jnp.full((3, 2), int(round(t * 1000)), jnp.int32)
        valid = jnp.array([t > 0.24, False, True])
        mask = jnp.ones((3, 2), bool)
        return tokens, mask, jnp.zeros((3, 2), bool), valid

    sampling = SamplingConfig(max_new_tokens=2, temperature=0.2)
    tokens, _, _, valid = jax.jit(lambda k: sample_with_retries(sample, sampling, k, 3))(
        jax.random.key(0)
    )
    np.testing.assert_array_equal(tokens[:, 0], [242, 266, 200])  # retry 2, the last, the first
    np.testing.assert_array_equal(valid, [True, False, True])
    assert len(calls) == 4  # traced once per draw


def test_labels_need_both_replies_to_parse():
    mask = jnp.array([[1, 1, 1, 0]] * 3, bool)
    action = jnp.array([[0, 0, 1, 0]] * 3, bool)
    labels = sft_labels(mask, action, jnp.array([True, True, False]), jnp.array([1, 0, 1]))
    np.testing.assert_array_equal(labels, [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize("retries", [-1, 1.5])
def test_bad_retry_counts_get_one_line(retries):
    from gtr_turbo_jax.train.config import UpdateConfig

    with pytest.raises(ValueError, match="teacher_retries"):
        UpdateConfig(teacher_retries=retries)
