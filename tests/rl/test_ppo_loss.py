"""Advantage normalisation and the PPO loss vs a per-sample numpy transcription of RL4VLM's update."""

import math
from functools import partial

import jax
import numpy as np
import pytest

from gtr_turbo_jax.rl import lambda_logprob, normalize_advantages, ppo_loss, token_ppo_loss

B = 16


def normalize_reference(advantages, mask):
    kept = [a for a, m in zip(advantages.ravel(), mask.ravel()) if m]
    mean = sum(kept) / len(kept)
    std = math.sqrt(sum((a - mean) ** 2 for a in kept) / len(kept))
    out = [
        (a - mean) / (std + 1e-5) if m else 0.0 for a, m in zip(advantages.ravel(), mask.ravel())
    ]
    return np.array(out).reshape(advantages.shape)


def ppo_reference(
    logp, old_logp, adv, values, old_values, returns, mask, clip, vclip, vcoef, guard
):
    rows = [i for i in range(len(logp)) if mask[i]]
    ratios = {i: math.exp(logp[i] - old_logp[i]) for i in rows}
    guard_hit = guard is not None and any(r > guard for r in ratios.values())
    policy_terms, value_terms, kls, clipped = [], [], [], []
    for i in rows:
        r = ratios[i]
        surr1 = r * adv[i]
        surr2 = min(max(r, 1 - clip), 1 + clip) * adv[i]
        policy_terms.append(-surr2 if guard_hit else -min(surr1, surr2))
        v_clipped = old_values[i] + min(max(values[i] - old_values[i], -vclip), vclip)
        value_terms.append(max((values[i] - returns[i]) ** 2, (v_clipped - returns[i]) ** 2))
        kls.append((r - 1) - math.log(r))
        clipped.append(abs(r - 1) > clip)
    policy_loss = sum(policy_terms) / len(rows)
    value_loss = 0.5 * sum(value_terms) / len(rows)
    return {
        "loss": policy_loss + vcoef * value_loss,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "approx_kl": sum(kls) / len(rows),
        "clip_fraction": sum(clipped) / len(rows),
        "ratio_mean": sum(ratios.values()) / len(rows),
        "ratio_max": max(ratios.values()),
        "ratio_guard_hit": float(guard_hit),
    }


def random_minibatch(seed, log_ratio_scale=0.15):
    rng = np.random.default_rng(seed)
    old_logp = -rng.exponential(5.0, size=B).astype(np.float32)
    logp = old_logp + rng.normal(scale=log_ratio_scale, size=B).astype(np.float32)
    adv = rng.normal(size=B).astype(np.float32)
    old_values = rng.normal(size=B).astype(np.float32)
    values = old_values + rng.normal(scale=0.2, size=B).astype(np.float32)
    returns = rng.normal(size=B).astype(np.float32)
    return logp, old_logp, adv, values, old_values, returns


@pytest.fixture(scope="module")
def loss_fns():
    plain = jax.jit(partial(ppo_loss, clip_eps=0.1, value_clip_eps=0.1, value_coef=0.5))
    guarded = jax.jit(partial(ppo_loss, clip_eps=0.1, value_clip_eps=0.1, ratio_guard=10.0))
    return {None: plain, 10.0: guarded}


@pytest.mark.parametrize("with_mask", [False, True])
def test_normalize_advantages_matches_numpy(with_mask):
    rng = np.random.default_rng(0)
    advantages = rng.normal(3.0, 2.0, size=(5, 4)).astype(np.float32)
    mask = rng.random((5, 4)) < 0.7 if with_mask else np.ones((5, 4), bool)
    result = jax.jit(normalize_advantages)(advantages, mask if with_mask else None)
    np.testing.assert_allclose(result, normalize_reference(advantages, mask), rtol=1e-5, atol=1e-6)


