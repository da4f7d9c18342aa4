"""Logits processors against numpy transcriptions of transformers' rules, and the action
constraint automaton against a plain-Python reference of what a legal reply is."""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
import pytest
from support.automaton import feed

from gtr_turbo_jax.rollout import logits_processors as lp
from gtr_turbo_jax.rollout.constraint import (
    ACTION_TRIGGER,
    byte_automaton,
    make_action_constraint,
    token_automaton,
)
from gtr_turbo_jax.rollout.sampler import SamplingConfig, process_logits
from gtr_turbo_jax.text.tokenizer import load_tokenizer, tiny_tokenizer_path

# --- numpy transcriptions of transformers' RepetitionPenalty / TopK / TopP processors -------------


def np_repetition_penalty(scores: np.ndarray, input_ids: list[list[int]], penalty: float):
    """HF: gather the scores of the ids in input_ids, penalize by sign, scatter back."""
    out = scores.copy()
    for row, ids in enumerate(input_ids):
        ids = np.asarray(ids, np.int64)
        picked = out[row, ids]
        out[row, ids] = np.where(picked < 0, picked * penalty, picked / penalty)
    return out


def np_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    kth = np.sort(scores, axis=-1)[:, -k][:, None]
    return np.where(scores < kth, -np.inf, scores)


def np_top_p(scores: np.ndarray, p: float) -> np.ndarray:
    """HF: ascending sort, remove where the cumulative probability is <= 1 - p, keep the last."""
    out = scores.copy()
    for row in range(scores.shape[0]):
        order = np.argsort(scores[row], kind="stable")
        sorted_scores = scores[row, order]
        probs = np.exp(sorted_scores - sorted_scores.max())
        probs /= probs.sum()
        remove = np.cumsum(probs) <= 1 - p
        remove[-1] = False
        out[row, order[remove]] = -np.inf
    return out


@pytest.fixture(scope="module")
def scores():
    rng = np.random.default_rng(0)
    return (2.0 * rng.standard_normal((4, 50))).astype(np.float32)


def test_repetition_penalty_matches_hf_rule(scores):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, scores.shape[1], (4, 12))
    mask = rng.random((4, 12)) < 0.7
    expected = np_repetition_penalty(scores, [i[m] for i, m in zip(ids, mask)], 1.3)
    seen = lp.seen_tokens(jnp.asarray(ids), jnp.asarray(mask), scores.shape[1])
    got = lp.repetition_penalty(jnp.asarray(scores), seen, 1.3)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6)
    # Penalized entries moved towards lower odds, others untouched.
    assert np.all(np.asarray(got) <= scores + 1e-7)


def test_mark_seen_adds_only_live_tokens():
    seen = lp.mark_seen(jnp.zeros((2, 5), bool), jnp.asarray([3, 1]), jnp.asarray([True, False]))
    np.testing.assert_array_equal(np.asarray(seen), [[0, 0, 0, 1, 0], [0, 0, 0, 0, 0]])


@pytest.mark.parametrize("k", [1, 3, 50])
def test_top_k_matches_hf(scores, k):
    np.testing.assert_array_equal(
        np.asarray(lp.top_k_filter(jnp.asarray(scores), k)), np_top_k(scores, k)
    )


def test_top_k_keeps_ties_at_the_threshold():
    scores = np.array([[1.0, 3.0, 2.0, 2.0, 0.0]], np.float32)
    got = np.asarray(lp.top_k_filter(jnp.asarray(scores), 2))
    np.testing.assert_array_equal(np.isfinite(got), [[False, True, True, True, False]])


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_matches_hf_and_keeps_smallest_set(scores, p):
    got = np.asarray(lp.top_p_filter(jnp.asarray(scores), p))
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(np_top_p(scores, p)))
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for row in range(scores.shape[0]):
        kept = np.isfinite(got[row])
        # The kept set holds >= p, and dropping its least likely member would fall below p.
        assert probs[row, kept].sum() >= p - 1e-6
        assert probs[row, kept].sum() - probs[row, kept].min() < p
        assert probs[row, kept].min() >= probs[row, ~kept].max(initial=0.0)


