"""The compiled update step on a model smaller than `tiny`: one compilation per run (merge and
no-merge updates alike), bitwise determinism, the KL metric against an independent computation, the
KL pulling thoughts (not actions) toward the teacher, PPO raising rewarded replies, NaN reporting,
and clear errors for bad shapes and configuration values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _train_cases import (
    ENVS,
    KL_CONFIG,
    MODEL_CONFIG,
    PPO_CONFIG,
    REPLY_LEN,
    THOUGHT_LEN,
    TURNS,
    build_state,
    make_batch,
    make_scorer,
    reply_logp,
)
from flax import nnx

from gtr_turbo_jax.models import LoRAConfig
from gtr_turbo_jax.models.random_checkpoint import write_random_checkpoint
from gtr_turbo_jax.train.config import UpdateConfig, learning_rate_at
from gtr_turbo_jax.train.scoring import score_replies
from gtr_turbo_jax.train.update import update_step

SAMPLES = TURNS * ENVS
# Tests that plant a random adapter set as the teacher: the factored merge space holds adapters.
FACTORED = KL_CONFIG.replace(merge_space="factored")


def to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("update") / "ckpt", MODEL_CONFIG, 7)


@pytest.fixture(scope="module")
def scorer():
    return make_scorer()


def run_updates(checkpoint, seed: int, num_updates: int = 3):
    """`num_updates` turbo_kl updates on fixed batches; params, metrics, cache sizes, teachers."""
    defs, state = build_state(checkpoint, KL_CONFIG, seed)
    metrics, cache_sizes, teachers = [], [], [to_numpy(state.teacher)]
    for step in range(num_updates):
        state, step_metrics = update_step(state, make_batch(step), defs, KL_CONFIG)
        metrics.append({k: float(v) for k, v in step_metrics.items()})
        cache_sizes.append(update_step._cache_size())
        teachers.append(to_numpy(state.teacher))
    params = to_numpy((state.policy, state.value_head, state.teacher, state.opt_state))
    return dict(params=params, metrics=metrics, cache_sizes=cache_sizes, teachers=teachers)


@pytest.fixture(scope="module")
def runs(checkpoint):
    return [run_updates(checkpoint, seed) for seed in (0, 0, 1)]


def test_compiles_once_across_merge_and_no_merge_updates(runs):
    run = runs[0]
    assert [m["merged"] for m in run["metrics"]] == [0.0, 1.0, 0.0]
    assert len(set(run["cache_sizes"] + runs[1]["cache_sizes"] + runs[2]["cache_sizes"])) == 1
    # The teacher moves only on the merge update.
    changed = [
        not all(jax.tree.leaves(jax.tree.map(np.array_equal, before, after)))
        for before, after in zip(run["teachers"][:-1], run["teachers"][1:])
    ]
    assert changed == [False, True, False]
    for metrics in run["metrics"]:
        assert metrics["finite"] == 1.0
        assert all(np.isfinite(list(metrics.values())))
    # Cosine learning rate, constant within an update, decaying over updates.
    rates = [m["learning_rate"] for m in run["metrics"]]
    expected = [1e-9 + (1e-3 - 1e-9) * 0.5 * (1 + np.cos(np.pi * k / 25)) for k in range(3)]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)


def test_same_seed_gives_bitwise_identical_params(runs):
    same = jax.tree.map(np.array_equal, runs[0]["params"], runs[1]["params"])
    assert all(jax.tree.leaves(same))
    assert runs[0]["metrics"] == runs[1]["metrics"]
    # And the comparison can fail: another seed gives other params.
    other = jax.tree.map(np.array_equal, runs[0]["params"][0], runs[2]["params"][0])
    assert not all(jax.tree.leaves(other))


def _random_teacher(state, seed: int):
    keys = iter(jax.random.split(jax.random.key(seed), 1000))
    return jax.tree.map(lambda x: x + 0.3 * jax.random.normal(next(keys), x.shape), state.teacher)


def _thought_teacher_batch(defs, state, teacher, scorer):
    """Zero rewards; env 0's thoughts are the teacher's greedy tokens, env 1's its least likely."""
    batch = make_batch(0, reward=np.zeros((TURNS, ENVS), np.float32))
    ids = np.array(batch.response_ids)
    for position in range(THOUGHT_LEN):
        logits = scorer(
            defs.model, state.base, teacher, batch.replace(response_ids=jnp.asarray(ids))
        )
        logits = np.asarray(logits).reshape(TURNS, ENVS, REPLY_LEN, -1)[:, :, position]
        ids[:, 0, position] = logits[:, 0].argmax(-1)
        ids[:, 1, position] = logits[:, 1].argmin(-1)
    return batch.replace(response_ids=jnp.asarray(ids))


