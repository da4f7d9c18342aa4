"""Reply parsing on token ids inside jit: the rules of `replies.parse_reply`, on bytes.

The tokenizer may merge `"action":` with its neighbours differently depending on context, so the
parser never looks for a token pattern: it expands the reply into the bytes the tokenizer decodes
it to (a per-token byte table, built once on the host) and applies the text rules to the bytes:

- the marker: the last occurrence of `"action":`; thought tokens are the reply tokens that end at
  or before the marker's first byte, action tokens are the marker's token and everything after it.
  With no marker every reply token is a thought token and there are no action tokens.
- the action: in the bytes after the marker, legal action names are matched longest first, each
  name's occurrences (leftmost, non-overlapping, as `str.replace`) removed before shorter names are
  looked for; exactly one distinct name -> that action, `legal=1`; otherwise a uniformly random
  action drawn from `key`, `legal=0`.
- validity: a byte-level JSON scanner (`lax.while_loop` over the reply's bytes) accepts exactly
  what Python's `json.loads` accepts (RFC 8259 plus `NaN`, `Infinity`, `-Infinity`, strict control
  characters), and tracks the type of the last value of each required key of the top-level object
  (duplicate keys: the last one wins, as in `json.loads`), with one documented difference: nesting
  deeper than `ReplySpec.max_depth` containers is invalid here (Python's limit is its recursion
  limit). `is_valid_reply` below is the host rule with that bound; it equals
  `replies.is_valid_reply` on every reply nested at most `max_depth` deep.

The decoded text the host rules are checked against is `tokenizer.decode(ids[mask],
skip_special_tokens=True)` (special tokens decode to nothing; `<|im_end|>` may stay in the mask).
Bytes that are not valid UTF-8 (a reply cut inside a character) decode to U+FFFD on the host;
action names and the marker are ASCII-safe under that rule, so results agree on them too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from transformers import PreTrainedTokenizerBase

from gtr_turbo_jax.text import replies

ACTION_MARKER = replies.ACTION_MARKER.encode()
DEFAULT_MAX_DEPTH = 32
# Literal values of Python's json (NaN/Infinity are extensions of RFC 8259 it accepts).
_LITERALS = (b"true", b"false", b"null", b"NaN", b"Infinity", b"-Infinity")


class ParsedIds(NamedTuple):
    thought_mask: jax.Array  # bool[T]: reply tokens before the marker's token
    action_mask: jax.Array  # bool[T]: the marker's token and every reply token after it
    action: jax.Array  # int32[]: index into the action names
    legal: jax.Array  # bool[]: exactly one legal action name after the marker
    valid: jax.Array  # bool[]: JSON object whose required keys hold strings


@struct.dataclass
class ReplySpec:
    """Everything the jitted parser needs; built once on the host by `make_reply_spec`."""

    token_bytes: jax.Array  # uint8[V, W]: the bytes each token id decodes to, zero padded
    token_lengths: jax.Array  # int32[V]: how many of them (0 for special tokens)
    action_names: tuple[bytes, ...] = struct.field(pytree_node=False)
    required_keys: tuple[bytes, ...] = struct.field(pytree_node=False)
    max_depth: int = struct.field(pytree_node=False, default=DEFAULT_MAX_DEPTH)


# --- host set-up ----------------------------------------------------------------------------------


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2 byte-level BPE: the printable character that stands for each byte in a vocab entry."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = (b for b in range(256) if b not in printable)
    chars = {chr(b): b for b in printable}
    chars.update({chr(256 + i): b for i, b in enumerate(extra)})
    return chars


def token_byte_table(
    tokenizer: PreTrainedTokenizerBase, vocab_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`(uint8[V, W], int32[V])`: the bytes each id decodes to with `skip_special_tokens=True`.

    `vocab_size` pads the table to the model's vocabulary (ids the tokenizer lacks decode to
    nothing, as HF's decode skips them). Byte-level BPE tokenizers only (Qwen2, GPT-2 family).
    """
    decoder = tokenizer.backend_tokenizer.decoder
    if type(decoder).__name__ != "ByteLevel":
        raise ValueError(
            f"reply parsing needs a byte-level BPE tokenizer, got decoder {type(decoder).__name__}"
        )
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1 if vocab_size is None else vocab_size
    if size <= max(vocab.values()):
        raise ValueError(
            f"vocab_size={vocab_size} is smaller than the tokenizer's {max(vocab.values()) + 1} ids"
        )
    added = {i: t for i, t in tokenizer.added_tokens_decoder.items()}
    alphabet = _byte_level_alphabet()
    pieces = [b""] * size
    for token, i in vocab.items():
        if i in added:
            pieces[i] = b"" if added[i].special else added[i].content.encode()
        else:
            pieces[i] = bytes(alphabet[c] for c in token)
    width = max(1, max(len(p) for p in pieces))
    table = np.zeros((size, width), np.uint8)
    for i, p in enumerate(pieces):
        table[i, : len(p)] = np.frombuffer(p, np.uint8)
    return table, np.asarray([len(p) for p in pieces], np.int32)