def test_process_logits_order_penalty_temperature_top_k_top_p(scores):
    config = SamplingConfig(
        max_new_tokens=1, temperature=0.5, top_k=10, top_p=0.8, repetition_penalty=1.2
    )
    ids = [[0, 1, 2, 7], [3], [4, 4], [49]]
    seen = np.zeros(scores.shape, bool)
    for row, row_ids in enumerate(ids):
        seen[row, row_ids] = True
    expected = np_top_p(np_top_k(np_repetition_penalty(scores, ids, 1.2) / 0.5, 10), 0.8)
    got = process_logits(jnp.asarray(scores), config, jnp.asarray(seen))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(max_new_tokens=0), "max_new_tokens=0"),
        (dict(temperature=0.0), "temperature=0.0"),
        (dict(top_k=-1), "top_k=-1"),
        (dict(top_p=1.5), "top_p=1.5"),
        (dict(repetition_penalty=0.0), "repetition_penalty=0.0"),
        (dict(eos_ids=[2]), "eos_ids=[2]"),
    ],
)
def test_sampling_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SamplingConfig(**{"max_new_tokens": 4, **changes})


# --- the action constraint ------------------------------------------------------------------------

ACTIONS = ("Up", "Down", "Left", "Right", "1", "10")


def reference_legal(text: str, actions=ACTIONS, trigger=ACTION_TRIGGER) -> bool:
    """A reply (possibly unfinished) is legal iff every value after a trigger is a prefix of, or
    a complete, `name"`; the scan restarts after each closed value."""
    rest = text
    while True:
        at = rest.find(trigger) if trigger else 0
        if at < 0:
            return True
        value = rest[at + len(trigger) :]
        closed = [a for a in actions if value.startswith(a + '"')]
        if closed:
            rest = value[len(closed[0]) + 1 :]
            if not trigger:
                return True
            continue
        return any((a + '"').startswith(value) for a in actions)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(tiny_tokenizer_path())


@pytest.mark.parametrize("trigger", [ACTION_TRIGGER, ""])
def test_token_automaton_accepts_exactly_the_legal_replies(tokenizer, trigger):
    """Random token sequences biased towards the trigger and the action names: the automaton
    rejects a sequence iff the reference says its text is illegal."""
    table = np.asarray(make_action_constraint(tokenizer, ACTIONS, trigger=trigger).next_state)
    pieces = ['{"thoughts": "go",', ' "action": "', "Up", "Do", "wn", '"}', "1", "0", "L", "x"]
    piece_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in pieces]
    rng = np.random.default_rng(0)
    verdicts = []
    for _ in range(400):
        tokens = [t for i in rng.integers(0, len(pieces), rng.integers(1, 7)) for t in piece_ids[i]]
        text = tokenizer.decode(tokens)
        legal = reference_legal(text, trigger=trigger)
        assert (feed(table, tokens) >= 0) == legal, (text, tokens)
        verdicts.append(legal)
    assert min(sum(verdicts), len(verdicts) - sum(verdicts)) >= 20  # both kinds were exercised


def test_token_automaton_masks_eos_only_inside_the_value(tokenizer):
    table = np.asarray(make_action_constraint(tokenizer, ACTIONS).next_state)
    eos = tokenizer.eos_token_id
    prefix = tokenizer('{"thoughts": "a", "action": "', add_special_tokens=False)["input_ids"]
    inside = feed(table, prefix)
    assert table[0, eos] == 0 and inside > 0 and table[inside, eos] == -1
    allowed = {tokenizer.decode([t]) for t in np.flatnonzero(table[inside] >= 0)}
    # Every allowed first token is a prefix of some `name"` (or overshoots a closed one).
    assert allowed and all(
        any((a + '"').startswith(x) or x.startswith(a + '"') for a in ACTIONS) for x in allowed
    )
    assert {"Up", "L", "1"} <= allowed and "x" not in allowed


def test_byte_automaton_rejects_bad_names():
    with pytest.raises(ValueError, match="action_names"):
        byte_automaton(["ok", 'bad"'])
    with pytest.raises(ValueError, match="action_names"):
        byte_automaton([])


def test_token_automaton_handles_tokens_spanning_the_trigger():
    """A single token holding the trigger's end and the value's start (a hand-made vocabulary)."""
    delta, in_value = byte_automaton(["ab"], trigger='x "')
    vocab = [b'x "a', b'b"', b"x", b' "', b"a", b"c", b""]
    width = max(map(len, vocab))
    table = np.zeros((len(vocab), width), np.uint8)
    for i, piece in enumerate(vocab):
        table[i, : len(piece)] = np.frombuffer(piece, np.uint8)
    lengths = np.asarray([len(p) for p in vocab], np.int32)
    automaton = token_automaton(table, lengths, delta, in_value)
    assert feed(automaton, [0, 1]) == 0  # 'x "a' + 'b"': trigger, legal value, closed
    assert feed(automaton, [2, 3, 5]) == -1  # 'x' ' "' 'c'
    assert feed(automaton, [2, 3, 4, 6]) == -1  # EOS-like empty token inside the value
    assert feed(automaton, [5, 6, 2]) >= 0  # empty token outside is fine
