"""Thought-token KL estimators, forward KL, shaped advantages and the SFT loss vs numpy loops."""

import math
from functools import partial

import jax
import numpy as np
import pytest

from gtr_turbo_jax.rl import (
    KL_ESTIMATORS,
    forward_kl,
    kl_scope_mask,
    sft_loss,
    shaped_advantages,
    thought_kl,
)

B, L, V = 4, 7, 9


def log_softmax_row(row):
    top = max(row)
    log_norm = top + math.log(sum(math.exp(x - top) for x in row))
    return [x - log_norm for x in row]


def per_token_estimate(agent, teacher, estimator, clip):
    k1 = agent - teacher
    if estimator == "k1_clipped":
        return min(max(k1, 0.0), clip)
    if estimator == "k1":
        return k1
    if estimator == "abs":
        return abs(k1)
    ratio = math.exp(teacher - agent)  # pi_teacher / pi_agent on the agent's sample
    return (ratio - 1.0) - math.log(ratio)


def thought_kl_reference(agent, teacher, mask, valid, estimator, clip=10.0, invalid=100.0):
    out = []
    for b in range(agent.shape[0]):
        if not valid[b]:
            out.append(invalid)
            continue
        terms = [
            per_token_estimate(float(agent[b, i]), float(teacher[b, i]), estimator, clip)
            for i in range(agent.shape[1])
            if mask[b, i]
        ]
        out.append(sum(terms) / len(terms) if terms else 0.0)
    return np.array(out)


def random_logps(seed):
    rng = np.random.default_rng(seed)
    agent = -rng.exponential(2.0, size=(B, L)).astype(np.float32)
    teacher = agent + rng.normal(scale=3.0, size=(B, L)).astype(np.float32)  # some k1 > 10 or < 0
    teacher[0, 0] = agent[0, 0] - 15.0
    thought = np.zeros((B, L), bool)
    for b, n in enumerate([5, 0, 3, 7]):  # reply 1: a valid reply with no thought tokens
        thought[b, :n] = True
    return agent, teacher, thought


@pytest.fixture(scope="module")
def kl_fns():
    return {name: jax.jit(partial(thought_kl, estimator=name)) for name in KL_ESTIMATORS}


@pytest.mark.parametrize("estimator", KL_ESTIMATORS)
def test_thought_kl_matches_reference(kl_fns, estimator):
    agent, teacher, thought = random_logps(0)
    valid = np.array([True, True, False, True])
    expected = thought_kl_reference(agent, teacher, thought, valid, estimator)
    result = np.asarray(kl_fns[estimator](agent, teacher, thought, valid))
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)
    assert result[1] == 0.0 and result[2] == 100.0  # no thoughts -> 0, invalid -> 100


def test_thought_kl_clip_and_invalid_value_are_honoured():
    agent, teacher, thought = random_logps(1)
    valid = np.array([True, False, True, True])
    result = thought_kl(agent, teacher, thought, valid, clip=0.5, invalid_value=7.0)
    expected = thought_kl_reference(agent, teacher, thought, valid, "k1_clipped", 0.5, 7.0)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)
    all_invalid = thought_kl(agent, teacher, thought, np.zeros(B, bool))
    np.testing.assert_array_equal(all_invalid, np.full(B, 100.0))


def test_thought_kl_thought_action_scope_covers_the_action_tokens():
    agent, teacher, thought = random_logps(2)
    action = np.zeros((B, L), bool)
    action[:, 5:] = True
    action &= ~thought
    valid = np.ones(B, bool)
    both = kl_scope_mask(thought, action, "thought_action")
    np.testing.assert_array_equal(kl_scope_mask(thought, action), thought)
    expected = thought_kl_reference(agent, teacher, thought | action, valid, "k1_clipped")
    np.testing.assert_allclose(thought_kl(agent, teacher, both, valid), expected, rtol=1e-5)


def test_thought_kl_is_a_constant_for_the_gradient():
    agent, teacher, thought = random_logps(3)
    valid = np.ones(B, bool)
    grad = jax.grad(lambda a: thought_kl(a, teacher, thought, valid, "k1").sum())(agent)
    np.testing.assert_array_equal(grad, np.zeros_like(agent))


def test_forward_kl_matches_the_full_vocabulary_sum():
    rng = np.random.default_rng(4)
    agent_logits = rng.normal(scale=2.0, size=(B, L, V)).astype(np.float32)
    teacher_logits = rng.normal(scale=2.0, size=(B, L, V)).astype(np.float32)
    teacher_logits[0, 0, :3] = -np.inf  # tokens the teacher rules out contribute 0
    _, _, thought = random_logps(4)
    valid = np.array([True, True, True, False])
    expected = []
    for b in range(B):
        if not valid[b]:
            expected.append(100.0)
            continue
        per_token = []
        for i in range(L):
            if thought[b, i]:
                log_q = log_softmax_row([float(x) for x in agent_logits[b, i]])
                log_p = log_softmax_row([float(x) for x in teacher_logits[b, i]])
                per_token.append(
                    sum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q) if lp > -math.inf)
                )
        expected.append(sum(per_token) / len(per_token) if per_token else 0.0)
    result = forward_kl(agent_logits, teacher_logits, thought, valid)
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-5)


def test_shaped_advantages_add_format_and_subtract_beta_kl():
    rng = np.random.default_rng(5)
    advantages, format_reward, kl = (rng.normal(size=(3, 4)).astype(np.float32) for _ in range(3))
    result = shaped_advantages(advantages, format_reward, kl, beta=0.7)
    expected = [
        [advantages[t, e] + format_reward[t, e] - 0.7 * kl[t, e] for e in range(4)]
        for t in range(3)
    ]
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6)


def test_sft_loss_is_the_token_mean_cross_entropy_on_labelled_tokens():
    rng = np.random.default_rng(6)
    logits = rng.normal(scale=2.0, size=(B, L, V)).astype(np.float32)
    labels = rng.integers(0, V, size=(B, L))
    label_mask = rng.random((B, L)) < 0.6
    label_mask[:, 2:4] = False  # the action span, masked out
    nlls = [
        -log_softmax_row([float(x) for x in logits[b, i]])[labels[b, i]]
        for b in range(B)
        for i in range(L)
        if label_mask[b, i]
    ]
    loss_fn = jax.jit(sft_loss)
    assert float(loss_fn(logits, labels, label_mask)) == pytest.approx(
        sum(nlls) / len(nlls), rel=1e-5
    )
    assert float(loss_fn(logits, labels, np.zeros((B, L), bool))) == 0.0


def test_guidance_rejects_bad_config():
    agent, teacher, thought = random_logps(7)
    valid = np.ones(B, bool)
    with pytest.raises(
        ValueError, match=r"estimator='k2' is not supported: expected one of k1_clipped"
    ):
        thought_kl(agent, teacher, thought, valid, estimator="k2")
    with pytest.raises(ValueError, match=r"clip=-1.0 is out of range"):
        thought_kl(agent, teacher, thought, valid, clip=-1.0)
    with pytest.raises(ValueError, match=r"scope='action'"):
        kl_scope_mask(thought, thought, "action")
    with pytest.raises(ValueError, match=r"beta=-1.0 is out of range"):
        shaped_advantages(agent, agent, agent, beta=-1.0)
