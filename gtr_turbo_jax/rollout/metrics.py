"""Evaluation metrics on the host: thought collapse, success, and thought grounding.

Pure Python / numpy on data the rollout already returned (decoded thoughts, valid flags, returns,
the env's `prompt_fields`); nothing here runs inside jit.

- `self_bleu`: METHOD.md section 3's thought-collapse measure, NLTK's sentence BLEU (bigram,
  smoothing method 1) of each thought of an episode against the episode's other thoughts.
- `thought_length`, `valid_rate`, `success_rate`, `SuccessTracker`: the other collapse and
  outcome measures (success = episode return > 0, METHOD.md section 5).
- `describe_state` / `grounding`: a small claim grammar about the true state of each env, its writer
  (for solver-written demonstrations and the oracle teacher) and its checker (the fraction of the
  claims a thought makes that are true). See `GRAMMAR`.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from gtr_turbo_jax import envs
from gtr_turbo_jax.envs.sokoban.levels import BOX, BOX_ON_TARGET, PLAYER_ON_TARGET, TARGET

SMOOTHING_EPSILON = 0.1  # NLTK SmoothingFunction().method1: added to zero-count numerators
BLEU_WEIGHTS = (0.5, 0.5)  # unigram and bigram precision
SUCCESS_WINDOW = 200  # METHOD.md section 5: success over the last 200 episodes
FORMULA_BLANK = "_"  # how the blank a rejected number leaves is written (as in the prompt)

Fields = Mapping[str, Any]

# ----------------------------------------------------------------------------------------------
# Thought collapse


def _words(text: str) -> list[str]:
    """Whitespace tokenisation: the same for every model, so runs with different tokenizers
    compare; punctuation stays glued to its word (as NLTK's BLEU on `str.split()` would)."""
    return text.split()


def _ngram_counts(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def sentence_bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """NLTK's `sentence_bleu(references, hypothesis, weights=(0.5, 0.5),
    smoothing_function=SmoothingFunction().method1)` on word lists.

    Clipped n-gram precisions (counts clipped by the largest count in any one reference,
    denominator at least 1); 0 when no unigram matches (NLTK returns before smoothing); a zero
    bigram numerator becomes `SMOOTHING_EPSILON`; brevity penalty against the reference length
    closest to the hypothesis length (the shorter one on a tie).
    """
    if not references:
        raise ValueError("sentence_bleu needs at least one reference")
    log_precision = 0.0
    for n, weight in enumerate(BLEU_WEIGHTS, start=1):
        counts = _ngram_counts(hypothesis, n)
        ceiling: Counter = Counter()
        for reference in references:
            ceiling |= _ngram_counts(reference, n)  # elementwise max over references
        matched = sum(min(c, ceiling[g]) for g, c in counts.items())
        total = max(1, sum(counts.values()))
        if n == 1 and matched == 0:
            return 0.0
        log_precision += weight * math.log((matched or SMOOTHING_EPSILON) / total)
    length = len(hypothesis)
    closest = min((len(r) for r in references), key=lambda r: (abs(r - length), r))
    brevity = 1.0 if length > closest else math.exp(1.0 - closest / length)
    return brevity * math.exp(log_precision)


def self_bleu(thoughts: Sequence[str]) -> float:
    """Mean over the thoughts of one episode of the BLEU of each against all the others.

    Words are whitespace-separated (`str.split`). High means templated thoughts (collapse: 1.0 when
    all are identical); 0 when no thought shares a word with another. An episode with fewer than
    two thoughts has no reference to compare with: the result is `nan` (average episodes with
    `np.nanmean`). Pass the thoughts of the episode's valid replies.
    """
    words = [_words(t) for t in thoughts]
    if len(words) < 2:
        return math.nan
    scores = [sentence_bleu(w, words[:i] + words[i + 1 :]) for i, w in enumerate(words)]
    return float(np.mean(scores))


def thought_length(thoughts: str) -> int:
    """Words (whitespace-separated) in a thought: tokenizer-independent, like `self_bleu`."""
    return len(_words(thoughts))


def _masked_mean(values: np.ndarray, mask: Any | None, name: str) -> float:
    values = np.asarray(values, np.float64)
    if mask is None:
        mask = np.ones(values.shape, bool)
    mask = np.asarray(mask, bool)
    if mask.shape != values.shape:
        raise ValueError(f"mask shape {mask.shape} must equal {name} shape {values.shape}")
    return float(values[mask].mean()) if mask.any() else math.nan


def valid_rate(valid: Any, mask: Any | None = None) -> float:
    """Fraction of valid replies among the turns where `mask` is true (all when None); nan if none."""
    return _masked_mean(np.asarray(valid, bool), mask, "valid")


def success_rate(returns: Any, mask: Any | None = None) -> float:
    """Fraction of finished episodes with return > 0 (METHOD.md section 5); nan if none."""
    return _masked_mean(np.asarray(returns, np.float64) > 0, mask, "returns")


class SuccessTracker:
    """Success rate over the last `window` finished episodes (host side, across updates)."""

    def __init__(self, window: int = SUCCESS_WINDOW):
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window={window!r}: need a positive int")
        self._successes: deque[bool] = deque(maxlen=window)

    def update(self, returns: Any, done: Any | None = None) -> None:
        """Add episodes: `returns` of finished episodes, or per-step returns with a `done` mask."""
        returns = np.asarray(returns, np.float64).ravel()
        if done is not None:
            done = np.asarray(done, bool).ravel()
            if done.shape != returns.shape:
                raise ValueError(
                    f"done shape {done.shape} must equal returns shape {returns.shape}"
                )
            returns = returns[done]
        self._successes.extend(bool(r > 0) for r in returns)

    @property
    def count(self) -> int:
        return len(self._successes)

    @property
    def rate(self) -> float:
        """nan before the first finished episode."""
        return float(np.mean(self._successes)) if self._successes else math.nan


# ----------------------------------------------------------------------------------------------
# Thought grounding

GRAMMAR = """\
Claims a thought can make about the state (case-insensitive; every claim counts once):
  sokoban     "player at (r, c)", "box at (r, c)", "box on target at (r, c)", "target at (r, c)",
              with (row, column) counted from 0 at the top-left cell of the grid (outer walls
              included); plurals and lists are fine: "boxes at (1, 2), (3, 4)". A box on a target
              is also a box and a target; the player's cell is the `player` field.
  points24,   "cards: 3, 8, 10, 1" (a number claims a card value, J/Q/K count 10; capital A/J/Q/K or
  ezpoints    ace/jack/queen/king claim the rank); the list is one claim per card dealt, matched as
              a multiset, so a missing or extra card is a false claim.
              "formula: 3 * 8" (or "formula: empty"): the formula so far, token by token, a
              rejected number's blank written "_"; one claim.
  numberline  "current 2", "target 4" ("current number is 2", "target: 4" also).
  blackjack   "player sum 15" (or "my total is 15"), "dealer card 10" (or "dealer shows an ace";
              an ace is 1, J/Q/K are 10), "usable ace: yes" / "usable ace: no" / "no usable ace".
The card games' JSON keys read the same way ("cards": [3, 8], "formula": "3 * 8", "current
number": 2), so a whole reply can be checked, not only its thoughts.
`describe_state` writes every claim of a state in this grammar; `grounding` returns the fraction
of a thought's claims that are true, None when it makes none."""

_NUMBER = r"(\d+)"
_COORD = r"\(\s*\d+\s*,\s*\d+\s*\)"
_SOKOBAN = re.compile(
    r"\b(player|you|box(?:es)?\s+on\s+targets?|box(?:es)?|targets?)(?:\s+(?:is|are))?\s+at\s+"
    rf"({_COORD}(?:\s*(?:,|and)\s*{_COORD})*)",
    re.IGNORECASE,
)
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


@functools.cache
def _formula_symbols(env_name: str) -> tuple[str, ...]:
    """Text of each formula symbol id of the env (its blank written `FORMULA_BLANK`)."""
    env, _ = envs.make(env_name)
    return tuple(FORMULA_BLANK if s.strip() == "" else s for s in env.formula_symbols)


def _scalar(fields: Fields, key: str) -> int:
    if key not in fields:
        raise ValueError(f"fields lack {key!r}; got keys {sorted(fields)}")
    return int(np.asarray(fields[key]))


def _array(fields: Fields, key: str) -> np.ndarray:
    if key not in fields:
        raise ValueError(f"fields lack {key!r}; got keys {sorted(fields)}")
    return np.asarray(fields[key])


def _card_claim_value(token: str) -> tuple[str, int]:
    """("rank", r) for a named card, ("value", v) for a number."""
    token = token.lower()
    return ("rank", _RANK_OF[token]) if token in _RANK_OF else ("value", int(token))


# --- sokoban -------------------------------------------------------------------------------------


def _describe_sokoban(fields: Fields) -> str:
    grid, player = _array(fields, "grid"), _array(fields, "player")
    claims = [f"Player at ({int(player[0])}, {int(player[1])})"]
    for r, c in zip(*np.nonzero(np.isin(grid, (BOX, BOX_ON_TARGET)))):
        what = "box on target" if grid[r, c] == BOX_ON_TARGET else "box"
        claims.append(f"{what} at ({r}, {c})")
    for r, c in zip(*np.nonzero(np.isin(grid, (TARGET, PLAYER_ON_TARGET)))):
        claims.append(f"target at ({r}, {c})")
    return ", ".join(claims) + "."


def _ground_sokoban(text: str, fields: Fields) -> list[bool]:
    grid, player = _array(fields, "grid"), _array(fields, "player")
    cells_of = {
        "box": (BOX, BOX_ON_TARGET),
        "box on target": (BOX_ON_TARGET,),
        "target": (TARGET, BOX_ON_TARGET, PLAYER_ON_TARGET),
    }
    claims = []
    for match in _SOKOBAN.finditer(text):
        kind = " ".join(match.group(1).lower().split())
        kind = re.sub(r"^boxes", "box", re.sub(r"targets$", "target", kind))
        for coord in re.findall(r"\d+\s*,\s*\d+", match.group(2)):
            r, c = (int(x) for x in coord.split(","))
            inside = r < grid.shape[0] and c < grid.shape[1]
            if kind in ("player", "you"):
                claims.append((r, c) == (int(player[0]), int(player[1])))
            else:
                claims.append(inside and int(grid[r, c]) in cells_of[kind])
    return claims


# --- formula games -------------------------------------------------------------------------------


def _formula_tokens(env_name: str, fields: Fields) -> list[str]:
    symbols = _formula_symbols(env_name)
    formula = _array(fields, "formula")[: _scalar(fields, "formula_length")]
    return [symbols[int(s)] for s in formula]


def _describe_formula(env_name: str, fields: Fields) -> str:
    cards = ", ".join(str(int(v)) for v in _array(fields, "values"))
    formula = " ".join(_formula_tokens(env_name, fields)) or "empty"
    return f"Cards: {cards}. Formula: {formula}."


def _ground_formula(env_name: str, text: str, fields: Fields) -> list[bool]:
    ranks = [int(r) for r in _array(fields, "ranks")]
    values = [int(v) for v in _array(fields, "values")]
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
    actual = _formula_tokens(env_name, fields)
    for match in _FORMULA.finditer(text):
        said = match.group(1).lower()
        empty = said in ("empty", "(empty)", "none")
        claims.append(([] if empty else re.findall(r"\d+|[+\-*/()_]", said)) == actual)
    return claims


# --- numberline, blackjack -----------------------------------------------------------------------


def _describe_numberline(fields: Fields) -> str:
    return f"Current {_scalar(fields, 'current')}, target {_scalar(fields, 'target')}."


def _ground_numberline(text: str, fields: Fields) -> list[bool]:
    truth = {"current": _scalar(fields, "current"), "target": _scalar(fields, "target")}
    return [int(m.group(2)) == truth[m.group(1).lower()] for m in _NUMBERLINE.finditer(text)]


def _describe_blackjack(fields: Fields) -> str:
    ace = "yes" if _scalar(fields, "usable_ace") else "no"
    return (
        f"Player sum {_scalar(fields, 'player_sum')}, dealer card "
        f"{_scalar(fields, 'dealer_card')}, usable ace: {ace}."
    )


def _ground_blackjack(text: str, fields: Fields) -> list[bool]:
    total, dealer = _scalar(fields, "player_sum"), _scalar(fields, "dealer_card")
    usable = bool(_scalar(fields, "usable_ace"))
    claims = [int(m.group(1)) == total for m in _PLAYER_SUM.finditer(text)]
    for m in _DEALER.finditer(text):
        kind, x = _card_claim_value(m.group(1))
        claims.append(min(x, 10) == dealer if kind == "rank" else x == dealer)
    for m in _USABLE_ACE.finditer(text):
        said = m.group(1) is None and m.group(2).lower() in ("yes", "true")
        claims.append(said == usable)
    return claims


_WRITERS: dict[str, Callable[[Fields], str]] = {
    "sokoban": _describe_sokoban,
    "points24": functools.partial(_describe_formula, "points24"),
    "ezpoints": functools.partial(_describe_formula, "ezpoints"),
    "numberline": _describe_numberline,
    "blackjack": _describe_blackjack,
}
_CHECKERS: dict[str, Callable[[str, Fields], list[bool]]] = {
    "sokoban": _ground_sokoban,
    "points24": functools.partial(_ground_formula, "points24"),
    "ezpoints": functools.partial(_ground_formula, "ezpoints"),
    "numberline": _ground_numberline,
    "blackjack": _ground_blackjack,
}


def _check_env(env_name: str) -> None:
    if env_name not in _CHECKERS:
        raise ValueError(
            f"no grounding grammar for env {env_name!r}; valid: {', '.join(_CHECKERS)}"
        )


def describe_state(env_name: str, fields: Fields) -> str:
    """Every claim `GRAMMAR` allows about one state (`env.prompt_fields` of it, unbatched)."""
    _check_env(env_name)
    return _WRITERS[env_name](fields)


def grounding_claims(env_name: str, thoughts: str, fields: Fields) -> list[bool]:
    """Truth of each claim `thoughts` makes about the state, in the order of `GRAMMAR`'s kinds."""
    _check_env(env_name)
    return _CHECKERS[env_name](thoughts, fields)


def grounding(env_name: str, thoughts: str, fields: Fields) -> float | None:
    """Fraction of the claims in `thoughts` that are true of the state; None if it makes none."""
    claims = grounding_claims(env_name, thoughts, fields)
    return sum(claims) / len(claims) if claims else None


def mean_grounding(scores: Iterable[float | None]) -> float:
    """Mean over the thoughts that made a claim; nan when none did."""
    made = [s for s in scores if s is not None]
    return float(np.mean(made)) if made else math.nan
