"""Per-token log-probs, the lambda-weighted reply log-prob and the thought entropy vs numpy loops."""

import math

import jax
import numpy as np
import pytest

from gtr_turbo_jax.rl import lambda_logprob, thought_entropy, token_logprobs

B, L, V = 3, 6, 11


def log_softmax_row(row):
    top = max(row)
    log_norm = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - log_norm for x in row]


def random_logits(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(B, L, V)).astype(np.float32)
    tokens = rng.integers(0, V, size=(B, L))
    return logits, tokens


def spans(thought_lengths, action_lengths):
    """Thought tokens first, then the action span, then padding."""
    thought = np.zeros((B, L), bool)
    action = np.zeros((B, L), bool)
    for b, (n_thought, n_action) in enumerate(zip(thought_lengths, action_lengths)):
        thought[b, :n_thought] = True
        action[b, n_thought : n_thought + n_action] = True
    return thought, action


@pytest.mark.parametrize("temperature", [1.0, 0.2])
def test_token_logprobs_match_log_softmax_at_temperature(temperature):
    logits, tokens = random_logits(0)
    expected = np.zeros((B, L))
    for b in range(B):
        for pos in range(L):
            row = log_softmax_row([float(x) / temperature for x in logits[b, pos]])
            expected[b, pos] = row[tokens[b, pos]]
    result = token_logprobs(logits, tokens, temperature)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lam", [0.5, 0.2, 1.0, 0.0])
def test_lambda_logprob_weights_thoughts_by_lambda(lam):
    rng = np.random.default_rng(1)
    token_logp = -rng.exponential(size=(B, L)).astype(np.float32)
    thought, action = spans([3, 0, 4], [2, 3, 2])  # reply 1 has a zero-length thought
    expected = []
    for b in range(B):
        thought_sum = sum(token_logp[b, i] for i in range(L) if thought[b, i])
        action_sum = sum(token_logp[b, i] for i in range(L) if action[b, i])
        expected.append(lam * thought_sum + action_sum)
    result = lambda_logprob(token_logp, thought, action, lam)
    np.testing.assert_allclose(result, expected, rtol=1e-6)


def test_lambda_logprob_ignores_minus_inf_at_padding():
    token_logp = np.full((B, L), -np.inf, np.float32)
    token_logp[:, :4] = -0.5
    thought, action = spans([2, 1, 0], [2, 3, 4])
    result = np.asarray(lambda_logprob(token_logp, thought, action, 0.5))
    np.testing.assert_allclose(result, [-0.5 * 0.5 * 2 - 1.0, -0.25 - 1.5, -2.0])


def test_thought_entropy_matches_numpy_and_is_zero_without_thoughts():
    logits, _ = random_logits(2)
    logits[0, 1, :5] = -np.inf  # masked vocabulary entries contribute 0, not NaN
    thought, _ = spans([3, 0, 6], [1, 1, 0])
    expected = []
    for b in range(B):
        entropies = []
        for pos in range(L):
            if thought[b, pos]:
                log_p = log_softmax_row([float(x) for x in logits[b, pos]])
                entropies.append(-sum(math.exp(x) * x for x in log_p if x > -math.inf))
        expected.append(sum(entropies) / len(entropies) if entropies else 0.0)
    np.testing.assert_allclose(jax.jit(thought_entropy)(logits, thought), expected, rtol=1e-5)


def test_logprob_rejects_bad_config():
    logits, tokens = random_logits(3)
    with pytest.raises(ValueError, match=r"temperature=0.0 is out of range"):
        token_logprobs(logits, tokens, 0.0)
    mask = np.ones((B, L), bool)
    with pytest.raises(ValueError, match=r"lam=1.5 is out of range: expected a value in \[0, 1\]"):
        lambda_logprob(np.zeros((B, L)), mask, mask, 1.5)


def test_the_authors_thought_sum_skips_the_first_two_reply_tokens():
    from gtr_turbo_jax.rl import skip_leading_tokens

    rng = np.random.default_rng(5)
    token_logp = rng.normal(size=(B, L)).astype(np.float32)
    thought, action = spans([4, 1, 0], [2, 2, 3])
    want = [
        0.5 * sum(token_logp[b, i] for i in range(2, L) if thought[b, i])
        + sum(token_logp[b, i] for i in range(L) if action[b, i])
        for b in range(B)
    ]
    got = lambda_logprob(token_logp, skip_leading_tokens(thought, 2), action, 0.5)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert not np.allclose(got, lambda_logprob(token_logp, thought, action, 0.5))  # it differs
    np.testing.assert_array_equal(skip_leading_tokens(thought, 0), thought)
    with pytest.raises(ValueError, match="count=-1"):
        skip_leading_tokens(thought, -1)
