"""What the agent is told of the card games (`AgentSpec`): RL4VLM's gym_cards prompts in our own
words, the formula as a slot (Points24, EZPoints), the solvers as experts, the claim grammars."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from gtr_turbo_jax.envs.agent import AgentSpec, Expert, Grounding, Slot
from gtr_turbo_jax.envs.cards import expert, grounding
from gtr_turbo_jax.envs.cards.fields import FORMULA_BLANK

FORMULA_RULES = (
    " Each turn you choose one of {actions}; the number or operator you choose is appended to"
    " the formula, and '=' ends the game. 'J', 'Q' and 'K' count as '10'. The goal is a formula"
    " that evaluates to {target} and uses the number of every card exactly once. A '_' in the"
    " formula marks a number that was not among the unused cards and was dropped."
)
# The text around a slot keeps `text.prompts`' tokenization rule: any text before, a space after.
# The full replies ask for the state keys before the thoughts (RL4VLM); every thought is asked to
# state what it sees first, in the words of `grounding`'s grammar.
POINTS24_TEXT = (
    "You are an expert 24 points card game player. You are observing four cards in the image."
    " The current formula is:{formula} (end of formula)."
    + FORMULA_RULES.format(
        actions="'1', '2', '3', '4', '5', '6', '7', '8', '9', '10', '+', '-', '*', '/', '(',"
        " ')', '='",
        target=24,
    )
)
POINTS24_REPLY = (
    '{"cards": [x, y, z, w], "formula": "the current formula", "thoughts": "first read the'
    " cards and the formula, then check whether the formula equals 24: if so choose '=',"
    ' otherwise think about which number or operator to append to reach 24", "action":'
    ' "a number or an operator"}'
)
EZPOINTS_TEXT = (
    "You are an expert card game player. You are observing two cards in the image. The"
    " current formula is:{formula} (end of formula)."
    + FORMULA_RULES.format(
        actions="'1', '2', '3', '4', '5', '6', '7', '8', '9', '10', '+', '*', '='", target=12
    )
)
EZPOINTS_REPLY = (
    '{"cards": [x, y], "formula": "the current formula", "thoughts": "first read the cards and'
    " the formula, then check whether the formula is complete: if so choose '=', otherwise"
    ' think about which number or operator to append to reach 12", "action": "a number or an'
    ' operator"}'
)
NUMBERLINE_TEXT = (
    "You are playing a game called number line. The image shows a target number and a current"
    " number, both between 0 and{max_position} (inclusive). Your goal is to move the current"
    " number to the target:"
    " each turn choose '+' to add one to the current number or '-' to subtract one."
)
NUMBERLINE_REPLY = (
    '{"current number": x, "target number": y, "thoughts": "first read the current and target'
    ' numbers, then think about which action brings the current number closer to the target",'
    ' "action": "+" or "-"}'
)
BLACKJACK_TEXT = (
    "You are a blackjack player. You are observing the current game state in the image: the"
    " dealer's face-up card and your cards. You can choose between 'stand' (keep your hand and"
    " let the dealer play) and 'hit' (take one more card). You win with a total closer to 21"
    " than the dealer's without going over 21; an ace counts 1 or 11, 'J', 'Q' and 'K' count"
    " 10."
)
BLACKJACK_REPLY = (
    '{"thoughts": "first say your total and the dealer\'s card, then think about which action'
    ' to choose", "action": "stand" or "hit"}'
)
# The brief wording (for tiny models) is also the compact one: a card game's state is in the
# image and the formula, so there are no rules to leave out.
FORMULA_BRIEF_REPLY = '{"thoughts": "...", "action": "a number or an operator"}'


def formula_slot(env: Any) -> Slot:
    """The formula so far, one " symbol" per token, a rejected number's blank as "_"."""
    symbols = tuple(" " + (FORMULA_BLANK if s.strip() == "" else s) for s in env.formula_symbols)

    def rows(fields):
        formula = jnp.asarray(fields["formula"], jnp.int32)
        return formula, jnp.arange(formula.shape[0]) < fields["formula_length"]

    return Slot("formula", symbols, rows)


def max_position_slot(env: Any) -> Slot:
    """The number line's largest position, " N": a constant of the env, not of its state."""

    def rows(fields):
        del fields
        return jnp.full((1,), env.max_position, jnp.int32), jnp.ones(1, bool)

    return Slot("max_position", tuple(f" {n}" for n in range(10)), rows)


def _styles(full: str, brief: str) -> dict[str, str]:
    return {"full": full, "brief": brief, "compact": brief}


def _formula_spec(full_text: str, full_reply: str, brief_text: str) -> AgentSpec:
    return AgentSpec(
        texts=_styles(full_text, brief_text),
        replies=_styles(full_reply, FORMULA_BRIEF_REPLY),
        slots=lambda env: {"formula": formula_slot(env)},
        expert=Expert(
            move=expert.formula_move,
            plain_reason=expert.formula_reason,
            state_keys=expert.formula_state_keys,
        ),
        grounding=Grounding(grounding.describe_formula, grounding.formula_claims),
    )


POINTS24 = _formula_spec(
    POINTS24_TEXT,
    POINTS24_REPLY,
    "Cards in the image. Formula:{formula} (end). Reach 24 using every card once.",
)
EZPOINTS = _formula_spec(
    EZPOINTS_TEXT,
    EZPOINTS_REPLY,
    "Cards in the image. Formula:{formula} (end). Reach 12 using both cards once.",
)
NUMBERLINE = AgentSpec(
    texts=_styles(
        NUMBERLINE_TEXT, "Number line: move the current number to the target with '+' or '-'."
    ),
    replies=_styles(NUMBERLINE_REPLY, '{"thoughts": "...", "action": "+" or "-"}'),
    slots=lambda env: {"max_position": max_position_slot(env)},
    expert=Expert(move=expert.numberline_move, state_keys=expert.numberline_state_keys),
    grounding=Grounding(grounding.describe_numberline, grounding.numberline_claims),
)
BLACKJACK = AgentSpec(
    texts=_styles(
        BLACKJACK_TEXT, "Blackjack: 'stand' or 'hit'; get closer to 21 than the dealer, never over."
    ),
    replies=_styles(BLACKJACK_REPLY, '{"thoughts": "...", "action": "stand" or "hit"}'),
    expert=Expert(move=expert.blackjack_move),
    grounding=Grounding(grounding.describe_blackjack, grounding.blackjack_claims),
)