def _clipped_k1_means(scorer, defs, state, teacher, batch):
    """Independent transcription of the clipped-k1 estimate, over thought and over action tokens."""
    policy = reply_logp(scorer(defs.model, state.base, state.policy, batch), batch)
    reference = reply_logp(scorer(defs.model, state.base, teacher, batch), batch)
    k1 = np.clip(policy - reference, 0.0, 10.0)
    means = []
    for mask in (batch.thought_mask, batch.action_mask):
        mask = np.asarray(mask).reshape(SAMPLES, REPLY_LEN)
        means.append((k1 * mask).sum(1) / mask.sum(1))
    return means


def test_kl_pulls_thoughts_toward_the_teacher_and_ignores_the_action(checkpoint, scorer):
    defs, state = build_state(checkpoint, FACTORED, seed=3)
    teacher = _random_teacher(state, seed=5)
    state = state.replace(teacher=jax.tree.map(jnp.array, teacher))
    batch = _thought_teacher_batch(defs, state, teacher, scorer)
    thought_before, action_before = _clipped_k1_means(scorer, defs, state, teacher, batch)
    assert thought_before[1::2].min() > 1.0 and thought_before[0::2].max() == 0.0

    # Other action tokens (the teacher judges them differently) leave the step's KL unchanged.
    other_actions = np.array(batch.response_ids)
    other_actions[..., THOUGHT_LEN : REPLY_LEN - 1] += 1
    other_batch = batch.replace(response_ids=jnp.asarray(other_actions))
    _, other_action_kl = _clipped_k1_means(scorer, defs, state, teacher, other_batch)
    assert np.abs(other_action_kl - action_before).max() > 0.1
    other_defs, other_state = build_state(checkpoint, FACTORED, seed=3)
    other_state = other_state.replace(teacher=jax.tree.map(jnp.array, teacher))
    _, other_metrics = update_step(other_state, other_batch, other_defs, FACTORED)

    state, metrics = update_step(state, batch, defs, FACTORED)
    # The step's KL is the clipped k1 over thought tokens at temperature 1, per reply.
    np.testing.assert_allclose(metrics["kl_mean"], thought_before.mean(), rtol=1e-4)
    np.testing.assert_allclose(metrics["kl_max"], thought_before.max(), rtol=1e-4)
    assert other_metrics["kl_mean"] == metrics["kl_mean"]
    state, metrics = update_step(state, batch, defs, FACTORED)
    assert metrics["finite"] == 1.0

    # The replies whose thoughts the teacher dislikes lose probability: their KL falls.
    thought_after, _ = _clipped_k1_means(scorer, defs, state, teacher, batch)
    assert thought_after.mean() < 0.96 * thought_before.mean()
    assert np.all(thought_after[1::2] < thought_before[1::2])


def _with_sampler_numbers(batch, defs, state, temperature: float):
    """The batch as the rollout hands it over: the policy's own per-token log-probs (at the PPO
    temperature and at 1), entropies and values, computed here with numpy from a full forward."""
    rows = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batch)
    scores = score_replies(
        defs.model, state.base, state.policy, rows.prompt_ids, rows.prompt_mask,
        rows.image_patches, rows.response_ids, rows.response_mask, batch.image_grid_thw,
    )  # fmt: skip
    value = nnx.merge(defs.value_head, state.value_head)(scores.prompt_hidden)
    logits = np.asarray(scores.logits, np.float64)
    numbers = {}
    for name, scale in (("sampler_logp", temperature), ("sampler_logp_unit", 1.0)):
        numbers[name] = reply_logp(logits / scale, batch)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    numbers["sampler_entropy"] = -(np.exp(log_p) * log_p).sum(-1)
    shaped = {k: jnp.asarray(v.reshape(TURNS, ENVS, -1), jnp.float32) for k, v in numbers.items()}
    return batch.replace(**shaped, value=jnp.asarray(value).reshape(TURNS, ENVS))


