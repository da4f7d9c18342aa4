"""What an agent must know of an env beyond the `VisualEnv` contract: its `AgentSpec`.

An env class carries its spec (`VisualEnv.agent_spec`); the layers above read it through
`envs.agent_spec(name_or_env)` and never branch on an env's name:
- `text.prompts` takes the wording per prompt style (`texts`), the reply format (`replies`), the
  dynamic slots of the wording (`slots`) and the optional positions hint (`positions`);
- `train.demos` and `train.oracle` take the optional `expert` (the warm start's demonstrations and
  the `gtr` mode's corrected replies);
- `rollout.metrics` takes the optional `grounding` (the thought-grounding score of evaluation).

A spec is plain data and callables. A callable that reads the env's constants (sizes, symbols, the
target) gets the env first: the prompt's get the run's env, the expert's and the grounding's the
env's default instance (`envs.default_env`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# One state's `prompt_fields`, unbatched (numpy on the host, arrays inside jit).
Fields = Mapping[str, Any]


@dataclass(frozen=True)
class Slot:
    """A dynamic piece of a prompt: `symbols(fields) -> (int32[P] rows of the table, bool[P]
    present)`, each row the index of one of `renderings` (the text of one symbol)."""

    name: str
    renderings: tuple[str, ...]  # row r of the token table is the tokenization of renderings[r]
    symbols: Callable[[Fields], tuple[jax.Array, jax.Array]]
    # Tokens the slot can take at most, given each rendering's token count; None: every position
    # at its longest rendering. A bound: nothing is cut.
    max_tokens: Callable[[np.ndarray], int] | None = None
    # A cut instead of a bound: `(rendering token counts, positions) -> tokens`; the slot keeps
    # its symbols up to the last whole one within that many tokens (`text.prompts`: the jitted
    # assembly and the host reference alike), and the prompt's length bound counts the budget.
    token_budget: Callable[[np.ndarray, int], int] | None = None


def word_slot(name: str, vocabulary: Sequence[str], tokens_per_word: float | None = None) -> Slot:
    """Free text from a fixed vocabulary: field `name` holds int32[L] word ids (-1 after the
    text's end), written " word" each. How a Python env puts changing text in the prompt (an
    ALFWorld observation, its admissible commands) within the fixed-shape prompt.

    The text is cut after `ceil(L * tokens_per_word)` tokens (default: the vocabulary's mean
    token count per word, which common words stay under): bounding it by `L` of the longest word
    instead pads every prompt to several times its usual length."""
    renderings = tuple(" " + word for word in vocabulary)
    if not renderings or any(not word or word != word.strip() for word in vocabulary):
        raise ValueError(f"word_slot {name!r}: need non-empty words without surrounding spaces")
    if tokens_per_word is not None and not tokens_per_word > 0:
        raise ValueError(f"word_slot {name!r}: tokens_per_word={tokens_per_word!r}, need > 0")

    def symbols(fields: Fields) -> tuple[jax.Array, jax.Array]:
        ids = jnp.asarray(fields[name], jnp.int32)
        return jnp.maximum(ids, 0), ids >= 0

    def token_budget(lengths: np.ndarray, positions: int) -> int:
        per_word = float(np.mean(lengths)) if tokens_per_word is None else tokens_per_word
        return math.ceil(positions * per_word)

    return Slot(name, renderings, symbols, token_budget=token_budget)


def no_slots(env: Any) -> dict[str, Slot]:
    """The slots of a wording without dynamic parts (its state is in the image only)."""
    del env
    return {}


@dataclass(frozen=True)
class PositionsHint:
    """An optional sentence after the env's wording (`prompt.positions=True`) that lists where
    things are, a copy of what the picture or a grid shows, for models that cannot read it off."""

    texts: Mapping[str, str]  # prompt style -> the sentence; `{name}` marks slot `name`
    slots: Callable[[Any], Mapping[str, Slot]]  # env -> the slots the sentence names


class ExpertMove(NamedTuple):
    """The expert's decision in one state."""

    action: int  # the expert's action id
    reason: str  # why, in one or two sentences that end with the action
    solvable: bool  # False: the state can no longer be won and `action` is the documented fallback


def plain_reason(action_name: str) -> str:
    """The default reason for an action that is not the expert's: a statement, no justification."""
    return f"I choose '{action_name}'."


@dataclass(frozen=True)
class Expert:
    """A solver that plays the env from its prompt fields (host side, plain Python / numpy)."""

    move: Callable[[Any, Fields], ExpertMove]  # (env, fields) -> the expert's move
    # Action name -> the reason written when a reply names another action than the expert's.
    plain_reason: Callable[[str], str] = plain_reason
    # (env, fields) -> the keys the "full" reply format asks for before "thoughts", with their
    # values in this state; None: the reply is the thoughts and the action only.
    state_keys: Callable[[Any, Fields], dict[str, Any]] | None = None
    # True: a state the expert cannot win from is not demonstrated; the episode restarts (a
    # random push can strand a Sokoban box, while a card game's fallback `=` is a fine lesson).
    restart_unsolvable: bool = False


@dataclass(frozen=True)
class Grounding:
    """A small claim grammar about the true state: its writer and its checker."""

    describe: Callable[[Any, Fields], str]  # (env, fields) -> every claim about the state
    claims: Callable[[Any, str, Fields], list[bool]]  # (env, text, fields) -> truth of each claim


@dataclass(frozen=True, eq=False)  # hashed by identity: `texts` and `replies` are dicts
class AgentSpec:
    """Everything the agent is told of an env, and what can write or judge its replies.

    `texts` and `replies` have one entry per prompt style the env supports ("full": the anchors'
    wording for real models; "brief": a few words for tiny models; "compact": the state only). A
    text marks slot `name` as `{name}`; a slot is preceded by any text and followed by a space (the
    tokenization rule of `text.prompts`).
    """

    texts: Mapping[str, str]  # prompt style -> the user text
    replies: Mapping[str, str]  # prompt style -> the JSON reply format the text asks for
    slots: Callable[[Any], Mapping[str, Slot]] = no_slots  # env -> the slots its texts name
    positions: PositionsHint | None = None  # None: `prompt.positions` is not available
    expert: Expert | None = None  # None: no warm start and no `gtr` mode
    grounding: Grounding | None = None  # None: evaluation reports no grounding

    def __post_init__(self) -> None:
        missing = sorted(set(self.texts) - set(self.replies))
        if missing:
            raise ValueError(
                f"AgentSpec: prompt style(s) {', '.join(missing)} have no reply format"
            )
