"""Jitted reply parsing on token ids agrees with the host rules of `replies.parse_reply`."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gtr_turbo_jax.text import parse, replies
from gtr_turbo_jax.text.tokenizer import load_tokenizer, tiny_tokenizer_path

# One spec for all tests (one compilation): the Points24 names ("10" before "1"), Sokoban's,
# a name whose occurrences overlap ("aa", removed leftmost-first before "a") and a non-ASCII one.
NAMES = (
    *(str(i) for i in range(1, 11)),
    *("+", "-", "*", "/", "(", ")", "="),
    *("Up", "Down", "Left", "Right"),
    *("aa", "a", "√"),
)
MAX_TOKENS = 96
BATCH = 8


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(tiny_tokenizer_path())


@pytest.fixture(scope="module")
def spec(tokenizer):
    return parse.make_reply_spec(tokenizer, NAMES)


@pytest.fixture(scope="module")
def parse_batch():
    return jax.jit(jax.vmap(parse.parse_reply_ids, in_axes=(0, 0, None, 0)))


def encode_batch(tokenizer, texts, seed=0):
    """Left-aligned ids, cut at MAX_TOKENS, padding filled with random ids the mask hides."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, len(tokenizer), (len(texts), MAX_TOKENS)).astype(np.int32)
    mask = np.zeros((len(texts), MAX_TOKENS), bool)
    for row, text in enumerate(texts):
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"][:MAX_TOKENS]
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = True
    return ids, mask


def check_batch(tokenizer, spec, parse_batch, texts, seed=0):
    ids, mask = encode_batch(tokenizer, texts, seed)
    keys = jax.random.split(jax.random.key(seed), len(texts))
    out = jax.device_get(parse_batch(jnp.asarray(ids), jnp.asarray(mask), spec, keys))
    table, lengths = (np.asarray(a) for a in (spec.token_bytes, spec.token_lengths))

    def raw(token_ids):
        return b"".join(table[i, : lengths[i]].tobytes() for i in token_ids)

    for row in range(len(texts)):
        reply_ids = ids[row][mask[row]]
        text = tokenizer.decode(
            reply_ids.tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        full = raw(reply_ids)
        assert full.decode("utf-8", "replace") == text  # the byte table decodes as HF does
        host = replies.parse_reply(text, NAMES, np.random.default_rng(row))
        where = f"reply {text!r}"
        assert bool(out.valid[row]) == parse.is_valid_reply(text), where
        assert bool(out.legal[row]) == host.legal, where
        if host.legal:
            assert int(out.action[row]) == host.action, where
        assert 0 <= int(out.action[row]) < len(NAMES), where

        thought, action = out.thought_mask[row], out.action_mask[row]
        assert not (thought & action).any() and ((thought | action) == mask[row]).all(), where
        marker = full.rfind(parse.ACTION_MARKER)
        assert (marker >= 0) == (replies.ACTION_MARKER in text), where
        if marker < 0:
            assert not action.any(), where
            continue
        thought_bytes = raw(ids[row][thought])
        first_action = int(np.flatnonzero(action)[0])
        assert full[:marker].startswith(thought_bytes), where
        assert len(thought_bytes) + lengths[ids[row, first_action]] > marker, where
        assert (np.flatnonzero(thought) < first_action).all(), where


CASES = [
    '{"thoughts": "box left of me", "action": "Left"}',
    '{"thoughts": "not \\"action\\": Up", "action": "Down"}',
    '"action": "Down"} "action": "Right"',
    '{"thoughts": "Up or Down?", "action": "Up or Down"}',
    '{"thoughts": "move up", "action": "up"}',
    '{"thoughts": "no marker"}',
    '{"thoughts": "", "action": "10"}',
    '{"thoughts": "", "action": "10 or 1"}',
    '{"thoughts": "x", "action": "aaa"}',  # "aa" replaced once, then "a" remains
    '{"thoughts": "x", "action": "aaaa"}',  # "aa" twice: only "aa"
    '{"thoughts": "x", "action": "√"}',
    '{"thoughts": "x", "action": 10}',  # not a string: invalid, still legal
    '{"thoughts": "x", "action": "1", "action": 2}',  # duplicate key: the last one counts
    '{"thoughts": 1, "thoughts": "y", "action": "="}',
    '{"thoughts": "x", "act\\u0069on": "Up"}',  # escaped key decodes to "action"
    '{"thoughts": "x\\u00e9\\ud83d\\ude00\\n", "action": "Up"}',
    '{"thoughts": "tab\there", "action": "Up"}',  # raw control character: invalid
    '{"thoughts": "x", "action": "Up", "n": [0, -0.5e+3, 1E2, true, false, null, NaN]}',
    '{"thoughts": "x", "action": "Up", "n": -Infinity}',
    '{"thoughts": "x", "action": "Up", "n": 01}',
    '{"thoughts": "x", "action": "Up", "n": 1.}',
    '{"thoughts": "x", "action": "Up", "n": tru}',
    '[{"thoughts": "x", "action": "Up"}]',
    ' \n{"thoughts":"x","action":"Up"}\r\t ',
    '{"thoughts": "x", "action": "Up"} extra',
    '{"thoughts": "x", "action": "Up"',
    '{"thoughts": "x", "action": "Up",}',
    "",
    '"action":',
    '{"thoughts": "x", "action": "Up", "d": ' + "[" * 31 + "]" * 31 + "}",  # depth 32: valid
    '{"thoughts": "x", "action": "Up", "d": ' + "[" * 32 + "]" * 32 + "}",  # 33: over the bound
]


def test_hand_cases(tokenizer, spec, parse_batch):
    for start in range(0, len(CASES), BATCH):
        check_batch(tokenizer, spec, parse_batch, CASES[start : start + BATCH])


def test_depth_bound_is_the_only_difference_from_json_loads():
    deep = '{"thoughts": "x", "action": "Up", "d": ' + "[" * 32 + "]" * 32 + "}"
    assert replies.is_valid_reply(deep) and not parse.is_valid_reply(deep)
    assert parse.is_valid_reply(deep, max_depth=33)


def test_token_byte_table_decodes_every_id_like_the_tokenizer(tokenizer, spec):
    table, lengths = np.asarray(spec.token_bytes), np.asarray(spec.token_lengths)
    for i in range(len(tokenizer)):
        expected = tokenizer.decode([i], skip_special_tokens=True)
        assert table[i, : lengths[i]].tobytes().decode("utf-8", "replace") == expected, i
    specials = parse.make_reply_spec(tokenizer, NAMES, vocab_size=len(tokenizer) + 5)
    assert int(np.asarray(specials.token_lengths)[-5:].max()) == 0


def test_bad_specs_raise_one_clear_error(tokenizer):
    with pytest.raises(ValueError, match="action_names"):
        parse.make_reply_spec(tokenizer, ("Up", ""))
    with pytest.raises(ValueError, match="vocab_size"):
        parse.make_reply_spec(tokenizer, NAMES, vocab_size=10)


# --- property test --------------------------------------------------------------------------------

FRAGMENTS = (
    '"action":', '"action": ', '"thoughts": ', "{", "}", "[", "]", '"', '\\"', "\\\\", "\\u00e9",
    "\\u0061", "\\x", ":", ",", " ", "\n", "\t", "\x01", "Up", "Down", "10", "1", "0", "+", "=",
    "aa", "a", "√", "é", "日本", "true", "null", "NaN", "-Infinity", "1e5", "-0.5", "01", "🙂",
)  # fmt: skip
KEYS = ('"thoughts"', '"action"', '"act\\u0069on"', '"cards"', '"formula"', '"thoughts "')

noise = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=3), max_size=16).map("".join)
strings = (
    st.sampled_from(NAMES)
    | st.text(max_size=8)
    | st.lists(st.sampled_from(NAMES + FRAGMENTS), max_size=6).map(" ".join)
)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 10**6) | st.floats() | strings,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
keys = st.sampled_from(KEYS) | st.text(max_size=5).map(json.dumps)