def test_normalize_advantages_padding_does_not_move_the_statistics():
    rng = np.random.default_rng(1)
    advantages = rng.normal(size=8).astype(np.float32)
    padded = np.concatenate([advantages, np.full(4, 1e6, np.float32)])
    mask = np.arange(12) < 8
    np.testing.assert_allclose(
        np.asarray(jax.jit(normalize_advantages)(padded, mask))[:8],
        jax.jit(normalize_advantages)(advantages),
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    ("seed", "guard", "log_ratio_scale", "with_mask"),
    [(0, None, 0.15, False), (1, None, 0.15, True), (2, 10.0, 0.15, False), (3, 10.0, 1.5, True)],
)
def test_ppo_loss_matches_reference(loss_fns, seed, guard, log_ratio_scale, with_mask):
    batch = random_minibatch(seed, log_ratio_scale)
    mask = np.random.default_rng(seed).random(B) < 0.75 if with_mask else np.ones(B, bool)
    loss, metrics = loss_fns[guard](*batch, mask)
    expected = ppo_reference(*batch, mask, 0.1, 0.1, 0.5, guard)
    assert float(loss) == pytest.approx(expected["loss"], rel=1e-5, abs=1e-6)
    for name, value in expected.items():
        assert float(metrics[name]) == pytest.approx(value, rel=1e-4, abs=1e-6), name


def test_ppo_ratio_guard_switches_to_the_clipped_term_only(loss_fns):
    logp, old_logp, adv, values, old_values, returns = random_minibatch(4)
    logp[3] = old_logp[3] + math.log(20.0)  # one ratio of 20
    adv[3] = -1.0  # where min(surr1, surr2) picks the unclipped -20
    mask = np.ones(B, bool)
    batch = (logp, old_logp, adv, values, old_values, returns, mask)
    _, plain = loss_fns[None](*batch)
    _, guarded = loss_fns[10.0](*batch)
    assert float(guarded["ratio_guard_hit"]) == 1.0 and float(plain["ratio_guard_hit"]) == 0.0
    ref_plain = ppo_reference(*batch, 0.1, 0.1, 0.5, None)["policy_loss"]
    ref_guarded = ppo_reference(*batch, 0.1, 0.1, 0.5, 10.0)["policy_loss"]
    assert ref_plain - ref_guarded > 1.0  # the cases differ, and each matches its reference
    assert float(plain["policy_loss"]) == pytest.approx(ref_plain, rel=1e-5)
    assert float(guarded["policy_loss"]) == pytest.approx(ref_guarded, rel=1e-5)
    # A ratio above the guard on a padding row does not trigger it.
    mask[3] = False
    _, masked = loss_fns[10.0](logp, old_logp, adv, values, old_values, returns, mask)
    assert float(masked["ratio_guard_hit"]) == 0.0


def test_ppo_policy_gradient_flows_only_through_unclipped_samples(loss_fns):
    logp, old_logp, adv, values, old_values, returns = random_minibatch(5, log_ratio_scale=0.2)
    mask = np.ones(B, bool)

    def total_loss(new_logp):
        return loss_fns[None](new_logp, old_logp, adv, values, old_values, returns, mask)[0]

    grad = np.asarray(jax.grad(total_loss)(logp))
    expected = np.zeros(B)
    for i in range(B):
        r = math.exp(logp[i] - old_logp[i])
        # The min picks the clipped (constant) term when the ratio has left the trust region in the
        # direction the advantage favours; d(r * A)/d(logp) = r * A otherwise.
        clipped_and_chosen = (adv[i] > 0 and r > 1.1) or (adv[i] < 0 and r < 0.9)
        expected[i] = 0.0 if clipped_and_chosen else -r * adv[i] / B
    assert 0 < np.count_nonzero(expected) < B  # both cases occur
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clip_eps": -0.1}, r"clip_eps=-0.1 is out of range"),
        ({"value_clip_eps": -1.0}, r"value_clip_eps=-1.0 is out of range"),
        ({"ratio_guard": 0.5}, r"ratio_guard=0.5 is out of range"),
    ],
)
def test_ppo_loss_rejects_bad_config(kwargs, message):
    batch = random_minibatch(6)
    with pytest.raises(ValueError, match=message):
        ppo_loss(*batch, **kwargs)


