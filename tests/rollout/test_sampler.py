"""The sampler on a small random Qwen2.5-VL checkpoint: its log-probs and choices against the full
(uncached) forward over prompt + reply, per-row EOS stopping, determinism, no recompilation, and
constrained action decoding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gtr_turbo_jax.models import from_pretrained, get_config
from gtr_turbo_jax.models.config import TextConfig, VisionConfig
from gtr_turbo_jax.models.random_checkpoint import write_random_checkpoint
from gtr_turbo_jax.rl.logprob import token_logprobs
from gtr_turbo_jax.rollout.constraint import make_action_constraint
from gtr_turbo_jax.rollout.sampler import (
    SamplingConfig,
    sample,
    sample_decode,
    sample_prefill,
)
from gtr_turbo_jax.text.tokenizer import load_tokenizer, tiny_tokenizer_path

CONFIG = get_config("tiny").replace(
    text=TextConfig(
        vocab_size=1024,  # the shipped tiny tokenizer's
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=10000.0,
        mrope_section=(2, 3, 3),
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
    ),
    vision=VisionConfig(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        window_size=56,
        fullatt_block_indexes=(1,),
    ),
)
GRID = (1, 4, 4)  # 16 patches -> 4 image tokens per row
PAD, EOS = 0, 2
MAX_NEW = 8
SAMPLING = SamplingConfig(
    max_new_tokens=MAX_NEW, temperature=0.7, top_k=20, repetition_penalty=1.3, eos_ids=(EOS,)
)
GREEDY = SamplingConfig(max_new_tokens=MAX_NEW, greedy=True, temperature=0.7)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return from_pretrained(write_random_checkpoint(tmp_path_factory.mktemp("sampler"), CONFIG, 3))


def make_prompts(seed: int) -> dict[str, np.ndarray]:
    """Three left-padded prompts of different lengths, one image each."""
    rng = np.random.default_rng(seed)
    image = [CONFIG.vision_start_token_id] + [CONFIG.image_token_id] * 4
    image += [CONFIG.vision_end_token_id]
    rows = [[1, *image, *rng.integers(8, 1024, n)] for n in (6, 2, 4)]
    length = max(map(len, rows))
    ids = np.full((len(rows), length), PAD, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :] = row
        mask[i, length - len(row) :] = 1
    patches = rng.standard_normal((len(rows), 16, CONFIG.vision.patch_dim)).astype(np.float32)
    return dict(ids=ids, mask=mask, patches=patches)


@pytest.fixture(scope="module")
def prompts():
    return make_prompts(0)


@pytest.fixture(scope="module")
def split(model):
    return nnx.split(model)


@pytest.fixture(scope="module")
def full_logits(split):
    """The uncached forward over prompt + reply: logits at the positions that predict the reply."""
    graphdef, params = split

    @jax.jit
    def forward(params, ids, mask, patches):
        model = nnx.merge(graphdef, params)
        return model.forward(ids, mask, image_patches=patches, image_grid_thw=GRID).logits

    def reply_logits(prompts, out):
        ids = np.concatenate([prompts["ids"], np.asarray(out.tokens)], axis=1)
        mask = np.concatenate([prompts["mask"], np.asarray(out.mask, np.int32)], axis=1)
        logits = forward(params, ids, mask, prompts["patches"])
        length = prompts["ids"].shape[1]
        return np.asarray(logits[:, length - 1 : -1])

    return reply_logits


def run(split, prompts, key, config, **kwargs):
    graphdef, params = split
    return sample(
        graphdef,
        params,
        prompts["ids"],
        prompts["mask"],
        prompts["patches"],
        key,
        config,
        GRID,
        **kwargs,
    )


@pytest.fixture(scope="module")
def sampled(split, prompts):
    return run(split, prompts, jax.random.key(0), SAMPLING)


@pytest.fixture(scope="module")
def greedy(split, prompts):
    return run(split, prompts, jax.random.key(0), GREEDY)


def np_processed_logp(logits, prompts, tokens, config):
    """Numpy: HF's penalty over prompt + reply so far, temperature, top-k; log-softmax."""
    out = np.zeros(tokens.shape, np.float32)
    for b in range(tokens.shape[0]):
        history = list(prompts["ids"][b][prompts["mask"][b] > 0])
        for i in range(tokens.shape[1]):
            scores = logits[b, i].astype(np.float64).copy()
            seen = np.unique(history)
            scores[seen] = np.where(
                scores[seen] < 0,
                scores[seen] * config.repetition_penalty,
                scores[seen] / config.repetition_penalty,
            )
            scores /= config.temperature
            kth = np.sort(scores)[-config.top_k]
            scores[scores < kth] = -np.inf
            scores -= scores.max()
            out[b, i] = scores[tokens[b, i]] - np.log(np.exp(scores).sum())
            history.append(tokens[b, i])
    return out