@st.composite
def json_replies(draw):
    """Mostly well-formed replies (required keys among others, any order), often damaged."""
    required = [('"thoughts"', draw(strings | values)), ('"action"', draw(strings | values))]
    extra = draw(st.lists(st.tuples(keys, values), max_size=3))
    items = draw(st.permutations(required + extra))
    ascii_only = draw(st.booleans())
    text = "{" + ", ".join(f"{k}: {json.dumps(v, ensure_ascii=ascii_only)}" for k, v in items) + "}"
    cut = draw(st.integers(0, len(text)))
    damage = draw(st.integers(0, 5))
    if damage == 3:
        return text[:cut]
    if damage >= 4:
        return text[:cut] + draw(noise) + (text[cut:] if damage == 5 else "")
    return text


replies_strategy = json_replies() | noise | st.text(max_size=30)


def _property(tokenizer, spec, parse_batch, texts, seed):
    check_batch(tokenizer, spec, parse_batch, texts, seed)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(replies_strategy, min_size=BATCH, max_size=BATCH), seed=st.integers(0, 99))
def test_jit_parse_agrees_with_host(tokenizer, spec, parse_batch, texts, seed):
    _property(tokenizer, spec, parse_batch, texts, seed)


@pytest.mark.slow
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(replies_strategy, min_size=BATCH, max_size=BATCH), seed=st.integers(0, 99))
def test_jit_parse_agrees_with_host_many(tokenizer, spec, parse_batch, texts, seed):
    _property(tokenizer, spec, parse_batch, texts, seed)
