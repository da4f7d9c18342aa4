"""The card games' thought-grounding grammars (`rollout.metrics`): their writers and checkers.

Claims (case-insensitive; every claim counts once):
- Points24, EZPoints: "cards: 3, 8, 10, 1" (a number claims a card value, J/Q/K count 10; capital
  A/J/Q/K or ace/jack/queen/king claim the rank); the list is one claim per card dealt, matched as
  a multiset, so a missing or extra card is a false claim. "formula: 3 * 8" (or "formula: empty"):
  the formula so far, token by token, a rejected number's blank written "_"; one claim.
- NumberLine: "current 2", "target 4" ("current number is 2", "target: 4" also).
- Blackjack: "player sum 15" (or "my total is 15"), "dealer card 10" (or "dealer shows an ace"; an
  ace is 1, J/Q/K are 10), "usable ace: yes" / "usable ace: no" / "no usable ace".
The JSON keys of the full reply formats read the same way ("cards": [3, 8], "formula": "3 * 8",
"current number": 2), so a whole reply can be checked, not only its thoughts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gtr_turbo_jax.envs.cards.fields import field, formula_tokens, scalar

Fields = Mapping[str, Any]

_NUMBER = r"(\d+)"
_CARD = r"(?:1[0-3]|[1-9]|ace|jack|queen|king|(?-i:[AJQK]))\b"
_CARDS = re.compile(
    rf"\bcards?\b\"?\s*(?:are|:|=)?\s*\[?[\s\"]*((?:{_CARD}[\s\"]*(?:,|and)?[\s\"]*)+)",
    re.IGNORECASE,
)
_FORMULA = re.compile(
    r"\bformula\b\"?(?:\s+so\s+far)?(?:\s+is)?\s*:?\s*\"?"
    r"(\(?empty\)?|none|[\d+\-*/()_](?:[\d+\-*/()_ ]*[\d+\-*/()_])?)",
    re.IGNORECASE,
)
_NUMBERLINE = re.compile(
    rf"\b(current|target)(?:\s+number)?\"?(?:\s+is)?\s*[:=]?\s*\"?{_NUMBER}", re.IGNORECASE
)
_PLAYER_SUM = re.compile(
    rf"\b(?:player(?:'s)?|my|your)\s+(?:sum|total)(?:\s+is)?\s*[:=]?\s*{_NUMBER}", re.IGNORECASE
)
_DEALER = re.compile(
    r"\bdealer(?:'s)?(?:\s+(?:card|shows|showing|upcard))?(?:\s+is)?\s*[:=]?\s*(?:an?\s+)?"
    r"(\d+|ace|jack|queen|king|(?-i:[AJQK]))\b",
    re.IGNORECASE,
)
_USABLE_ACE = re.compile(
    r"\b(?:(no)\s+usable\s+ace|usable\s+ace\s*[:=]?\s*(yes|no|true|false)\b)", re.IGNORECASE
)
_RANK_OF = {"a": 1, "ace": 1, "j": 11, "jack": 11, "q": 12, "queen": 12, "k": 13, "king": 13}


def _card_claim_value(token: str) -> tuple[str, int]:
    """("rank", r) for a named card, ("value", v) for a number."""
    token = token.lower()
    return ("rank", _RANK_OF[token]) if token in _RANK_OF else ("value", int(token))


# --- formula games -------------------------------------------------------------------------------


def describe_formula(env: Any, fields: Fields) -> str:
    cards = ", ".join(str(int(v)) for v in field(fields, "values"))
    formula = " ".join(formula_tokens(env, fields)) or "empty"
    return f"Cards: {cards}. Formula: {formula}."


def formula_claims(env: Any, text: str, fields: Fields) -> list[bool]:
    ranks = [int(r) for r in field(fields, "ranks")]
    values = [int(v) for v in field(fields, "values")]
    claims: list[bool] = []
    for match in _CARDS.finditer(text):
        said = [_card_claim_value(t) for t in re.findall(_CARD, match.group(1), re.IGNORECASE)]
        # Named ranks first: a card matching a rank claim matches any value claim too, so
        # matching the more specific claims first never loses a pairing.
        unused = list(range(len(ranks)))
        true = 0
        for kind, x in sorted(said, key=lambda claim: claim[0] != "rank"):
            table = ranks if kind == "rank" else values
            hit = next((i for i in unused if table[i] == x), None)
            if hit is not None:
                unused.remove(hit)
                true += 1
        claims += [True] * true + [False] * (max(len(said), len(ranks)) - true)
    actual = formula_tokens(env, fields)
    for match in _FORMULA.finditer(text):
        said = match.group(1).lower()
        empty = said in ("empty", "(empty)", "none")
        claims.append(([] if empty else re.findall(r"\d+|[+\-*/()_]", said)) == actual)
    return claims


# --- numberline, blackjack -----------------------------------------------------------------------


def describe_numberline(env: Any, fields: Fields) -> str:
    del env
    return f"Current {scalar(fields, 'current')}, target {scalar(fields, 'target')}."


def numberline_claims(env: Any, text: str, fields: Fields) -> list[bool]:
    del env
    truth = {"current": scalar(fields, "current"), "target": scalar(fields, "target")}
    return [int(m.group(2)) == truth[m.group(1).lower()] for m in _NUMBERLINE.finditer(text)]


def describe_blackjack(env: Any, fields: Fields) -> str:
    del env
    ace = "yes" if scalar(fields, "usable_ace") else "no"
    return (
        f"Player sum {scalar(fields, 'player_sum')}, dealer card "
        f"{scalar(fields, 'dealer_card')}, usable ace: {ace}."
    )


def blackjack_claims(env: Any, text: str, fields: Fields) -> list[bool]:
    del env
    total, dealer = scalar(fields, "player_sum"), scalar(fields, "dealer_card")
    usable = bool(scalar(fields, "usable_ace"))
    claims = [int(m.group(1)) == total for m in _PLAYER_SUM.finditer(text)]
    for m in _DEALER.finditer(text):
        kind, x = _card_claim_value(m.group(1))
        claims.append(min(x, 10) == dealer if kind == "rank" else x == dealer)
    for m in _USABLE_ACE.finditer(text):
        said = m.group(1) is None and m.group(2).lower() in ("yes", "true")
        claims.append(said == usable)
    return claims