def test_logp_raw_equals_full_forward_token_logprobs(sampled, prompts, full_logits):
    mask = np.asarray(sampled.mask)
    logits = full_logits(prompts, sampled)
    expected = token_logprobs(jnp.asarray(logits), sampled.tokens, SAMPLING.temperature)
    np.testing.assert_allclose(
        np.where(mask, np.asarray(sampled.logp_raw), 0.0),
        np.where(mask, np.asarray(expected), 0.0),
        atol=2e-4,
    )
    # The processed log-probs: numpy transcription of penalty -> temperature -> top-k.
    expected_processed = np_processed_logp(logits, prompts, np.asarray(sampled.tokens), SAMPLING)
    np.testing.assert_allclose(
        np.where(mask, np.asarray(sampled.logp), 0.0),
        np.where(mask, expected_processed, 0.0),
        atol=2e-4,
    )
    assert np.isfinite(np.asarray(sampled.logp)).all()


def test_logp_unit_and_entropy_equal_the_full_forwards_at_temperature_one(
    sampled, prompts, full_logits
):
    """What the update reads instead of re-scoring: numpy log-softmax of the full forward."""
    mask = np.asarray(sampled.mask)
    logits = np.asarray(full_logits(prompts, sampled), np.float64)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    tokens = np.asarray(sampled.tokens)
    chosen = np.take_along_axis(log_p, tokens[..., None], -1)[..., 0]
    entropy = -(np.exp(log_p) * log_p).sum(-1)
    for got, want in ((sampled.logp_unit, chosen), (sampled.entropy, entropy)):
        got = np.asarray(got)
        np.testing.assert_allclose(got[mask], want[mask], atol=2e-4)
        assert np.all(got[~mask] == 0)
    # At temperature 0.7 the two log-probs differ: the test tells them apart.
    assert np.abs(np.asarray(sampled.logp_raw) - np.asarray(sampled.logp_unit))[mask].max() > 0.01
    assert entropy[mask].min() > 0.1


def test_output_layout_after_eos(sampled):
    tokens, mask = np.asarray(sampled.tokens), np.asarray(sampled.mask)
    for row_tokens, row_mask, length in zip(tokens, mask, np.asarray(sampled.lengths)):
        eos = np.flatnonzero(row_tokens[row_mask] == EOS)
        expected = eos[0] + 1 if len(eos) else MAX_NEW
        assert length == expected and row_mask[:length].all() and not row_mask[length:].any()
        assert (row_tokens[length:] == PAD).all()
    assert np.all(np.asarray(sampled.logp)[~mask] == 0) and np.all(
        np.asarray(sampled.logp_raw)[~mask] == 0
    )


def test_greedy_equals_argmax_of_the_full_forward(greedy, prompts, full_logits):
    assert np.asarray(greedy.mask).all()  # no EOS ids configured: full budget
    logits = full_logits(prompts, greedy)
    np.testing.assert_array_equal(np.asarray(greedy.tokens), logits.argmax(-1))
    expected = token_logprobs(jnp.asarray(logits), greedy.tokens, GREEDY.temperature)
    np.testing.assert_allclose(np.asarray(greedy.logp_raw), np.asarray(expected), atol=2e-4)