def token_ppo_reference(
    token_logp, old_token_logp, weights, adv, values, old_values, returns, clip
):
    """Per token, in plain Python: each token's own clipped surrogate, a weighted token mean."""
    num = den = 0.0
    kls, clipped, ratios = [], [], []
    for b in range(token_logp.shape[0]):
        for t in range(token_logp.shape[1]):
            w = float(weights[b, t])
            if w <= 0:
                continue
            r = math.exp(token_logp[b, t] - old_token_logp[b, t])
            surr = min(r * adv[b], min(max(r, 1 - clip), 1 + clip) * adv[b])
            num, den = num + w * surr, den + w
            kls.append((r - 1) - math.log(r))
            clipped.append(abs(r - 1) > clip)
            ratios.append(r)
    value_terms = []
    for b in range(len(values)):
        v_clipped = old_values[b] + min(max(values[b] - old_values[b], -clip), clip)
        value_terms.append(max((values[b] - returns[b]) ** 2, (v_clipped - returns[b]) ** 2))
    value_loss = 0.5 * sum(value_terms) / len(values)
    return {
        "policy_loss": -num / den,
        "value_loss": value_loss,
        "loss": -num / den + 0.5 * value_loss,
        "approx_kl": sum(kls) / len(kls),
        "clip_fraction": sum(clipped) / len(clipped),
        "ratio_max": max(ratios),
    }


def token_minibatch(seed, length=12):
    rng = np.random.default_rng(seed)
    old = -rng.exponential(1.0, size=(B, length)).astype(np.float32)
    new = old + rng.normal(scale=0.15, size=(B, length)).astype(np.float32)
    # lambda 0.5 on the first tokens (thoughts), 1 on the next (action), 0 on right padding
    lengths = rng.integers(3, length + 1, size=B)
    thought = rng.integers(1, 3, size=B)
    cols = np.arange(length)[None]
    weights = np.where(cols < lengths[:, None] - thought[:, None], 0.5, 1.0)
    weights = np.where(cols < lengths[:, None], weights, 0.0).astype(np.float32)
    _, _, adv, values, old_values, returns = random_minibatch(seed)
    return new, old, weights, adv, values, old_values, returns


@pytest.mark.parametrize("seed", range(4))
def test_token_ppo_loss_matches_a_per_token_transcription(seed):
    args = token_minibatch(seed)
    loss, metrics = jax.jit(partial(token_ppo_loss, clip_eps=0.1, value_clip_eps=0.1))(*args)
    expected = token_ppo_reference(*args, clip=0.1)
    assert 0 < expected["clip_fraction"] < 1  # both branches of the clip are exercised
    for name, value in expected.items():
        np.testing.assert_allclose(metrics[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(loss, expected["loss"], rtol=1e-5, atol=1e-6)


def test_token_ppo_gradient_at_ratio_one_is_the_sequence_gradient_over_the_weight():
    """At ratio 1 the token form's policy gradient is the sequence form's (lambda-weighted sum)
    scaled by B / sum(weights): the same direction, a per-token trust region after it."""
    new, _, weights, adv, values, old_values, returns = token_minibatch(7)
    thought = (weights == 0.5).astype(np.float32)
    action = (weights == 1.0).astype(np.float32)

    def token_form(logp):
        loss, _ = token_ppo_loss(logp, new, weights, adv, values, old_values, returns, value_coef=0)
        return loss

    def sequence_form(logp):
        seq = lambda_logprob(logp, thought, action, 0.5)
        old = lambda_logprob(new, thought, action, 0.5)
        loss, _ = ppo_loss(seq, old, adv, values, old_values, returns, value_coef=0)
        return loss

    scale = B / weights.sum()
    np.testing.assert_allclose(
        jax.grad(token_form)(new), scale * jax.grad(sequence_form)(new), rtol=1e-5, atol=1e-7
    )


def test_token_ppo_clips_each_token_on_its_own():
    """One token pushed past the clip stops pulling; its neighbour in the same reply still pulls
    (the sequence ratio of the two would be clipped as a whole)."""
    old = np.zeros((1, 2), np.float32)
    new = np.array([[0.5, 0.0]], np.float32)  # token 0 moved by e^0.5 - 1 > 0.1, token 1 not
    weights = np.ones((1, 2), np.float32)
    adv, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
    grad = jax.grad(lambda lp: token_ppo_loss(lp, old, weights, adv, zero, zero, zero)[0])(new)
    assert grad[0, 0] == 0 and grad[0, 1] < 0
    seq = jax.grad(lambda lp: ppo_loss(lp.sum(1), old.sum(1), adv, zero, zero, zero)[0])(new)
    np.testing.assert_array_equal(seq, 0.0)