def test_the_rollouts_numbers_replace_the_rescoring_forward(checkpoint):
    """The default (`rescore=False`) reads the sampler's log-probs, entropies and values: given
    the policy's own, the update is the re-scoring one's (to float rounding), KL to a teacher
    that differs included; given other numbers (zeros) it is another update."""
    config = KL_CONFIG.replace(temperature=0.7)
    defs, state = build_state(checkpoint, config, seed=3)
    teacher = _random_teacher(state, seed=5)
    batch = _with_sampler_numbers(make_batch(2), defs, state, config.temperature)
    results = {}
    for name, rescore, rows in (
        ("rescored", True, batch),
        ("sampler", False, batch),
        ("zeros", False, make_batch(2)),
    ):
        defs, state = build_state(checkpoint, config, seed=3)
        state = state.replace(teacher=jax.tree.map(jnp.array, teacher))
        state, metrics = update_step(state, rows, defs, config.replace(rescore=rescore))
        params = np.concatenate([np.ravel(x) for x in jax.tree.leaves(to_numpy(state.policy))])
        results[name] = (params, {k: float(v) for k, v in metrics.items()})
    (rescored, rescored_metrics), (sampler, sampler_metrics) = (
        results["rescored"],
        results["sampler"],
    )
    assert rescored_metrics["kl_mean"] > 0.1 and rescored_metrics["sampler_logp_gap"] < 1e-4
    np.testing.assert_allclose(sampler, rescored, rtol=1e-4, atol=1e-6)
    for key, value in rescored_metrics.items():
        if key != "sampler_logp_gap":
            np.testing.assert_allclose(sampler_metrics[key], value, rtol=1e-3, atol=1e-5)
    assert np.abs(results["zeros"][0] - rescored).max() > 100 * np.abs(sampler - rescored).max()


@pytest.mark.parametrize("ratio_level", ["sequence", "token"])
def test_ppo_raises_the_log_prob_of_rewarded_replies(checkpoint, scorer, ratio_level):
    config = PPO_CONFIG.replace(ratio_level=ratio_level)
    defs, state = build_state(checkpoint, config, seed=4)
    reward = np.array([[0.0, 0.0], [1.0, -1.0]], np.float32)  # the second turn ends both episodes
    batch = make_batch(1, reward=reward)
    weights = np.where(np.asarray(batch.thought_mask).reshape(SAMPLES, -1), 0.5, 0.0)
    weights += np.asarray(batch.action_mask).reshape(SAMPLES, -1)  # lambda-weighted reply log-prob
    before = (reply_logp(scorer(defs.model, state.base, state.policy, batch), batch) * weights).sum(
        1
    )
    for _ in range(2):
        state, metrics = update_step(state, batch, defs, config)
        assert metrics["finite"] == 1.0 and metrics["kl_mean"] == 0.0
    after = (reply_logp(scorer(defs.model, state.base, state.policy, batch), batch) * weights).sum(
        1
    )
    rewarded, punished = 2 * ENVS - 2, 2 * ENVS - 1  # samples (turn 1, env 0) and (turn 1, env 1)
    assert after[rewarded] > before[rewarded] + 0.05
    assert after[punished] < before[punished] - 0.05


def test_the_first_ratio_is_exactly_one_under_lora_dropout(checkpoint):
    """Old log-probs are taken without dropout, so the PPO forward runs without it too: before
    the first optimizer step every ratio is 1 (to float rounding: no clipping, approx_kl ~0),
    dropout or not (with dropout in the PPO forward, 0.5 read approx_kl ~1.2)."""
    config = PPO_CONFIG.replace(ppo_epochs=1, minibatch_size=SAMPLES, grad_accum_steps=1)
    for dropout in (0.0, 0.5):
        lora = LoRAConfig(rank=4, alpha=8.0, dropout=dropout)
        defs, state = build_state(checkpoint, config, seed=4, lora=lora)
        # Trained-looking adapters: with b = 0 (the initialisation) dropout changes nothing.
        state = state.replace(policy=_random_teacher(state.replace(teacher=state.policy), 6))
        _, metrics = update_step(state, make_batch(1), defs, config)
        assert metrics["finite"] == 1.0
        assert float(metrics["approx_kl"]) < 1e-9 and float(metrics["clip_fraction"]) == 0.0