def test_top_k_one_equals_greedy_and_rows_stop_at_their_eos(split, prompts, greedy):
    """top-k 1 draws the argmax; with an EOS id that greedy writes at step 2 of row 0 only, row 0
    stops there (EOS included, padding after) while the other rows run to the budget."""
    greedy_tokens = np.asarray(greedy.tokens)
    eos = int(greedy_tokens[0, 2])
    others = [i for i in range(1, 3) if eos in greedy_tokens[i]]
    assert eos not in greedy_tokens[0, :2] and not others, "pick another seed for this test"
    config = SamplingConfig(max_new_tokens=MAX_NEW, top_k=1, temperature=0.7, eos_ids=(99999, eos))
    out = run(split, prompts, jax.random.key(5), config)
    expected_mask = np.ones((3, MAX_NEW), bool)
    expected_mask[0, 3:] = False
    np.testing.assert_array_equal(np.asarray(out.mask), expected_mask)
    np.testing.assert_array_equal(np.asarray(out.lengths), [3, MAX_NEW, MAX_NEW])
    np.testing.assert_array_equal(
        np.asarray(out.tokens), np.where(expected_mask, greedy_tokens, PAD)
    )
    np.testing.assert_allclose(
        np.asarray(out.logp_raw), np.where(expected_mask, greedy.logp_raw, 0.0), atol=1e-5
    )
    np.testing.assert_array_equal(np.asarray(out.logp)[expected_mask], 0.0)  # one token kept


def test_same_key_same_tokens_other_key_other_tokens(split, prompts, sampled):
    again = run(split, prompts, jax.random.key(0), SAMPLING)
    np.testing.assert_array_equal(np.asarray(again.tokens), np.asarray(sampled.tokens))
    other = run(split, prompts, jax.random.key(1), SAMPLING)
    assert (np.asarray(other.tokens) != np.asarray(sampled.tokens)).any()


def test_no_recompilation_for_new_prompts_keys_and_params(split, sampled):
    graphdef, params = split
    inputs = [make_prompts(seed) for seed in (1, 2)]
    keys = [jax.random.key(seed) for seed in (7, 8)]
    new_params = jax.tree.map(lambda x: x * 1.01, params)
    jax.block_until_ready((keys, new_params))
    events: list[str] = []
    listener = lambda event, duration, **_: events.append(event)  # noqa: E731
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for prompts, key, p in zip(inputs, keys, (params, new_params)):
            jax.block_until_ready(run((graphdef, p), prompts, key, SAMPLING))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    compiles = [e for e in events if e.endswith(("backend_compile_duration", "trace_duration"))]
    assert compiles == []


@pytest.mark.slow
def test_split_prefill_and_donated_decode_equal_one_call(split, prompts, sampled):
    graphdef, params = split
    prefilled = sample_prefill(
        graphdef, params, prompts["ids"], prompts["mask"], prompts["patches"], SAMPLING, GRID
    )
    cache = prefilled.cache
    out, final = sample_decode(graphdef, params, prefilled, jax.random.key(0), SAMPLING)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(sampled.tokens))
    np.testing.assert_allclose(np.asarray(out.logp_raw), np.asarray(sampled.logp_raw), atol=1e-5)
    assert all(keys.is_deleted() for keys in cache.keys)  # donated: the loop wrote into these
    assert int(final.cache.index) == prompts["ids"].shape[1] + int(out.lengths.max()) - 1


@pytest.mark.slow
def test_constrained_decoding_writes_only_legal_actions(split, prompts):
    """An empty trigger constrains the reply's start: every row must begin `<legal name>"`."""
    tokenizer = load_tokenizer(tiny_tokenizer_path())
    actions = ("Up", "Down", "Left", "Right")
    constraint = make_action_constraint(
        tokenizer, actions, vocab_size=CONFIG.text.vocab_size, trigger=""
    )
    config = SamplingConfig(max_new_tokens=MAX_NEW, temperature=2.0, eos_ids=(EOS,))
    texts = []
    for seed in range(3):
        out = run(split, prompts, jax.random.key(seed), config, constraint=constraint)
        for tokens, mask in zip(np.asarray(out.tokens), np.asarray(out.mask)):
            texts.append(tokenizer.decode(tokens[mask].tolist()))
    assert all(any(t.startswith(a + '"') for a in actions) for t in texts), texts
    assert len({t.split('"')[0] for t in texts}) > 1  # not one forced string