def make_reply_spec(
    tokenizer: PreTrainedTokenizerBase,
    action_names: Sequence[str],
    required_keys: Sequence[str] = ("thoughts", "action"),
    *,
    vocab_size: int | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> ReplySpec:
    """The parser's spec for one env's action names under one tokenizer."""
    names = tuple(n.encode() for n in action_names)
    if not names or any(not n or b"\0" in n for n in names):
        raise ValueError(f"action_names={list(action_names)!r}: need non-empty names without NUL")
    if any(not k.isascii() or not k for k in required_keys):
        raise ValueError(f"required_keys={list(required_keys)!r}: need non-empty ASCII keys")
    if max_depth < 1:
        raise ValueError(f"max_depth={max_depth}: need at least 1")
    table, lengths = token_byte_table(tokenizer, vocab_size)
    return ReplySpec(
        token_bytes=jnp.asarray(table),
        token_lengths=jnp.asarray(lengths),
        action_names=names,
        required_keys=tuple(k.encode() for k in dict.fromkeys(required_keys)),
        max_depth=max_depth,
    )


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def is_valid_reply(
    text: str,
    required_keys: Sequence[str] = ("thoughts", "action"),
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> bool:
    """`replies.is_valid_reply` with the jitted scanner's nesting bound: the host twin of `valid`."""
    if not replies.is_valid_reply(text, required_keys):
        return False
    return _depth(json.loads(text)) <= max_depth


# --- bytes of a reply -----------------------------------------------------------------------------


def reply_bytes(
    ids: jax.Array, mask: jax.Array, spec: ReplySpec
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(uint8[T*W], n, token_ends int32[T])`: the reply's bytes compacted to the front."""
    num_tokens, width = ids.shape[0], spec.token_bytes.shape[1]
    rows = jnp.take(spec.token_bytes, ids, axis=0, mode="fill", fill_value=0)
    lengths = jnp.take(spec.token_lengths, ids, mode="fill", fill_value=0)
    lengths = jnp.where(mask, lengths, 0)
    ends = jnp.cumsum(lengths)
    offsets = jnp.arange(width)
    dest = jnp.where(offsets < lengths[:, None], (ends - lengths)[:, None] + offsets, -1)
    size = num_tokens * width
    dest = jnp.where(dest < 0, size, dest)  # out of range: dropped
    buf = jnp.zeros(size, jnp.uint8).at[dest.ravel()].set(rows.ravel(), mode="drop")
    return buf, ends[-1], ends


def _occurrences(buf: jax.Array, n: jax.Array, pattern: bytes) -> jax.Array:
    """bool[B]: `pattern` starts at byte i (and ends within the first n bytes)."""
    size = buf.shape[0]
    padded = jnp.concatenate([buf, jnp.zeros(len(pattern), jnp.uint8)])
    hits = jnp.arange(size) + len(pattern) <= n
    for j, b in enumerate(pattern):
        hits &= padded[j : j + size] == b
    return hits


def _window_any(flags: jax.Array, length: int, forward: bool) -> jax.Array:
    """bool[B]: any flag in [i, i+length) (forward) or in (i-length, i] (backward)."""
    size = flags.shape[0]
    pad = jnp.zeros(length - 1, bool)
    padded = jnp.concatenate([flags, pad] if forward else [pad, flags])
    out = jnp.zeros(size, bool)
    for j in range(length):
        out |= padded[j : j + size]
    return out


def _has_border(name: bytes) -> bool:
    """Whether occurrences of `name` can overlap (a proper prefix equals a suffix)."""
    return any(name[:k] == name[-k:] for k in range(1, len(name)))


def _leftmost_non_overlapping(starts: jax.Array, length: int) -> jax.Array:
    """Keeps the occurrences `str.replace` would replace: leftmost first, skipping overlaps."""

    def keep(next_free, item):
        i, hit = item
        take = hit & (i >= next_free)
        return jnp.where(take, i + length, next_free), take

    _, kept = jax.lax.scan(keep, jnp.int32(0), (jnp.arange(starts.shape[0]), starts))
    return kept


def matched_actions(buf: jax.Array, n: jax.Array, tail_start: jax.Array, spec: ReplySpec):
    """bool[A]: the action names found at or after byte `tail_start` (longest-first removal)."""
    positions = jnp.arange(buf.shape[0])
    removed = jnp.zeros(buf.shape[0], bool)
    found = [None] * len(spec.action_names)
    order = sorted(range(len(spec.action_names)), key=lambda i: -len(spec.action_names[i]))
    for i in order:
        name = spec.action_names[i]
        starts = _occurrences(buf, n, name) & (positions >= tail_start)
        starts &= ~_window_any(removed, len(name), forward=True)
        if _has_border(name):
            starts = _leftmost_non_overlapping(starts, len(name))
        found[i] = starts.any()
        removed |= _window_any(starts, len(name), forward=False)
    return jnp.stack(found)


# --- JSON validity --------------------------------------------------------------------------------

(
    VALUE,  # a value may start here
    VALUE_OR_CLOSE,  # after "[": a value or "]"
    AFTER_VALUE,  # after a value: "," or a closing bracket (nothing at depth 0)
    KEY_OR_CLOSE,  # after "{": a key or "}"
    KEY,  # after "," in an object: a key
    COLON,  # after a key
    STRING,
    ESCAPE,  # after a backslash
    UNICODE,  # inside \uXXXX
    LITERAL,  # inside true/false/null/NaN/Infinity/-Infinity
    NUM_MINUS,
    NUM_ZERO,  # a leading 0: no more integer digits
    NUM_INT,
    NUM_DOT,
    NUM_FRAC,
    NUM_EXP,
    NUM_EXP_SIGN,
    NUM_EXP_DIGITS,
    ERROR,
) = range(19)


class _Scan(NamedTuple):
    mode: jax.Array  # int32: one of the modes above
    depth: jax.Array  # int32: open containers
    is_object: jax.Array  # bool[max_depth + 1]: container kind per level (1-based)
    top_is_object: jax.Array  # bool: the top-level value is an object
    in_key: jax.Array  # bool: the open string is an object key
    key_pos: jax.Array  # int32: decoded characters of the key so far
    key_match: jax.Array  # bool[K]: the key so far equals a prefix of required key k
    last_key: jax.Array  # int32: required key just read (-1: none)
    key_is_string: jax.Array  # bool[K]: the last value of required key k is a string
    literal: jax.Array  # int32: which literal, and how many of its bytes were read
    literal_pos: jax.Array
    hex_left: jax.Array  # int32: hex digits still to read in \uXXXX
    code: jax.Array  # int32: the \uXXXX value so far


def _table(strings: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(s) for s in strings)
    table = np.zeros((len(strings), width), np.int32)
    for i, s in enumerate(strings):
        table[i, : len(s)] = list(s)
    return table, np.asarray([len(s) for s in strings], np.int32)


def _json_step(s: _Scan, b: jax.Array, spec: ReplySpec) -> _Scan:
    keys, key_lengths = _table(spec.required_keys)
    literals, literal_lengths = _table(_LITERALS)
    b = b.astype(jnp.int32)
    is_ws = (b == 32) | (b == 9) | (b == 10) | (b == 13)
    is_digit = (b >= 48) & (b <= 57)
    hex_value = jnp.where(
        is_digit,
        b - 48,
        jnp.where((b >= 97) & (b <= 102), b - 87, jnp.where((b >= 65) & (b <= 70), b - 55, -1)),
    )

    def to(mode, state=s):
        return state._replace(mode=jnp.asarray(mode, jnp.int32))

    def error(state=s):
        return to(ERROR, state)

    def pick(cond, a: _Scan, c: _Scan) -> _Scan:
        return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, c)

    def pop(state=s):
        return state._replace(depth=state.depth - 1, mode=jnp.int32(AFTER_VALUE))

    def push(kind_is_object, mode):
        depth = s.depth + 1
        pushed = s._replace(
            depth=depth,
            is_object=s.is_object.at[jnp.minimum(depth, spec.max_depth)].set(kind_is_object),
            mode=jnp.int32(mode),
        )
        return pick(depth > spec.max_depth, error(), pushed)

    def start_key():
        return s._replace(
            mode=jnp.int32(STRING),
            in_key=jnp.bool_(True),
            key_pos=jnp.int32(0),
            key_match=jnp.ones_like(s.key_match),
        )

    def emit(state: _Scan, char) -> _Scan:
        pos = jnp.minimum(state.key_pos, keys.shape[1] - 1)
        same = (state.key_pos < key_lengths) & (jnp.asarray(keys)[:, pos] == char)
        match = jnp.where(state.in_key, state.key_match & same, state.key_match)
        return state._replace(key_match=match, key_pos=state.key_pos + 1, mode=jnp.int32(STRING))

    def start_value():
        # The top-level kind, and the type of a required key's value in the top-level object.
        top = jnp.where(s.depth == 0, b == 123, s.top_is_object)
        in_top_object = (s.depth == 1) & s.is_object[1] & (s.last_key >= 0)
        slot = jnp.maximum(s.last_key, 0)
        is_string = s.key_is_string.at[slot].set(
            jnp.where(in_top_object, b == 34, s.key_is_string[slot])
        )
        base = s._replace(top_is_object=top, key_is_string=is_string)
        literal = jnp.select(
            [b == c for c in b"tfnNI"], [jnp.int32(i) for i in range(5)], jnp.int32(-1)
        )
        cases = [
            (b == 123, push(True, KEY_OR_CLOSE)),
            (b == 91, push(False, VALUE_OR_CLOSE)),
            (b == 34, to(STRING, base._replace(in_key=jnp.bool_(False)))),
            (b == 45, to(NUM_MINUS, base)),
            (b == 48, to(NUM_ZERO, base)),
            (is_digit, to(NUM_INT, base)),
            (
                literal >= 0,
                base._replace(mode=jnp.int32(LITERAL), literal=literal, literal_pos=jnp.int32(1)),
            ),
        ]
        out = error(base)
        for cond, state in reversed(cases):
            state = state._replace(top_is_object=top, key_is_string=is_string)
            out = pick(cond, state, out)
        return out

    def value():
        return pick(is_ws, s, start_value())

    def value_or_close():
        return pick(b == 93, pop(), value())

    def after_value(state=s):
        in_object = state.is_object[jnp.clip(state.depth, 0, spec.max_depth)]
        out = error(state)
        out = pick((b == 93) & ~in_object, pop(state), out)
        out = pick((b == 125) & in_object, pop(state), out)
        out = pick(b == 44, to(jnp.where(in_object, KEY, VALUE), state), out)
        out = pick(state.depth == 0, error(state), out)
        return pick(is_ws, state, out)

    def key_or_close():
        return pick(is_ws, s, pick(b == 125, pop(), pick(b == 34, start_key(), error())))

    def key():
        return pick(is_ws, s, pick(b == 34, start_key(), error()))

    def colon():
        return pick(is_ws, s, pick(b == 58, to(VALUE), error()))

    def string():
        full = s.key_match & (s.key_pos == key_lengths)
        last_key = jnp.where(full.any(), jnp.argmax(full), -1).astype(jnp.int32)
        closed = pick(
            s.in_key,
            s._replace(mode=jnp.int32(COLON), last_key=last_key),
            to(AFTER_VALUE),
        )
        out = pick(b == 92, to(ESCAPE), emit(s, b))
        out = pick(b == 34, closed, out)
        return pick(b < 32, error(), out)

    def escape():
        simple = {34: 34, 92: 92, 47: 47, 98: 8, 102: 12, 110: 10, 114: 13, 116: 9}
        out = error()
        for code, char in simple.items():
            out = pick(b == code, emit(s, char), out)
        unicode = s._replace(mode=jnp.int32(UNICODE), hex_left=jnp.int32(4), code=jnp.int32(0))
        return pick(b == 117, unicode, out)

    def unicode():
        code = s.code * 16 + hex_value
        more = s._replace(code=code, hex_left=s.hex_left - 1)
        done = emit(more, code)
        return pick(hex_value < 0, error(), pick(s.hex_left == 1, done, more))

    def literal():
        row = jnp.asarray(literals)[s.literal]
        expected = row[jnp.minimum(s.literal_pos, literals.shape[1] - 1)]
        pos = s.literal_pos + 1
        ok = s._replace(literal_pos=pos)
        ok = pick(pos == jnp.asarray(literal_lengths)[s.literal], to(AFTER_VALUE, ok), ok)
        return pick(b == expected, ok, error())

    def number(continuations, accepting: bool):
        """`continuations`: (condition, next mode) pairs; otherwise end (if accepting) or fail."""
        out = after_value(to(AFTER_VALUE)) if accepting else error()
        for cond, mode in reversed(continuations):
            out = pick(cond, to(mode), out)
        return out

    def num_minus():
        infinity = s._replace(
            mode=jnp.int32(LITERAL), literal=jnp.int32(5), literal_pos=jnp.int32(2)
        )
        return pick(b == 73, infinity, number([(b == 48, NUM_ZERO), (is_digit, NUM_INT)], False))

    is_exp = (b == 101) | (b == 69)
    branches = [
        value,
        value_or_close,
        after_value,
        key_or_close,
        key,
        colon,
        string,
        escape,
        unicode,
        literal,
        num_minus,
        lambda: number([(b == 46, NUM_DOT), (is_exp, NUM_EXP)], True),
        lambda: number([(is_digit, NUM_INT), (b == 46, NUM_DOT), (is_exp, NUM_EXP)], True),
        lambda: number([(is_digit, NUM_FRAC)], False),
        lambda: number([(is_digit, NUM_FRAC), (is_exp, NUM_EXP)], True),
        lambda: number([(is_digit, NUM_EXP_DIGITS), ((b == 43) | (b == 45), NUM_EXP_SIGN)], False),
        lambda: number([(is_digit, NUM_EXP_DIGITS)], False),
        lambda: number([(is_digit, NUM_EXP_DIGITS)], True),
        lambda: s,
    ]
    return jax.lax.switch(s.mode, branches)


def json_valid(buf: jax.Array, n: jax.Array, spec: ReplySpec) -> jax.Array:
    """bool[]: the first `n` bytes are a JSON object whose required keys hold strings."""
    num_keys = len(spec.required_keys)
    init = _Scan(
        mode=jnp.int32(VALUE),
        depth=jnp.int32(0),
        is_object=jnp.zeros(spec.max_depth + 1, bool),
        top_is_object=jnp.bool_(False),
        in_key=jnp.bool_(False),
        key_pos=jnp.int32(0),
        key_match=jnp.zeros(num_keys, bool),
        last_key=jnp.int32(-1),
        key_is_string=jnp.zeros(num_keys, bool),
        literal=jnp.int32(0),
        literal_pos=jnp.int32(0),
        hex_left=jnp.int32(0),
        code=jnp.int32(0),
    )
    # The trip count is the reply's byte count (a while loop), not the buffer's size.
    final = jax.lax.fori_loop(0, n, lambda i, s: _json_step(s, buf[i], spec), init)
    return (
        (final.mode == AFTER_VALUE)
        & (final.depth == 0)
        & final.top_is_object
        & final.key_is_string.all()
    )


# --- the parser -----------------------------------------------------------------------------------


def parse_reply_ids(ids: jax.Array, mask: jax.Array, spec: ReplySpec, key: jax.Array) -> ParsedIds:
    """Parses one reply (`int32[T]` token ids, `bool[T]` mask of its real tokens); jittable."""
    chex.assert_rank([ids, mask], 1)
    chex.assert_equal_shape([ids, mask])
    buf, n, token_ends = reply_bytes(ids, mask.astype(bool), spec)
    positions = jnp.arange(buf.shape[0])
    marker_at = jnp.max(jnp.where(_occurrences(buf, n, ACTION_MARKER), positions, -1))
    has_marker = marker_at >= 0
    mask = mask.astype(bool)
    before = token_ends <= marker_at
    thought_mask = mask & jnp.where(has_marker, before, True)
    action_mask = mask & has_marker & ~before

    tail_start = jnp.where(has_marker, marker_at + len(ACTION_MARKER), buf.shape[0])
    found = matched_actions(buf, n, tail_start, spec)
    legal = found.sum() == 1
    fallback = jax.random.randint(key, (), 0, len(spec.action_names), jnp.int32)
    action = jnp.where(legal, jnp.argmax(found).astype(jnp.int32), fallback)
    return ParsedIds(
        thought_mask=thought_mask,
        action_mask=action_mask,
        action=action,
        legal=legal,
        valid=json_valid(buf, n, spec),
    )