# an option off by default (~12 s)
@pytest.mark.slow
def test_value_lr_scale_sets_the_critics_step_alone(checkpoint):
    """One optimizer step: 0 freezes the value head and leaves the policy's step as it was; 10
    moves the head 10x as far."""
    batch = make_batch(1)
    moved = {}
    for scale in (1.0, 0.0, 10.0):
        config = PPO_CONFIG.replace(
            value_lr_scale=scale, ppo_epochs=1, minibatch_size=SAMPLES, grad_accum_steps=1
        )
        defs, state = build_state(checkpoint, config, seed=4)
        before = to_numpy((state.policy, state.value_head))
        state, _ = update_step(state, batch, defs, config)
        after = to_numpy((state.policy, state.value_head))
        moved[scale] = [
            np.concatenate([np.ravel(b - a) for a, b in zip(*map(jax.tree.leaves, pair))])
            for pair in zip(before, after)
        ]
    assert np.abs(moved[1.0][1]).max() > 0 and np.abs(moved[0.0][1]).max() == 0
    np.testing.assert_array_equal(moved[0.0][0], moved[1.0][0])  # the policy's step is unchanged
    np.testing.assert_allclose(moved[10.0][1], 10 * moved[1.0][1], rtol=1e-4, atol=1e-9)


# an option off by default (~20 s)
@pytest.mark.slow
def test_value_loss_without_backbone_grad_leaves_the_policy_step_alone(checkpoint):
    """`value_backbone_grad=False`: the policy's step is the one without any value loss, while
    the head still learns; with the gradient (the paper) the value loss moves the policy too."""
    batch = make_batch(1)
    # One optimizer step, no global-norm clip (the value head's gradient would enter its norm).
    one_step = dict(ppo_epochs=1, minibatch_size=SAMPLES, grad_accum_steps=1, grad_clip=1e9)
    steps = {}
    for name, changes in {
        "no_value_loss": dict(value_coef=0.0),
        "detached": dict(value_coef=5.0, value_backbone_grad=False),
        "shared": dict(value_coef=5.0),
    }.items():
        config = PPO_CONFIG.replace(**one_step, **changes)
        defs, state = build_state(checkpoint, config, seed=4)
        before = to_numpy((state.policy, state.value_head))
        state, _ = update_step(state, batch, defs, config)
        steps[name] = jax.tree.map(np.subtract, to_numpy((state.policy, state.value_head)), before)
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
    policy_step = flat(steps["no_value_loss"][0])
    np.testing.assert_allclose(flat(steps["detached"][0]), policy_step, rtol=1e-5, atol=1e-9)
    assert np.abs(flat(steps["detached"][1])).max() > 0
    assert np.abs(flat(steps["shared"][0]) - policy_step).max() > 0.1 * np.abs(policy_step).max()


def test_nan_reward_is_reported_and_the_update_skipped(checkpoint):
    defs, state = build_state(checkpoint, KL_CONFIG, seed=0)
    policy_before = to_numpy(state.policy)
    reward = np.zeros((TURNS, ENVS), np.float32)
    reward[0, 1] = np.nan
    state, metrics = update_step(state, make_batch(0, reward=reward), defs, KL_CONFIG)
    assert metrics["finite"] == 0.0
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, policy_before, to_numpy(state.policy))))
    assert int(state.update_count) == 1


def test_incompatible_batch_is_one_clear_error(checkpoint):
    defs, state = build_state(checkpoint, KL_CONFIG, seed=0)
    batch = make_batch(0)
    bad = batch.replace(response_mask=batch.response_mask[..., :-1])
    with pytest.raises(ValueError, match=r"Batch.response_mask has shape \(2, 2, 5\)"):
        update_step(state, bad, defs, KL_CONFIG)
    config = KL_CONFIG.replace(minibatch_size=3)
    with pytest.raises(ValueError, match="not a multiple of minibatch_size"):
        update_step(state, batch, defs, config)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gamma": 1.5}, r"UpdateConfig.gamma=1.5 is out of range: expected a value in \[0, 1\]"),
        ({"mode": "grpo"}, "UpdateConfig.mode='grpo' is not supported: expected one of ppo"),
        ({"minibatch_size": 0}, "UpdateConfig.minibatch_size=0 is out of range"),
        ({"merge_density": 0.0}, "UpdateConfig.merge_density=0.0 is out of range"),
        ({"clip_eps": float("nan")}, "UpdateConfig.clip_eps=nan is out of range"),
        ({"kl_estimator": "k2"}, "UpdateConfig.kl_estimator='k2' is not supported"),
        ({"ratio_level": "reply"}, "UpdateConfig.ratio_level='reply' is not supported"),
        ({"value_lr_scale": -1.0}, "UpdateConfig.value_lr_scale=-1.0 is out of range"),
        ({"final_learning_rate": 1.0}, "final_learning_rate=1.0 is out of range"),
        (
            {"warmup_updates": -1},
            r"UpdateConfig.warmup_updates=-1 is out of range: expected an int >= 0",
        ),
    ],
)
def test_config_rejects_out_of_range_values(changes, message):
    with pytest.raises(ValueError, match=message):
        UpdateConfig(**changes)


