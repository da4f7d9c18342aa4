"""Constrained decoding of the action value: once a reply has written `"action": "`, only tokens
that continue one of the legal action strings followed by its closing `"` may be sampled.

The rule is a deterministic automaton over the bytes of the reply, compiled on the host into a
token-level table `next_state[S, V]` (`-1`: the token is not allowed in that state):
- states `0 .. L-1` follow the trigger `"action": "` (a Knuth-Morris-Pratt automaton, so the
  trigger is found anywhere in the reply, also across token boundaries);
- the trigger's last byte leads to the root of a trie over the byte strings `name + '"'` for the
  legal names; each proper prefix is one state; a byte that leaves the trie is illegal; the closing
  `"` returns to state 0 (the rest of the token is read from there, so the rule re-arms).
A token is fed byte by byte through the automaton; its row of the table is where it ends, or -1.
Inside jit, one gather gives the allowed-token mask of each row and one gather advances the state.
Tokens that decode to no bytes (special tokens such as EOS) keep the state outside the action
value and are illegal inside it, so a reply cannot stop half-way through its action.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from transformers import PreTrainedTokenizerBase

from gtr_turbo_jax.text.parse import token_byte_table

ACTION_TRIGGER = '"action": "'
START_STATE = 0


class ActionConstraint(NamedTuple):
    """Token automaton for legal action values (a pytree of arrays; pass it into jit)."""

    next_state: jax.Array  # int32[S, V]: the state after the token, -1 where it is illegal

    @property
    def num_states(self) -> int:
        return self.next_state.shape[0]


def allowed_tokens(constraint: ActionConstraint, state: jax.Array) -> jax.Array:
    """`bool[B, V]`: the tokens each row (automaton `state [B]`) may sample next."""
    return constraint.next_state[state] >= 0


def advance(constraint: ActionConstraint, state: jax.Array, tokens: jax.Array) -> jax.Array:
    """The rows' states after `tokens [B]` (only call with allowed tokens)."""
    return jnp.maximum(constraint.next_state[state, tokens], START_STATE)


def byte_automaton(
    action_names: Sequence[str], trigger: str = ACTION_TRIGGER
) -> tuple[np.ndarray, np.ndarray]:
    """The byte-level automaton: `(delta int32[S, 256], in_value bool[S])`.

    `delta[s, b]` is the state after byte b (-1: illegal); `in_value[s]` marks the trie states
    (inside an action value). State 0 is the start. An empty trigger starts inside the value and
    ends, after it, in a state that allows everything.
    """
    names = [name.encode() for name in action_names]
    if not names or any(not n or b'"' in n or b"\\" in n for n in names):
        raise ValueError(
            f"action_names={list(action_names)!r}: need non-empty names without '\"' or '\\\\'"
        )
    pattern = trigger.encode()
    targets = {n + b'"' for n in names}
    prefixes = sorted({t[:i] for t in targets for i in range(len(t))}, key=lambda p: (len(p), p))
    trie = {p: len(pattern) + i for i, p in enumerate(prefixes)}
    # Where a finished value leads: back to the trigger's start, or (no trigger) a free state.
    after_value = START_STATE if pattern else len(prefixes)
    num_states = len(pattern) + len(prefixes) + (0 if pattern else 1)
    delta = np.full((num_states, 256), -1, np.int32)
    in_value = np.zeros(num_states, bool)
    in_value[len(pattern) : len(pattern) + len(prefixes)] = True
    if not pattern:
        delta[after_value] = after_value

    def after_trigger_byte(k: int, byte: int) -> int:
        """KMP: the longest prefix of the pattern that is a suffix of pattern[:k] + byte."""
        text = pattern[:k] + bytes([byte])
        for length in range(min(len(text), len(pattern)), 0, -1):
            if text.endswith(pattern[:length]):
                return trie[b""] if length == len(pattern) else length
        return 0

    for k in range(len(pattern)):
        delta[k] = [after_trigger_byte(k, b) for b in range(256)]
    for prefix, state in trie.items():
        for byte in range(256):
            extended = prefix + bytes([byte])
            if extended in targets:
                delta[state, byte] = after_value
            elif extended in trie:
                delta[state, byte] = trie[extended]
    return delta, in_value


def token_automaton(
    token_bytes: np.ndarray, token_lengths: np.ndarray, delta: np.ndarray, in_value: np.ndarray
) -> np.ndarray:
    """Feeds every token's bytes (`uint8[V, W]`, `int32[V]`) through the byte automaton from every
    state: `int32[S, V]`, -1 where some byte is illegal or an empty token sits inside the value."""
    num_states = delta.shape[0]
    state = np.broadcast_to(
        np.arange(num_states, dtype=np.int32)[:, None], (num_states, len(token_lengths))
    ).copy()
    for j in range(token_bytes.shape[1]):
        active = (j < token_lengths)[None, :] & (state >= 0)
        stepped = delta[np.maximum(state, 0), token_bytes[None, :, j]]
        state = np.where(active, stepped, state)
    empty = (token_lengths == 0)[None, :] & in_value[:, None]
    return np.where(empty, -1, state).astype(np.int32)


def make_action_constraint(
    tokenizer: PreTrainedTokenizerBase,
    action_names: Sequence[str],
    *,
    vocab_size: int | None = None,
    trigger: str = ACTION_TRIGGER,
) -> ActionConstraint:
    """The constraint for one env's legal action strings under one (byte-level BPE) tokenizer.

    `vocab_size`: the model's vocabulary (may exceed the tokenizer's; extra ids decode to nothing).
    `trigger=""` constrains the reply's first bytes to be an action (useful for action-only replies).
    """
    delta, in_value = byte_automaton(action_names, trigger)
    table, lengths = token_byte_table(tokenizer, vocab_size)
    return ActionConstraint(jnp.asarray(token_automaton(table, lengths, delta, in_value)))
