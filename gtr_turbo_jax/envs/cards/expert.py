"""The card games' experts (host side): each reads one state's prompt fields and returns its
action with a one-sentence reason.

- Points24 / EZPoints (`formula_move`): the next token of the chosen solution that extends the
  current formula (blanks of rejected numbers are skipped, as the env's evaluator skips them); the
  chosen solution is the one with the fewest tokens, ties broken by its text, so the plan stays the
  same along an episode. A complete solution gets `=`; a formula no solution extends (or an
  unsolvable deal) gets `=` too (no action can fix it, so the episode ends at once) with
  `solvable=False`. The target and operators are those of the env passed in.
- NumberLine: `+` while the current number is below the target, `-` otherwise.
- Blackjack: basic strategy for hit / stand only (dealer stands on soft 17, `BLACKJACK_RULES`):
  hard totals hit up to 11, hit 12 against a dealer 2, 3 or 7..ace, hit 13..16 against 7..ace,
  stand from 17; soft totals hit up to 17, hit 18 against 9, 10 or ace, stand from 19.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from gtr_turbo_jax.envs.agent import ExpertMove
from gtr_turbo_jax.envs.cards.fields import FORMULA_BLANK, field, formula_tokens, scalar
from gtr_turbo_jax.envs.cards.solver import completion, solve

BLACKJACK_RULES = "hit/stand basic strategy, dealer stands on soft 17"

Fields = Mapping[str, Any]


def _arithmetic(env: Any) -> str:
    return "".join(op for op in env.operators if op in "+-*/")


@functools.lru_cache(maxsize=4096)
def _solutions(env: Any, values: tuple[int, ...]) -> tuple[tuple[str, ...], ...]:
    """Every solution of the deal as token tuples, fewest tokens first, then by text."""
    formulas = solve(values, env.target, _arithmetic(env), parentheses="(" in env.operators)
    return tuple(tuple(f.split()) for f in sorted(formulas, key=lambda f: (len(f.split()), f)))


def formula_move(env: Any, fields: Fields) -> ExpertMove:
    """Points24 / EZPoints: the next token of the plan, or `=`."""
    names = list(env.action_names)
    values = tuple(sorted(int(v) for v in field(fields, "values")))
    tokens = formula_tokens(env, fields)
    typed = [t for t in tokens if t != FORMULA_BLANK]
    plan = next((s for s in _solutions(env, values) if list(s[: len(typed)]) == typed), None)
    if plan is None:  # off the minimal-parenthesis forms: can any completion still make it?
        rest = completion(
            typed,
            values,
            env.target,
            _arithmetic(env),
            parentheses="(" in env.operators,
            budget=env.max_formula_length - len(tokens),
        )
        plan = None if rest is None else (*typed, *rest)
    equals = names.index("=")
    if plan is None:
        reason = f"No formula from here makes {env.target}, so I end the game: '='."
        return ExpertMove(equals, reason, False)
    if len(typed) == len(plan):
        reason = f"That makes {env.target} with every card, so I finish: '='."
        return ExpertMove(equals, reason, True)
    token = plan[len(typed)]
    reason = f"Plan: {' '.join(plan)} = {env.target}. Next I append '{token}'."
    return ExpertMove(names.index(token), reason, True)


def formula_reason(action_name: str) -> str:
    """The reason for a token that is not the expert's."""
    return "I end the game: '='." if action_name == "=" else f"I append '{action_name}'."


def formula_state_keys(env: Any, fields: Fields) -> dict[str, Any]:
    """What the full reply format asks for before the thoughts: the cards and the formula."""
    return {
        "cards": [int(v) for v in field(fields, "values")],
        "formula": " ".join(formula_tokens(env, fields)),
    }


def numberline_move(env: Any, fields: Fields) -> ExpertMove:
    del env
    current, target = scalar(fields, "current"), scalar(fields, "target")
    if current < target:
        return ExpertMove(1, f"{current} is below {target}, so I go up: '+'.", True)
    return ExpertMove(0, f"{current} is not below {target}, so I go down: '-'.", True)


def numberline_state_keys(env: Any, fields: Fields) -> dict[str, Any]:
    del env
    return {
        "current number": scalar(fields, "current"),
        "target number": scalar(fields, "target"),
    }


def blackjack_hits(total: int, dealer: int, soft: bool) -> bool:
    """Basic strategy for hit / stand (`BLACKJACK_RULES`); `dealer` is 1 for an ace."""
    weak_dealer = 2 <= dealer <= 6
    if soft:
        return total <= 17 or (total == 18 and dealer in (9, 10, 1))
    if total <= 11:
        return True
    if total == 12:
        return not 4 <= dealer <= 6
    return total <= 16 and not weak_dealer


def blackjack_move(env: Any, fields: Fields) -> ExpertMove:
    del env
    total, dealer = scalar(fields, "player_sum"), scalar(fields, "dealer_card")
    soft = bool(field(fields, "usable_ace"))
    hit = blackjack_hits(total, dealer, soft)
    shown = "an ace" if dealer == 1 else str(dealer)
    hand = f"{'soft' if soft else 'hard'} {total}"
    action = "hit" if hit else "stand"
    reason = f"Basic strategy with a {hand} against {shown}: {action}."
    return ExpertMove(int(hit), reason, True)