def test_warmup_scales_the_first_updates_of_the_cosine():
    """Hand-worked: lr 1e-3 -> 0 over 4 updates, 2 warmup updates: update 0 runs at half of the
    cosine's 1e-3, update 1 at the cosine's full 0.5 * (1 + cos(pi / 4)) * 1e-3; then the cosine."""
    config = UpdateConfig(learning_rate=1e-3, final_learning_rate=0.0, lr_decay_updates=4)
    rates = [
        float(learning_rate_at(config.replace(warmup_updates=2), jnp.int32(u))) for u in range(5)
    ]
    cosine = [0.5 * (1 + np.cos(np.pi * u / 4)) * 1e-3 for u in range(5)]
    np.testing.assert_allclose(rates, [0.5 * cosine[0], *cosine[1:]], rtol=1e-6, atol=1e-12)
    no_warmup = [float(learning_rate_at(config, jnp.int32(u))) for u in range(5)]
    np.testing.assert_allclose(no_warmup, cosine, rtol=1e-6, atol=1e-12)


# an option off by default (~20 s)
@pytest.mark.slow
def test_forward_kl_is_the_full_vocabulary_sum_under_the_teacher(checkpoint, scorer):
    """`kl_estimator="forward"`: KL(teacher || agent) over the vocabulary on the thought tokens,
    from the policy's own forward (the rollout records only the sampled tokens' log-probs),
    written out in numpy; the sampled-token k1 of the same pair differs."""
    config = FACTORED.replace(rescore=False, kl_estimator="forward")  # an adapter teacher
    defs, state = build_state(checkpoint, config, seed=3)
    teacher = _random_teacher(state, seed=5)
    batch = _with_sampler_numbers(make_batch(2), defs, state, config.temperature)
    agent = np.asarray(scorer(defs.model, state.base, state.policy, batch), np.float64)
    ref = np.asarray(scorer(defs.model, state.base, teacher, batch), np.float64)
    log_softmax = lambda x: (
        x
        - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - x.max(-1, keepdims=True)
    )
    a, t = log_softmax(agent), log_softmax(ref)
    per_token = (np.exp(t) * (t - a)).sum(-1)
    thought = np.asarray(batch.thought_mask).reshape(per_token.shape)
    want = (per_token * thought).sum(1) / thought.sum(1)
    means = {}
    for estimator in ("forward", "k1"):
        defs, state = build_state(checkpoint, config, seed=3)
        state = state.replace(teacher=jax.tree.map(jnp.array, teacher))
        _, metrics = update_step(state, batch, defs, config.replace(kl_estimator=estimator))
        means[estimator] = float(metrics["kl_mean"])
    np.testing.assert_allclose(means["forward"], want.mean(), rtol=1e-4)
    assert abs(means["k1"] - means["forward"]) > 1e-3 * means["forward"]


def test_the_initial_teacher_is_never_re_merged(checkpoint, runs):
    """`teacher_source="initial"` (the paper's static teacher): the merge update leaves the
    teacher at the starting model, where the default (`runs`) moved it."""
    config = KL_CONFIG.replace(teacher_source="initial")
    defs, state = build_state(checkpoint, config, seed=0)
    start = to_numpy(state.teacher)
    for step in range(2):  # update 2 is a merge update under merge_interval=2
        state, metrics = update_step(state, make_batch(step), defs, config)
        assert metrics["merged"] == 0.0
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, start, to_numpy(state.teacher))))
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, start, runs[0]["teachers"][2])))
